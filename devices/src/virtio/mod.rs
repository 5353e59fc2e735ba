//! virtio devices on the virtio-mmio transport (virtio 1.x, register layout version 2).

pub mod block;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

#[cfg(test)]
mod tests;

use crate::GuestRam;
use migration::state::Stateful;
use virtio_queue::Queue;

/// `VIRTIO_F_VERSION_1`: every device offers it and the driver must accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`: the used and available event indices suppress notifications and
/// interrupts. The transport offers it for every device.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_RING_F_INDIRECT_DESC`: a descriptor may point at a table of descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Device type IDs (virtio 1.x section 5).
pub mod device_type {
    /// Network device.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// A virtio device behind the transport. The transport owns the queues and the feature and
/// status handshake; the device owns its config space and the meaning of its requests, and
/// saves them as its own section (`Stateful`, which every device must implement).
pub trait VirtioDevice: Send + Stateful {
    /// Its virtio device type.
    fn device_type(&self) -> u32;
    /// The largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn avail_features(&self) -> u64;
    /// Reads from the device's config space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device's config space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Serves the available requests of queue `index`; returns whether any was completed.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestRam) -> bool;
    /// The driver set DRIVER_OK after accepting `features`.
    fn activate(&mut self, _features: u64) {}
    /// Serves queue `index` after its notification, with the other queues at hand for
    /// devices whose requests produce work on another queue (vsock replies on its receive
    /// queue). The default serves `index` alone.
    fn process_queues(&mut self, index: usize, queues: &mut [Queue], mem: &GuestRam) -> bool {
        match queues.get_mut(index) {
            Some(q) => self.process_queue(index, q, mem),
            None => false,
        }
    }
    /// Forgets per-driver state after a reset.
    fn reset(&mut self) {}
    /// After `process_queue` stopped early because a rate limiter ran dry: how long to wait
    /// before serving the queue again. Taken once.
    fn retry_after(&mut self) -> Option<std::time::Duration> {
        None
    }
    /// Host descriptors the device thread also watches (edge-triggered), such as a tap.
    fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Handles readiness of `event_fds()[fd]`; returns whether buffers were used.
    fn process_event(&mut self, _fd: usize, _queues: &mut [Queue], _mem: &GuestRam) -> bool {
        false
    }
    /// The device's counters, named as Firecracker names them.
    fn metrics(&self) -> Vec<(&'static str, u64)>;
    /// Replaces one of the device's rate limiters (None: no limit).
    fn set_rate_limiter(
        &mut self,
        _slot: LimiterSlot,
        _limiter: Option<crate::rate_limiter::RateLimiter>,
    ) -> Result<(), String> {
        Err("this device has no such rate limiter".into())
    }
    /// Points the device at another backing file; only block devices have one.
    fn swap_backing(&mut self, _path: &std::path::Path) -> Result<(), String> {
        Err("this device has no backing file".into())
    }
    /// Tells the network that the guest is now here (after a live migration): a network
    /// device with a known MAC sends a RARP broadcast from it, so switches learn its new
    /// port at once. Answers whether something was sent; other devices send nothing.
    fn announce(&mut self) -> std::io::Result<bool> {
        Ok(false)
    }
}

/// Which of a device's rate limiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterSlot {
    /// The only one (block, entropy).
    Main,
    /// Network receive.
    Rx,
    /// Network transmit.
    Tx,
}

/// `set_rate_limiter` for a device with one limiter, kept in `field`.
pub fn set_main_limiter(
    field: &mut Option<crate::rate_limiter::RateLimiter>,
    slot: LimiterSlot,
    limiter: Option<crate::rate_limiter::RateLimiter>,
    device: &str,
) -> Result<(), String> {
    if slot != LimiterSlot::Main {
        return Err(format!("{device} has one rate_limiter"));
    }
    *field = limiter;
    Ok(())
}

/// One descriptor of a request, already read from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address.
    pub addr: vm_memory::GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (else reads it).
    pub write: bool,
}

/// Why a request's descriptor chain is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The chain is empty.
    #[error("empty descriptor chain")]
    Empty,
    /// Its buffers add up to more than the device accepts.
    #[error("descriptor chain of more than {0} bytes")]
    TooLarge(u64),
}

/// Reads a chain's descriptors (virtio-queue bounds its length, so loops end), refusing
/// chains whose buffers add up to more than `max_total` bytes.
pub fn descriptors<M>(
    chain: virtio_queue::DescriptorChain<M>,
    max_total: u64,
) -> Result<Vec<Desc>, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut out = Vec::new();
    let mut total = 0u64;
    for d in chain {
        total += u64::from(d.len());
        if total > max_total {
            return Err(ChainError::TooLarge(max_total));
        }
        out.push(Desc {
            addr: d.addr(),
            len: d.len(),
            write: d.is_write_only(),
        });
    }
    if out.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(out)
}

/// Reads `data.len()` bytes of `config` at `offset`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Ok(off) = usize::try_from(offset) {
        if off < config.len() {
            let n = data.len().min(config.len() - off);
            data[..n].copy_from_slice(&config[off..off + n]);
        }
    }
}
