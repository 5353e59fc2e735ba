//! Guest RAM fit for snapshots and migration: one region, backed by a memfd on boot or mapped
//! `MAP_PRIVATE` from a snapshot's memory file on restore (pages fault in from the page cache
//! on first touch, so restoring does not read the file), with vm-memory's dirty bitmap
//! recording every page the VMM's devices write.
//!
//! Memory files are written sparse: a Full file holds every page that is not zero (holes for
//! the rest), a Diff file holds exactly the dirty pages given, zero or not, so that laying it
//! over its base (`rebase`) gives the memory at the diff's time.

use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use devices::GuestRam;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestRegionMmap};

/// The page size of the dirty bitmap and of memory files.
pub const PAGE_SIZE: u64 = 4096;

/// Errors creating guest RAM or writing and reading memory files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The memfd could not be created or sized.
    #[error("cannot create {size_mib} MiB of guest memory: {source}")]
    Create {
        /// The size asked for.
        size_mib: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The mapping failed.
    #[error("cannot map guest memory: {0}")]
    Map(String),
    /// A memory file could not be opened, read or written.
    #[error("memory file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A memory file is shorter than the memory it must hold.
    #[error(
        "memory file {path} holds {len} bytes, less than the {need} bytes of guest memory the snapshot declares"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The guest memory size.
        need: u64,
    },
    /// A diff does not match the base it is laid over.
    #[error("diff {diff} is {diff_len} bytes but base {base} is {base_len}: not a pair")]
    Mismatch {
        /// The base file.
        base: PathBuf,
        /// Its length.
        base_len: u64,
        /// The diff file.
        diff: PathBuf,
        /// Its length.
        diff_len: u64,
    },
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> MemoryError + '_ {
    move |source| MemoryError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// What writing a memory file did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFileStats {
    /// Pages written.
    pub pages: u64,
    /// Bytes written (`pages * PAGE_SIZE`).
    pub bytes: u64,
}

/// How the RAM is mapped.
#[derive(Debug)]
enum Backing {
    /// A memfd, shared: untouched pages are holes of the memfd.
    Memfd,
    /// A snapshot's memory file, private: its pages are copied on write.
    Snapshot,
}

/// Guest RAM and the file behind it.
#[derive(Debug)]
pub struct Ram {
    mem: GuestRam,
    file: File,
    backing: Backing,
    base: u64,
    size: u64,
}

fn bitmap(size: u64) -> AtomicBitmap {
    AtomicBitmap::new(
        size as usize,
        NonZeroUsize::new(PAGE_SIZE as usize).expect("the page size is not zero"),
    )
}

fn map(file: &File, base: u64, size: u64, flags: i32) -> Result<GuestRam, MemoryError> {
    let fd = file
        .try_clone()
        .map_err(|e| MemoryError::Map(e.to_string()))?;
    let region = MmapRegionBuilder::new_with_bitmap(size as usize, bitmap(size))
        .with_file_offset(FileOffset::new(fd, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| MemoryError::Map(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or_else(|| MemoryError::Map("the region ends past 2^64".into()))?;
    GuestRam::from_regions(vec![region]).map_err(|e| MemoryError::Map(e.to_string()))
}

impl Ram {
    /// Fresh guest RAM of `size` bytes at `base`, backed by a memfd.
    pub fn new(base: u64, size: u64) -> Result<Self, MemoryError> {
        let create = |source| MemoryError::Create {
            size_mib: size >> 20,
            source,
        };
        // SAFETY: the name is a valid C string; the call returns a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(create(std::io::Error::last_os_error()));
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(create)?;
        let mem = map(&file, base, size, libc::MAP_SHARED)?;
        Ok(Self {
            mem,
            file,
            backing: Backing::Memfd,
            base,
            size,
        })
    }

    /// Guest RAM of `size` bytes at `base` mapped privately from a snapshot's memory file,
    /// which must hold at least `size` bytes and must not change while the guest runs.
    pub fn from_file(base: u64, size: u64, path: &Path) -> Result<Self, MemoryError> {
        let file = File::open(path).map_err(file_err(path))?;
        let meta = file.metadata().map_err(file_err(path))?;
        if !meta.is_file() {
            return Err(MemoryError::File {
                path: path.to_path_buf(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        if meta.len() < size {
            return Err(MemoryError::TooShort {
                path: path.to_path_buf(),
                len: meta.len(),
                need: size,
            });
        }
        let mem = map(&file, base, size, libc::MAP_PRIVATE)?;
        Ok(Self {
            mem,
            file,
            backing: Backing::Snapshot,
            base,
            size,
        })
    }

    /// The guest memory, for the devices and the loader.
    pub fn guest(&self) -> &GuestRam {
        &self.mem
    }

    /// Where the RAM starts in the guest.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The host address of the mapping, for KVM's memory slot.
    pub fn host_addr(&self) -> u64 {
        self.mem
            .get_host_address(GuestAddress(self.base))
            .map_or(0, |p| p as u64)
    }

    fn pages(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE)
    }

    /// The pages the VMM's devices wrote since the last call, one bit per page (bit `i % 64`
    /// of word `i / 64`), cleared as they are read.
    pub fn take_device_dirty(&self) -> Vec<u64> {
        self.mem
            .find_region(GuestAddress(self.base))
            .map(|r| r.bitmap().get_and_reset())
            .unwrap_or_default()
    }

    fn page(&self, index: u64) -> &[u8] {
        let len = PAGE_SIZE.min(self.size - index * PAGE_SIZE) as usize;
        let ptr = (self.host_addr() + index * PAGE_SIZE) as *const u8;
        // SAFETY: the page is inside the mapping, which lives as long as `self`. Callers read
        // pages only while the VM is paused, so nothing writes the memory meanwhile.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// `candidates` as a bitmap of one bit per page, built in bounded steps (the migration's
    /// view of a large guest: one bit per page, not one byte).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn candidate_bitmap(&self) -> Result<migration::engine::DirtyBitmap, MemoryError> {
        let n = self.pages();
        let mut map = migration::engine::DirtyBitmap::new(n);
        for (start, end) in data_extents(&self.file, self.size)
            .map_err(|e| MemoryError::Map(format!("finding the written pages: {e}")))?
        {
            for page in start / PAGE_SIZE..end.div_ceil(PAGE_SIZE).min(n) {
                map.set(page);
            }
        }
        if let Backing::Snapshot = self.backing {
            const CHUNK: u64 = 1 << 16;
            let mut resident = vec![0u8; CHUNK as usize];
            let mut first = 0;
            while first < n {
                let count = CHUNK.min(n - first);
                // SAFETY: the range lies inside the mapping, page aligned; `resident` has one
                // byte for each of its `count` pages.
                let r = unsafe {
                    libc::mincore(
                        (self.host_addr() + first * PAGE_SIZE) as *mut libc::c_void,
                        (count * PAGE_SIZE).min(self.size - first * PAGE_SIZE) as usize,
                        resident.as_mut_ptr(),
                    )
                };
                if r != 0 {
                    return Err(MemoryError::Map(format!(
                        "mincore: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                for (i, r) in resident[..count as usize].iter().enumerate() {
                    if r & 1 != 0 {
                        map.set(first + i as u64);
                    }
                }
                first += count;
            }
        }
        Ok(map)
    }

    /// Pages that may hold something other than zeros: the data of the backing file, and for
    /// a private mapping also every page resident in it (written since the restore).
    fn candidates(&self) -> Result<Vec<bool>, MemoryError> {
        let n = self.pages() as usize;
        let mut maybe = vec![false; n];
        for (start, end) in data_extents(&self.file, self.size)
            .map_err(|e| MemoryError::Map(format!("finding the written pages: {e}")))?
        {
            let first = (start / PAGE_SIZE) as usize;
            let last = end.div_ceil(PAGE_SIZE) as usize;
            maybe[first..last.min(n)].fill(true);
        }
        if let Backing::Snapshot = self.backing {
            let mut resident = vec![0u8; n];
            // SAFETY: the range is the mapping, page aligned; `resident` has one byte per page.
            let r = unsafe {
                libc::mincore(
                    self.host_addr() as *mut libc::c_void,
                    self.size as usize,
                    resident.as_mut_ptr(),
                )
            };
            if r != 0 {
                return Err(MemoryError::Map(format!(
                    "mincore: {}",
                    std::io::Error::last_os_error()
                )));
            }
            for (m, r) in maybe.iter_mut().zip(&resident) {
                *m |= r & 1 != 0;
            }
        }
        Ok(maybe)
    }

    /// Writes every page that is not zero to a new sparse file at `path` (through a temporary
    /// name and a rename, so nothing half-written is ever at `path`). Call with the VM paused.
    pub fn write_full(&self, path: &Path) -> Result<MemoryFileStats, MemoryError> {
        let maybe = self.candidates()?;
        let wanted = |i: u64| maybe[i as usize] && !is_zero(self.page(i));
        self.write_pages(path, wanted)
    }

    /// Writes the pages set in `dirty` (one bit per page, as `take_device_dirty` returns
    /// them) to a new sparse file at `path`, zero pages included. Call with the VM paused.
    pub fn write_diff(&self, path: &Path, dirty: &[u64]) -> Result<MemoryFileStats, MemoryError> {
        let wanted = |i: u64| {
            dirty
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
        };
        self.write_pages(path, wanted)
    }

    fn write_pages(
        &self,
        path: &Path,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<MemoryFileStats, MemoryError> {
        let tmp = temp_name(path);
        let result = (|| {
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(file_err(path))?;
            out.set_len(self.size).map_err(file_err(path))?;
            let mut stats = MemoryFileStats::default();
            let mut i = 0;
            while i < self.pages() {
                if !wanted(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < self.pages() && wanted(i) {
                    i += 1;
                }
                let off = start * PAGE_SIZE;
                let len = ((i - start) * PAGE_SIZE).min(self.size - off);
                let ptr = (self.host_addr() + off) as *const u8;
                // SAFETY: the run is inside the mapping, which outlives the call; the VM is
                // paused, so nothing writes it meanwhile.
                let bytes = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
                out.write_all_at(bytes, off).map_err(file_err(path))?;
                stats.pages += i - start;
                stats.bytes += len;
            }
            out.sync_all().map_err(file_err(path))?;
            std::fs::rename(&tmp, path).map_err(file_err(path))?;
            Ok(stats)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Whether every byte is zero. Each 64-byte chunk is OR-folded without an early exit, which
/// the compiler turns into a few vector instructions; a byte-by-byte scan with early exit
/// cost about ten times as much on the zero pages a guest's memory is full of.
pub fn is_zero(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(64);
    let rest = chunks.remainder();
    chunks
        .into_iter()
        .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
        && rest.iter().all(|b| *b == 0)
}

/// A name next to `path` for writing before the rename.
pub fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// The ranges of `file` (up to `len`) that hold data rather than holes.
fn data_extents(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0i64;
    while (at as u64) < len {
        // SAFETY: lseek on a valid descriptor; no memory is passed.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.push((start as u64, (end as u64).min(len)));
        at = end;
    }
    Ok(out)
}

/// Lays the pages of a Diff memory file over its base, in place: afterwards the base holds
/// the memory at the diff's time. Returns the bytes copied.
pub fn rebase(base: &Path, diff: &Path) -> Result<u64, MemoryError> {
    let d = File::open(diff).map_err(file_err(diff))?;
    let b = OpenOptions::new()
        .write(true)
        .open(base)
        .map_err(file_err(base))?;
    let (dl, bl) = (
        d.metadata().map_err(file_err(diff))?.len(),
        b.metadata().map_err(file_err(base))?.len(),
    );
    if dl != bl {
        return Err(MemoryError::Mismatch {
            base: base.to_path_buf(),
            base_len: bl,
            diff: diff.to_path_buf(),
            diff_len: dl,
        });
    }
    let mut copied = 0;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(&d, dl).map_err(file_err(diff))? {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            d.read_exact_at(&mut buf[..n], at).map_err(file_err(diff))?;
            b.write_all_at(&buf[..n], at).map_err(file_err(base))?;
            at += n as u64;
            copied += n as u64;
        }
    }
    b.sync_all().map_err(file_err(base))?;
    Ok(copied)
}

#[cfg(test)]
mod tests;
