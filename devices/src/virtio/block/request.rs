//! Parsing a virtio-blk request out of its descriptors, trusting nothing the guest wrote.

use crate::GuestRam;
use vm_memory::Bytes;

use crate::virtio::Desc;

/// Request types (virtio 1.x 5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Flush the write cache.
    Flush,
    /// Read the device ID.
    GetId,
    /// Anything else.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            0 => Self::In,
            1 => Self::Out,
            4 => Self::Flush,
            8 => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// Completion status written back to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// An I/O error, or a request that breaks the rules.
    IoErr = 1,
    /// Unknown request type.
    Unsupported = 2,
}

/// A request whose descriptors have the right shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its type.
    pub kind: RequestType,
    /// The first sector.
    pub sector: u64,
    /// Data buffers, in order.
    pub data: Vec<Desc>,
    /// Where the status byte goes.
    pub status: Desc,
}

/// Why a request cannot be served. With a usable status descriptor the guest gets IOERR;
/// without one, the request is completed with nothing written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No writable status byte at the end.
    #[error("no writable status descriptor")]
    NoStatus,
    /// The header is missing, short, writable or unreadable.
    #[error("bad request header")]
    BadHeader {
        /// The status descriptor, to report IOERR.
        status: Desc,
    },
}

/// The size of the request header (type, reserved, sector).
pub const HEADER_SIZE: u32 = 16;

/// Splits descriptors into header, data and status, and reads the header.
pub fn parse(descs: &[Desc], mem: &GuestRam) -> Result<Request, RequestError> {
    let (status, rest) = descs.split_last().ok_or(RequestError::NoStatus)?;
    if !status.write || status.len < 1 {
        return Err(RequestError::NoStatus);
    }
    let status = *status;
    let (header, data) = rest
        .split_first()
        .ok_or(RequestError::BadHeader { status })?;
    if header.write || header.len < HEADER_SIZE {
        return Err(RequestError::BadHeader { status });
    }
    let mut h = [0u8; HEADER_SIZE as usize];
    mem.read_slice(&mut h, header.addr)
        .map_err(|_| RequestError::BadHeader { status })?;
    let kind = RequestType::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Ok(Request {
        kind,
        sector,
        data: data.to_vec(),
        status,
    })
}
