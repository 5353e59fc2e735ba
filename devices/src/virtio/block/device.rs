//! The block device: requests against a raw image file.

use crate::GuestRam;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::request::{self, RequestError, RequestType, Status};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{
    Desc, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, descriptors, device_type,
    iov::GuestIovecs, read_config_bytes,
};

const SECTOR: u64 = 512;
const QUEUE_SIZES: [u16; 1] = [256];
/// Largest request served (the guest's own limit is far lower).
const MAX_REQUEST: u64 = 64 << 20;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// The device states the most data segments per request (`seg_max`). Without it Linux sends
/// one segment per request, which cuts sequential I/O into 4 KiB requests.
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Data segments per request: the ring less the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZES[0] as u32 - 2;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Length of the ID a GET_ID request returns.
const ID_BYTES: usize = 20;

/// Firecracker's cache types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum CacheType {
    /// No flush is offered; the host's page cache decides when data reaches the disk.
    #[default]
    Unsafe,
    /// Flush is offered and performed with fsync.
    Writeback,
}

/// How to build a block device.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// The drive's id, also its serial (GET_ID).
    pub id: String,
    /// The backing image.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
    /// Cache type.
    pub cache: CacheType,
    /// Bandwidth and operation limits.
    pub rate_limiter: Option<RateLimiter>,
}

/// A virtio block device.
#[derive(Debug)]
pub struct Block {
    pub(super) cfg: BlockConfig,
    file: File,
    pub(super) capacity: u64,
    config: [u8; 24],
    retry: Option<Duration>,
    stats: BlockStats,
}

/// Firecracker's per-drive counters.
#[derive(Debug, Default, Clone, Copy)]
struct BlockStats {
    read_count: u64,
    write_count: u64,
    flush_count: u64,
    read_bytes: u64,
    write_bytes: u64,
    invalid_reqs_count: u64,
    rate_limiter_throttled_events: u64,
}

fn open(path: &Path, read_only: bool) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((file, meta.len() / SECTOR))
}

impl Block {
    /// Opens the backing file.
    pub fn new(cfg: BlockConfig) -> std::io::Result<Self> {
        let (file, capacity) = open(&cfg.path, cfg.read_only)?;
        let mut b = Self {
            cfg,
            file,
            capacity,
            config: [0; 24],
            retry: None,
            stats: BlockStats::default(),
        };
        b.update_config();
        Ok(b)
    }

    pub(super) fn update_config(&mut self) {
        self.config[..8].copy_from_slice(&self.capacity.to_le_bytes());
        self.config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Swaps the backing file (Firecracker's PATCH /drives path_on_host). The transport then
    /// tells the guest the capacity may have changed.
    pub fn replace_file(&mut self, path: &Path) -> std::io::Result<()> {
        let (file, capacity) = open(path, self.cfg.read_only)?;
        self.file = file;
        self.capacity = capacity;
        self.cfg.path = path.to_path_buf();
        self.update_config();
        Ok(())
    }

    fn check_range(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity * SECTOR)
    }

    fn count(&mut self, req: &request::Request, status: Status) {
        let bytes: u64 = req.data.iter().map(|d| u64::from(d.len)).sum();
        let s = &mut self.stats;
        match (req.kind, status) {
            (_, Status::IoErr | Status::Unsupported) => s.invalid_reqs_count += 1,
            (RequestType::In, _) => {
                s.read_count += 1;
                s.read_bytes += bytes;
            }
            (RequestType::Out, _) => {
                s.write_count += 1;
                s.write_bytes += bytes;
            }
            (RequestType::Flush, _) => s.flush_count += 1,
            _ => {}
        }
    }

    /// Serves one parsed request; returns its status and the bytes written to the guest.
    fn execute(&mut self, req: &request::Request, mem: &GuestRam) -> (Status, u32) {
        let total: u64 = req.data.iter().map(|d| u64::from(d.len)).sum();
        match req.kind {
            RequestType::In => {
                if req.data.iter().any(|d| !d.write) || !self.check_range(req.sector, total) {
                    return (Status::IoErr, 0);
                }
                let pos = req.sector * SECTOR;
                if guest_io(&self.file, pos, mem, &req.data, Direction::FileToGuest).is_err() {
                    return (Status::IoErr, 0);
                }
                // The request's buffers add up to at most its size cap, far below 4 GiB.
                (Status::Ok, u32::try_from(total).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if self.cfg.read_only
                    || req.data.iter().any(|d| d.write)
                    || !self.check_range(req.sector, total)
                {
                    return (Status::IoErr, 0);
                }
                let pos = req.sector * SECTOR;
                if guest_io(&self.file, pos, mem, &req.data, Direction::GuestToFile).is_err() {
                    return (Status::IoErr, 0);
                }
                (Status::Ok, 0)
            }
            RequestType::Flush => {
                if self.cfg.cache == CacheType::Writeback && self.file.sync_all().is_err() {
                    return (Status::IoErr, 0);
                }
                (Status::Ok, 0)
            }
            RequestType::GetId => {
                let Some(d) = req.data.first().filter(|d| d.write) else {
                    return (Status::IoErr, 0);
                };
                let mut id = [0u8; ID_BYTES];
                let bytes = self.cfg.id.as_bytes();
                let n = bytes.len().min(ID_BYTES);
                id[..n].copy_from_slice(&bytes[..n]);
                let n = (d.len as usize).min(ID_BYTES);
                if mem.write_slice(&id[..n], d.addr).is_err() {
                    return (Status::IoErr, 0);
                }
                (Status::Ok, n as u32)
            }
            RequestType::Unsupported(_) => (Status::Unsupported, 0),
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    FileToGuest,
    GuestToFile,
}

/// Moves a request's buffers between the image at `pos` and guest memory with preadv/pwritev
/// straight on the guest mapping, with no bounce buffer: one call for the whole request
/// unless the kernel moves less. Each buffer must lie in one memory region.
// preadv writes through raw pointers, past vm-memory's accessors: `GuestIovecs::new` marks
// the device-written buffers in the dirty bitmap before the call.
fn guest_io(
    file: &File,
    pos: u64,
    mem: &GuestRam,
    bufs: &[Desc],
    dir: Direction,
) -> std::io::Result<()> {
    let mut iov = GuestIovecs::new(mem, bufs).map_err(std::io::Error::other)?;
    let mut done = 0u64;
    while !iov.is_empty() {
        let off = libc::off_t::try_from(pos + done)
            .map_err(|_| std::io::Error::other("offset overflow"))?;
        let pending = iov.pending();
        // At most IOV_MAX.
        let count = pending.len() as libc::c_int;
        // SAFETY: every iovec covers guest memory that `mem` keeps mapped while it is
        // borrowed, for the whole call, and `pending` holds `count` of them.
        let n = unsafe {
            match dir {
                Direction::FileToGuest => {
                    libc::preadv(file.as_raw_fd(), pending.as_ptr(), count, off)
                }
                Direction::GuestToFile => {
                    libc::pwritev(file.as_raw_fd(), pending.as_ptr(), count, off)
                }
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n as u64;
        iov.advance(n as usize);
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_RING_F_INDIRECT_DESC;
        if self.cfg.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        if self.cfg.cache == CacheType::Writeback {
            f |= VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn retry_after(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats;
        vec![
            ("read_count", s.read_count),
            ("write_count", s.write_count),
            ("flush_count", s.flush_count),
            ("read_bytes", s.read_bytes),
            ("write_bytes", s.write_bytes),
            ("invalid_reqs_count", s.invalid_reqs_count),
            (
                "rate_limiter_throttled_events",
                s.rate_limiter_throttled_events,
            ),
        ]
    }

    fn swap_backing(&mut self, path: &Path) -> Result<(), String> {
        self.replace_file(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    }

    fn set_rate_limiter(
        &mut self,
        slot: crate::virtio::LimiterSlot,
        limiter: Option<RateLimiter>,
    ) -> Result<(), String> {
        crate::virtio::set_main_limiter(&mut self.cfg.rate_limiter, slot, limiter, "a drive")
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestRam) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match descriptors(chain, MAX_REQUEST) {
                Err(_) => 0,
                Ok(descs) => match request::parse(&descs, mem) {
                    Ok(req) => {
                        let bytes = match req.kind {
                            RequestType::In | RequestType::Out => {
                                req.data.iter().map(|d| u64::from(d.len)).sum()
                            }
                            _ => 0,
                        };
                        if let Some(l) = self.cfg.rate_limiter.as_mut() {
                            if let Err(wait) = l.admit(bytes, Instant::now()) {
                                // Put the request back; the device thread retries after `wait`.
                                queue.go_to_previous_position();
                                self.retry = Some(wait);
                                self.stats.rate_limiter_throttled_events += 1;
                                break;
                            }
                        }
                        let (status, written) = self.execute(&req, mem);
                        self.count(&req, status);
                        if mem.write_obj(status as u8, req.status.addr).is_ok() {
                            written + 1
                        } else {
                            written
                        }
                    }
                    Err(RequestError::BadHeader { status }) => {
                        self.stats.invalid_reqs_count += 1;
                        let _ = mem.write_obj(Status::IoErr as u8, status.addr);
                        1
                    }
                    Err(RequestError::NoStatus) => 0,
                },
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::warn!("virtio-blk: {e:?}");
                break;
            }
            used = true;
        }
        used
    }
}
