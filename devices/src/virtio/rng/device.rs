//! The entropy device: fills every writable buffer the guest offers with getrandom bytes.

use crate::GuestRam;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use crate::rate_limiter::RateLimiter;
use crate::virtio::{VIRTIO_F_VERSION_1, VirtioDevice, descriptors, device_type};

/// Largest amount served per request.
const MAX_REQUEST: u64 = 64 * 1024;
const QUEUE_SIZES: [u16; 1] = [256];

/// A virtio entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    /// Bytes handed to the guest.
    pub bytes_served: u64,
    pub(super) limiter: Option<RateLimiter>,
    retry: Option<Duration>,
    throttled: u64,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }

    /// A device whose output is rate limited.
    pub fn with_limiter(limiter: RateLimiter) -> Self {
        Self {
            limiter: Some(limiter),
            ..Self::default()
        }
    }
}

fn fill(buf: &mut [u8]) -> bool {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    n == buf.len() as isize
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn retry_after(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    fn set_rate_limiter(
        &mut self,
        slot: crate::virtio::LimiterSlot,
        limiter: Option<RateLimiter>,
    ) -> Result<(), String> {
        crate::virtio::set_main_limiter(&mut self.limiter, slot, limiter, "the entropy device")
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("entropy_bytes", self.bytes_served),
            ("entropy_rate_limiter_throttled", self.throttled),
        ]
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut written = 0u32;
            // A chain over the cap is served up to the cap rather than refused.
            let descs = descriptors(chain, u64::MAX);
            if let (Ok(descs), Some(l)) = (&descs, self.limiter.as_mut()) {
                let want: u64 = descs
                    .iter()
                    .filter(|d| d.write)
                    .map(|d| u64::from(d.len))
                    .sum();
                if let Err(wait) = l.admit(want.min(MAX_REQUEST), Instant::now()) {
                    queue.go_to_previous_position();
                    self.retry = Some(wait);
                    self.throttled += 1;
                    break;
                }
            }
            if let Ok(descs) = descs {
                let mut left = MAX_REQUEST;
                for d in descs.iter().filter(|d| d.write) {
                    let n = u64::from(d.len).min(left) as usize;
                    let mut buf = vec![0u8; n];
                    if n == 0 || !fill(&mut buf) || mem.write_slice(&buf, d.addr).is_err() {
                        break;
                    }
                    written += n as u32;
                    left -= n as u64;
                }
            }
            self.bytes_served += u64::from(written);
            if let Err(e) = queue.add_used(mem, head, written) {
                log::warn!("virtio-rng: {e:?}");
                break;
            }
            used = true;
        }
        used
    }
}
