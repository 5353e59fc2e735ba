//! Moving guest buffers to and from host descriptors without copying them in the VMM.

use crate::GuestRam;
use std::os::fd::RawFd;

use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestMemoryBackend};

use super::Desc;

/// The most buffers one readv/writev-family call takes (Linux's IOV_MAX).
pub const IOV_MAX: usize = 1024;

/// Why guest buffers could not be moved straight from or to guest memory.
#[derive(Debug, thiserror::Error)]
pub enum IovError {
    /// A buffer is outside guest memory or crosses from one memory region into another; the
    /// caller copies it instead (`copy_from_guest`).
    #[error("a guest buffer is not in one memory region")]
    NotContiguous,
    /// The call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Guest buffers as iovecs, for the readv/writev family of calls. The pointers stay valid as
/// long as the guest memory they came from is borrowed.
#[derive(Debug)]
pub struct GuestIovecs<'m> {
    iov: Vec<libc::iovec>,
    /// The first iovec not yet (wholly) moved.
    first: usize,
    _mem: std::marker::PhantomData<&'m GuestRam>,
}

impl<'m> GuestIovecs<'m> {
    /// The iovecs of `bufs` (empty buffers left out); `NotContiguous` if one is not in one
    /// memory region.
    pub fn new(mem: &'m GuestRam, bufs: &[Desc]) -> Result<Self, IovError> {
        let mut iov = Vec::with_capacity(bufs.len());
        for d in bufs.iter().filter(|d| d.len > 0) {
            let slice = mem
                .get_slice(d.addr, d.len as usize)
                .map_err(|_| IovError::NotContiguous)?;
            // Writes through the raw pointer bypass vm-memory's accessors, so the buffers the
            // device fills are marked dirty here, before the call that fills them.
            if d.write {
                slice.bitmap().mark_dirty(0, slice.len());
            }
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast::<libc::c_void>(),
                iov_len: slice.len(),
            });
        }
        Ok(Self {
            iov,
            first: 0,
            _mem: std::marker::PhantomData,
        })
    }

    /// The iovecs not yet moved, at most IOV_MAX of them.
    pub fn pending(&self) -> &[libc::iovec] {
        let rest = &self.iov[self.first..];
        &rest[..rest.len().min(IOV_MAX)]
    }

    /// Whether everything was moved.
    pub fn is_empty(&self) -> bool {
        self.first == self.iov.len()
    }

    /// Records that a call moved `n` bytes from the front: whole buffers, then part of the
    /// next.
    pub fn advance(&mut self, n: usize) {
        let mut left = n;
        while left > 0 && self.first < self.iov.len() {
            let v = &mut self.iov[self.first];
            if left >= v.iov_len {
                left -= v.iov_len;
                self.first += 1;
            } else {
                // SAFETY: `left` is less than the buffer's length, so the pointer stays
                // inside it.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                v.iov_len -= left;
                left = 0;
            }
        }
    }
}

/// Writes `bufs` to `fd` with one writev straight from guest memory. Returns the bytes
/// written (a non-blocking `fd` that is full gives `WouldBlock`).
pub fn write_from_guest(fd: RawFd, mem: &GuestRam, bufs: &[Desc]) -> Result<usize, IovError> {
    let iov = GuestIovecs::new(mem, bufs)?;
    let pending = iov.pending();
    if pending.is_empty() {
        return Ok(0);
    }
    // At most IOV_MAX entries.
    let count = pending.len() as libc::c_int;
    loop {
        // SAFETY: each iovec covers guest memory that `mem` keeps mapped while it is
        // borrowed, for the whole call; writev only reads from them.
        let n = unsafe { libc::writev(fd, pending.as_ptr(), count) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}

/// Appends `bufs`, from byte `skip` on, to `out`; false if a buffer is outside guest memory.
pub fn copy_from_guest(mem: &GuestRam, bufs: &[Desc], skip: usize, out: &mut Vec<u8>) -> bool {
    let total: usize = bufs.iter().map(|d| d.len as usize).sum();
    let start = out.len();
    for d in sub_range(bufs, skip, usize::MAX) {
        let at = out.len();
        out.resize(at + d.len as usize, 0);
        if mem.read_slice(&mut out[at..], d.addr).is_err() {
            out.truncate(start);
            return false;
        }
    }
    // A buffer whose address overflows ends the range early.
    if out.len() - start != total.saturating_sub(skip) {
        out.truncate(start);
        return false;
    }
    true
}

/// The first `len` bytes of `bufs` after `skip`: the same buffers, trimmed.
pub fn sub_range(bufs: &[Desc], skip: usize, len: usize) -> Vec<Desc> {
    let mut out = Vec::new();
    let (mut skip, mut left) = (skip as u64, len as u64);
    for d in bufs {
        if left == 0 {
            break;
        }
        let dlen = u64::from(d.len);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let Some(addr) = d.addr.checked_add(skip) else {
            break;
        };
        let n = (dlen - skip).min(left);
        out.push(Desc {
            addr,
            // At most d.len.
            len: n as u32,
            write: d.write,
        });
        left -= n;
        skip = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use vm_memory::GuestAddress;

    fn desc(addr: u64, len: u32) -> Desc {
        Desc {
            addr: GuestAddress(addr),
            len,
            write: false,
        }
    }

    #[test]
    fn guest_buffers_reach_a_socket_and_a_vec_alike() {
        use std::os::fd::AsRawFd;
        let m = GuestRam::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap();
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i % 253) as u8).collect();
        m.write_slice(&data, GuestAddress(0)).unwrap();
        let bufs = [desc(0x100, 0x200), desc(0x800, 0x300)];
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let n = write_from_guest(b.as_raw_fd(), &m, &sub_range(&bufs, 0x50, usize::MAX)).unwrap();
        assert_eq!(n, 0x200 - 0x50 + 0x300);
        let mut got = vec![0u8; n];
        a.read_exact(&mut got).unwrap();
        let mut want = data[0x150..0x300].to_vec();
        want.extend_from_slice(&data[0x800..0xb00]);
        assert_eq!(got, want);
        let mut copied = Vec::new();
        assert!(copy_from_guest(&m, &bufs, 0x50, &mut copied));
        assert_eq!(copied, want);
        // A buffer across the two regions is copied, not written in place.
        let across = [desc(0xf00, 0x200)];
        assert!(matches!(
            write_from_guest(b.as_raw_fd(), &m, &across),
            Err(IovError::NotContiguous)
        ));
        let mut copied = Vec::new();
        assert!(copy_from_guest(&m, &across, 0, &mut copied));
        assert_eq!(copied, data[0xf00..0x1100]);
        assert!(!copy_from_guest(
            &m,
            &[desc(0x1f00, 0x200)],
            0,
            &mut Vec::new()
        ));
    }

    #[test]
    fn buffers_the_device_fills_are_marked_dirty() {
        use vm_memory::GuestMemoryBackend;
        let m = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let read = desc(0x1000, 0x10);
        let write = Desc {
            addr: GuestAddress(0x4ff0),
            len: 0x20,
            write: true,
        };
        let _iov = GuestIovecs::new(&m, &[read, write]).unwrap();
        let region = m.find_region(GuestAddress(0)).unwrap();
        let dirty: Vec<usize> = (0..16)
            .filter(|p| region.bitmap().dirty_at(p * 0x1000))
            .collect();
        // The written buffer spans pages 4 and 5; the read one dirties nothing.
        assert_eq!(dirty, vec![4, 5]);
    }

    #[test]
    fn sub_ranges_trim_buffers() {
        let bufs = [desc(0x100, 44), desc(0x1000, 100), desc(0x2000, 100)];
        assert_eq!(
            sub_range(&bufs, 44, 150),
            vec![desc(0x1000, 100), desc(0x2000, 50)]
        );
        assert_eq!(
            sub_range(&bufs, 40, 10),
            vec![desc(0x128, 4), desc(0x1000, 6)]
        );
        assert_eq!(sub_range(&bufs, 500, 10), vec![]);
    }
}
