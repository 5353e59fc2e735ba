//! Moving guest buffers to host descriptors without copying them in the VMM.

use std::os::fd::RawFd;

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::Desc;

/// The most buffers one writev takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Why guest buffers could not be written straight from guest memory.
#[derive(Debug, thiserror::Error)]
pub enum IovError {
    /// A buffer is outside guest memory or crosses from one memory region into another; the
    /// caller copies it instead (`copy_from_guest`).
    #[error("a guest buffer is not in one memory region")]
    NotContiguous,
    /// writev failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes `bufs`, skipping their first `skip` bytes, to `fd` with one writev straight from
/// guest memory. Returns the bytes written (a non-blocking `fd` that is full gives
/// `WouldBlock`).
pub fn write_from_guest(
    fd: RawFd,
    mem: &GuestMemoryMmap,
    bufs: &[Desc],
    skip: usize,
) -> Result<usize, IovError> {
    let mut slices = Vec::with_capacity(bufs.len().min(IOV_MAX));
    let mut skip = skip;
    for d in bufs {
        let len = d.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = d
            .addr
            .checked_add(skip as u64)
            .ok_or(IovError::NotContiguous)?;
        let slice = mem
            .get_slice(addr, len - skip)
            .map_err(|_| IovError::NotContiguous)?;
        skip = 0;
        if !slice.is_empty() {
            slices.push(slice);
        }
        if slices.len() == IOV_MAX {
            break;
        }
    }
    if slices.is_empty() {
        return Ok(0);
    }
    let iov: Vec<libc::iovec> = slices
        .iter()
        .map(|s| libc::iovec {
            iov_base: s.ptr_guard().as_ptr().cast::<libc::c_void>().cast_mut(),
            iov_len: s.len(),
        })
        .collect();
    // At most IOV_MAX entries.
    let count = iov.len() as libc::c_int;
    loop {
        // SAFETY: each iovec covers a slice of guest memory that `mem` keeps mapped while it
        // is borrowed, for the whole call; writev only reads from them.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
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
pub fn copy_from_guest(
    mem: &GuestMemoryMmap,
    bufs: &[Desc],
    skip: usize,
    out: &mut Vec<u8>,
) -> bool {
    let mut skip = skip;
    for d in bufs {
        let len = d.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let Some(addr) = d.addr.checked_add(skip as u64) else {
            return false;
        };
        let start = out.len();
        out.resize(start + len - skip, 0);
        if mem.read_slice(&mut out[start..], addr).is_err() {
            out.truncate(start);
            return false;
        }
        skip = 0;
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
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i % 253) as u8).collect();
        m.write_slice(&data, GuestAddress(0)).unwrap();
        let bufs = [desc(0x100, 0x200), desc(0x800, 0x300)];
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let n = write_from_guest(b.as_raw_fd(), &m, &bufs, 0x50).unwrap();
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
            write_from_guest(b.as_raw_fd(), &m, &across, 0),
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
