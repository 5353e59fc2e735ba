//! The network device: transmit queue to the tap, tap to receive queue. The tap is watched
//! edge-triggered by the device thread; frames that find no receive buffer wait until the
//! guest adds some.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::tap::{Tap, VNET_HDR_LEN};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{
    Desc, LimiterSlot, VIRTIO_F_VERSION_1, VirtioDevice, descriptors, device_type,
    read_config_bytes,
};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The largest frame with its header: 64 KiB of payload plus Ethernet and vnet headers.
const MAX_FRAME: usize = 65562;

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
    tap: Tap,
    config: [u8; 8],
    mac: bool,
    pending: Option<Vec<u8>>,
    buf: Vec<u8>,
    stats: [u64; 8],
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
    retry: Option<Duration>,
}

impl Net {
    /// Opens the tap.
    pub fn new(cfg: NetConfig) -> std::io::Result<Self> {
        let tap = Tap::open(&cfg.tap)?;
        let mut config = [0u8; 8];
        if let Some(m) = cfg.mac {
            config[..6].copy_from_slice(&m);
        }
        Ok(Self {
            tap,
            config,
            mac: cfg.mac.is_some(),
            pending: None,
            buf: vec![0; MAX_FRAME],
            stats: [0; 8],
            rx_limiter: cfg.rx_limiter,
            tx_limiter: cfg.tx_limiter,
            retry: None,
        })
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
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
                    let mut frame = Vec::new();
                    let mut ok = true;
                    for d in &descs {
                        let start = frame.len();
                        frame.resize(start + d.len as usize, 0);
                        if mem.read_slice(&mut frame[start..], d.addr).is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if ok && frame.len() > VNET_HDR_LEN {
                        match self.tap.write_frame(&frame) {
                            Ok(()) => {
                                self.stats[0] += 1;
                                self.stats[1] += (frame.len() - VNET_HDR_LEN) as u64;
                            }
                            Err(_) => self.stats[4] += 1,
                        }
                    } else {
                        self.stats[4] += 1;
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

    /// Moves frames from the tap to the guest while it has receive buffers.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            if self.pending.is_none() {
                match self.tap.read_frame(&mut self.buf) {
                    Ok(Some(n)) if n > 0 => self.pending = Some(self.buf[..n].to_vec()),
                    Ok(_) => break,
                    Err(e) => {
                        log::warn!("virtio-net: reading {}: {e}", self.tap.name());
                        break;
                    }
                }
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let Some(mut frame) = self.pending.take() else {
                break;
            };
            if let Some(l) = self.rx_limiter.as_mut() {
                if let Err(wait) = l.admit(frame.len() as u64, Instant::now()) {
                    queue.go_to_previous_position();
                    self.pending = Some(frame);
                    self.throttled(wait, 6);
                    break;
                }
            }
            let written = match descriptors(chain, u64::MAX) {
                Ok(descs) => write_frame(&descs, &mut frame, mem),
                Err(_) => 0,
            };
            if written == 0 {
                self.stats[5] += 1;
            } else {
                self.stats[2] += 1;
                self.stats[3] += (written as usize).saturating_sub(VNET_HDR_LEN) as u64;
            }
            if queue.add_used(mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl Net {
    fn throttled(&mut self, wait: Duration, counter: usize) {
        self.stats[counter] += 1;
        self.retry = Some(self.retry.map_or(wait, |r| r.min(wait)));
    }
}

/// Copies a frame into the guest's writable buffers; num_buffers is set to 1. Returns the
/// bytes written, or 0 if the buffers are unusable or too small.
fn write_frame(descs: &[Desc], frame: &mut [u8], mem: &GuestMemoryMmap) -> u32 {
    if frame.len() >= VNET_HDR_LEN {
        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    }
    let room: u64 = descs
        .iter()
        .filter(|d| d.write)
        .map(|d| u64::from(d.len))
        .sum();
    if descs.iter().any(|d| !d.write) || room < frame.len() as u64 {
        return 0;
    }
    let mut off = 0usize;
    for d in descs {
        if off == frame.len() {
            break;
        }
        let n = (d.len as usize).min(frame.len() - off);
        if mem.write_slice(&frame[off..off + n], d.addr).is_err() {
            return 0;
        }
        off += n;
    }
    off as u32
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | if self.mac { VIRTIO_NET_F_MAC } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
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

    fn process_event(&mut self, _fd: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        match queues.get_mut(RX) {
            Some(q) if q.ready() => self.receive(q, mem),
            _ => false,
        }
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
