//! A tap device opened through /dev/net/tun, carrying virtio-net headers (IFF_VNET_HDR) so
//! frames move between the guest and the tap without rewriting.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The virtio 1.x net header: flags, gso type, hdr len, gso size, csum start, csum offset,
/// num buffers.
pub const VNET_HDR_LEN: usize = 12;
const IFNAMSIZ: usize = 16;

/// TUNSETOFFLOAD flags.
pub mod offload {
    /// The guest takes frames with partial checksums.
    pub const CSUM: u32 = 0x01;
    /// The guest takes TCPv4 segmentation offload frames.
    pub const TSO4: u32 = 0x02;
    /// The guest takes TCPv6 segmentation offload frames.
    pub const TSO6: u32 = 0x04;
    /// The guest takes TSO frames with ECN.
    pub const TSO_ECN: u32 = 0x08;
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (attaches to) the tap named `name`, non-blocking, with 12-byte vnet headers and no
    /// offloads until the guest's features are known.
    pub fn open(name: &str) -> std::io::Result<Self> {
        if name.is_empty() || name.len() >= IFNAMSIZ || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(std::io::Error::other(format!(
                "'{name}' is not a valid interface name"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is, for the call only.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hdr = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// Wraps an already open descriptor that reads and writes one frame per call (a
    /// datagram socket in fuzzing and tests stands in for a tap).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn from_file(file: File, name: &str) -> Self {
        Self {
            file,
            name: name.to_string(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its vnet header); `Ok(None)` when none is waiting.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.file.write_all(frame)
    }

    /// Tells the kernel which offloads the guest takes in the frames it receives
    /// (`offload::*`); zero means whole frames with full checksums.
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
