//! The network device: transmit queue to the tap, tap to receive queue. The tap is watched
//! edge-triggered by the device thread; frames that find no receive buffer wait until the
//! guest adds some.
//!
//! Offloads: the guest may hand over partially checksummed frames and TCP segments of up to
//! 64 KiB (CSUM, HOST_TSO4/6), which the tap takes as they are, and may take the same from the
//! tap (GUEST_CSUM, GUEST_TSO4/6, set on the tap with TUNSETOFFLOAD once the driver is ready).
//! With mergeable receive buffers (MRG_RXBUF) a large frame is spread over as many small
//! buffers as it needs.

use crate::GuestRam;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::rx::{self, Placed};
use super::tap::{Tap, VNET_HDR_LEN, offload};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{
    Desc, LimiterSlot, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, descriptors,
    device_type,
    iov::{self, IovError},
    read_config_bytes,
};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// The largest frame with its header: 64 KiB of payload plus Ethernet and vnet headers.
const MAX_FRAME: usize = 65562;

/// Feature bits (virtio 1.x section 5.1.3).
pub mod feature {
    /// The device takes frames with partial checksums.
    pub const CSUM: u64 = 1 << 0;
    /// The driver takes frames with partial checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The driver takes TCPv4 segments.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver takes TCPv6 segments.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The driver takes TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// The device takes TCPv4 segments.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device takes TCPv6 segments.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// The device takes TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// The driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The config space holds the MAC address.
    pub const MAC: u64 = 1 << 5;
}

/// How to build a network device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The interface id.
    pub id: String,
    /// The host tap.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: Option<[u8; 6]>,
    /// Limits what the guest receives.
    pub rx_limiter: Option<RateLimiter>,
    /// Limits what the guest sends.
    pub tx_limiter: Option<RateLimiter>,
}

/// A virtio network device.
#[derive(Debug)]
pub struct Net {
    pub(super) id: String,
    tap: Tap,
    pub(super) config: [u8; 8],
    pub(super) mac: bool,
    /// The features the driver accepted when it set DRIVER_OK (0 before), which decide the
    /// tap's offloads.
    pub(super) features: u64,
    /// Whether the driver merges receive buffers.
    pub(super) mergeable: bool,
    /// The length of the frame waiting in `buf` for receive buffers, if one is.
    pending: Option<usize>,
    buf: Vec<u8>,
    /// Frames the guest sends that cannot be written from guest memory in place.
    txbuf: Vec<u8>,
    /// Chains a frame went into: (head, bytes written).
    placed: Vec<(u16, u32)>,
    stats: [u64; 8],
    pub(super) rx_limiter: Option<RateLimiter>,
    pub(super) tx_limiter: Option<RateLimiter>,
    retry: Option<Duration>,
}

impl Net {
    /// Opens the tap.
    pub fn new(cfg: NetConfig) -> std::io::Result<Self> {
        let tap = Tap::open(&cfg.tap)?;
        Ok(Self::with_tap(tap, cfg))
    }

    /// A device on an open tap (`cfg.tap` is not used).
    pub fn with_tap(tap: Tap, cfg: NetConfig) -> Self {
        let mut config = [0u8; 8];
        if let Some(m) = cfg.mac {
            config[..6].copy_from_slice(&m);
        }
        Self {
            id: cfg.id,
            tap,
            config,
            mac: cfg.mac.is_some(),
            features: 0,
            mergeable: false,
            pending: None,
            buf: vec![0; MAX_FRAME],
            txbuf: Vec::new(),
            placed: Vec::new(),
            stats: [0; 8],
            rx_limiter: cfg.rx_limiter,
            tx_limiter: cfg.tx_limiter,
            retry: None,
        }
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match descriptors(chain, MAX_FRAME as u64) {
                Ok(descs) if descs.iter().all(|d| !d.write) => {
                    let bytes: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
                    if let Some(l) = self.tx_limiter.as_mut() {
                        if let Err(wait) = l.admit(bytes, Instant::now()) {
                            // Put the frame back; the device thread retries after `wait`.
                            queue.go_to_previous_position();
                            self.throttled(wait, 7);
                            break;
                        }
                    }
                    match self.send(&descs, bytes as usize, mem) {
                        Ok(()) => {
                            self.stats[0] += 1;
                            self.stats[1] += bytes - VNET_HDR_LEN as u64;
                        }
                        Err(e) => {
                            log::debug!("virtio-net: frame to {}: {e}", self.tap.name());
                            self.stats[4] += 1;
                        }
                    }
                }
                _ => self.stats[4] += 1,
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Hands one frame (header included) to the tap, straight from guest memory when each
    /// buffer lies in one memory region, else through `txbuf`.
    fn send(&mut self, descs: &[Desc], len: usize, mem: &GuestRam) -> std::io::Result<()> {
        if len <= VNET_HDR_LEN {
            return Err(std::io::Error::other("frame shorter than its header"));
        }
        let written = match iov::write_from_guest(self.tap.as_raw_fd(), mem, descs) {
            Ok(n) => n,
            Err(IovError::NotContiguous) => {
                self.txbuf.clear();
                if !iov::copy_from_guest(mem, descs, 0, &mut self.txbuf) {
                    return Err(std::io::Error::other("a buffer is outside guest memory"));
                }
                self.tap.write_frame(&self.txbuf)?;
                self.txbuf.len()
            }
            Err(IovError::Io(e)) => return Err(e),
        };
        if written != len {
            return Err(std::io::Error::other(format!(
                "the tap took {written} of {len} bytes"
            )));
        }
        Ok(())
    }

    /// Moves frames from the tap to the guest while it has receive buffers.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        loop {
            let len = match self.pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.buf) {
                    Ok(Some(n)) if n > 0 => n,
                    Ok(_) => break,
                    Err(e) => {
                        log::warn!("virtio-net: reading {}: {e}", self.tap.name());
                        break;
                    }
                },
            };
            self.pending = Some(len);
            let placed = rx::place(
                queue,
                mem,
                &mut self.buf[..len],
                self.mergeable,
                &mut self.placed,
            );
            match placed {
                Placed::NoRoom => break,
                Placed::Delivered => {
                    if let Some(l) = self.rx_limiter.as_mut() {
                        if let Err(wait) = l.admit(len as u64, Instant::now()) {
                            // The buffers go back to the ring; the frame waits for tokens.
                            rx::unpop(queue, self.placed.len());
                            self.throttled(wait, 6);
                            break;
                        }
                    }
                    self.stats[2] += 1;
                    self.stats[3] += len.saturating_sub(VNET_HDR_LEN) as u64;
                    self.pending = None;
                }
                Placed::Dropped => {
                    self.stats[5] += 1;
                    self.pending = None;
                }
                Placed::BadBuffers => self.stats[5] += 1,
            }
            for &(head, n) in &self.placed {
                if queue.add_used(mem, head, n).is_err() {
                    return used;
                }
                used = true;
            }
        }
        used
    }

    fn throttled(&mut self, wait: Duration, counter: usize) {
        self.stats[counter] += 1;
        self.retry = Some(self.retry.map_or(wait, |r| r.min(wait)));
    }

    /// The tap offloads that match the driver's receive features.
    pub(super) fn tap_offloads(features: u64) -> u32 {
        let mut flags = 0;
        if features & feature::GUEST_CSUM != 0 {
            flags |= offload::CSUM;
            if features & feature::GUEST_TSO4 != 0 {
                flags |= offload::TSO4;
            }
            if features & feature::GUEST_TSO6 != 0 {
                flags |= offload::TSO6;
            }
            if features & feature::GUEST_ECN != 0 && flags & (offload::TSO4 | offload::TSO6) != 0 {
                flags |= offload::TSO_ECN;
            }
        }
        flags
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        use feature::*;
        let offloads = CSUM
            | GUEST_CSUM
            | GUEST_TSO4
            | GUEST_TSO6
            | GUEST_ECN
            | HOST_TSO4
            | HOST_TSO6
            | HOST_ECN
            | MRG_RXBUF;
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | offloads | if self.mac { MAC } else { 0 }
    }

    fn activate(&mut self, features: u64) {
        self.features = features;
        self.mergeable = features & feature::MRG_RXBUF != 0;
        let flags = Self::tap_offloads(features);
        if let Err(e) = self.tap.set_offload(flags) {
            log::warn!(
                "virtio-net: {} refuses offloads {flags:#x}: {e}",
                self.tap.name()
            );
        }
    }

    fn reset(&mut self) {
        self.features = 0;
        self.mergeable = false;
        self.pending = None;
        if let Err(e) = self.tap.set_offload(0) {
            log::warn!("virtio-net: {} keeps its offloads: {e}", self.tap.name());
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestRam) -> bool {
        match index {
            TX => self.transmit(queue, mem),
            RX => self.receive(queue, mem),
            _ => false,
        }
    }

    fn retry_after(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    fn set_rate_limiter(
        &mut self,
        slot: LimiterSlot,
        limiter: Option<RateLimiter>,
    ) -> Result<(), String> {
        match slot {
            LimiterSlot::Rx => self.rx_limiter = limiter,
            LimiterSlot::Tx => self.tx_limiter = limiter,
            LimiterSlot::Main => return Err("give rx_rate_limiter or tx_rate_limiter".into()),
        }
        Ok(())
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd()]
    }

    fn process_event(&mut self, _fd: usize, queues: &mut [Queue], mem: &GuestRam) -> bool {
        match queues.get_mut(RX) {
            Some(q) if q.ready() => self.receive(q, mem),
            _ => false,
        }
    }

    fn announce(&mut self) -> std::io::Result<bool> {
        if !self.mac {
            // The driver chose its own address, which the VMM does not know.
            return Ok(false);
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&rarp_announcement(mac));
        self.tap.write_frame(&frame)?;
        Ok(true)
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        vec![
            ("tx_packets_count", s[0]),
            ("tx_bytes_count", s[1]),
            ("rx_packets_count", s[2]),
            ("rx_bytes_count", s[3]),
            ("tx_fails", s[4]),
            ("rx_fails", s[5]),
            ("rx_rate_limiter_throttled", s[6]),
            ("tx_rate_limiter_throttled", s[7]),
        ]
    }
}

/// A RARP "request reverse" broadcast from `mac`, padded to the Ethernet minimum: what a
/// hypervisor sends for a guest that moved, so switches learn the guest's new port.
pub fn rarp_announcement(mac: [u8; 6]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // request reverse
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}

#[cfg(test)]
mod announce_tests {
    use super::rarp_announcement;

    #[test]
    fn the_announcement_is_a_rarp_broadcast_from_the_guest() {
        let mac = [6, 0, 0xac, 0x1e, 0, 2];
        let f = rarp_announcement(mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!((&f[22..28], &f[32..38]), (&mac[..], &mac[..]));
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[38..], &[0u8; 22][..]);
    }
}
