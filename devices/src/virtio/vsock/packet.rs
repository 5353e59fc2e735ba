//! The virtio-vsock packet header (virtio 1.2 section 5.10.6) and the hybrid-vsock handshake
//! line. Both are parsed from untrusted bytes: the header from the guest, the line from a host
//! process.

/// Bytes in a packet header.
pub const HDR_LEN: usize = 44;
/// The only socket type: a stream.
pub const TYPE_STREAM: u16 = 1;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// The largest payload accepted in one packet from the guest.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Packet operations.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// The sender stops receiving and/or sending (see the shutdown flags).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's receive credit.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Decodes a header (little-endian, packed).
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            kind: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a packet from the guest is dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than a header.
    #[error("packet of {0} bytes is shorter than its header")]
    Short(usize),
    /// The header's length disagrees with the bytes that follow it.
    #[error("header says {said} payload bytes but {got} follow")]
    LengthMismatch {
        /// The header's len.
        said: u32,
        /// The bytes after the header.
        got: usize,
    },
    /// The payload is larger than accepted.
    #[error("payload of {0} bytes is too large")]
    TooLarge(u32),
    /// The source is not the guest.
    #[error("source cid {0} is not the guest's")]
    BadSource(u64),
    /// The destination is not the host.
    #[error("destination cid {0} is not the host")]
    BadDestination(u64),
}

/// Splits a packet from the guest into its header and payload and checks the addresses.
/// Only data packets may carry a payload; a payload on any other operation is ignored.
pub fn parse_guest_packet(bytes: &[u8], guest_cid: u64) -> Result<(Header, &[u8]), PacketError> {
    let head: &[u8; HDR_LEN] = bytes
        .get(..HDR_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::Short(bytes.len()))?;
    let h = parse_guest_header(head, guest_cid)?;
    let len = payload_len(&h, bytes.len() - HDR_LEN)?;
    Ok((h, &bytes[HDR_LEN..HDR_LEN + len]))
}

/// Decodes the header of a packet from the guest and checks its addresses and length.
pub fn parse_guest_header(head: &[u8; HDR_LEN], guest_cid: u64) -> Result<Header, PacketError> {
    let h = Header::from_bytes(head);
    if h.src_cid != guest_cid {
        return Err(PacketError::BadSource(h.src_cid));
    }
    if h.dst_cid != HOST_CID {
        return Err(PacketError::BadDestination(h.dst_cid));
    }
    if h.len > MAX_PAYLOAD {
        return Err(PacketError::TooLarge(h.len));
    }
    Ok(h)
}

/// The payload bytes of a packet whose header is `h`, given the `after` bytes that follow
/// the header: `h.len` for data packets (which must have that many), none for the others.
pub fn payload_len(h: &Header, after: usize) -> Result<usize, PacketError> {
    if h.op != op::RW {
        return Ok(0);
    }
    if after < h.len as usize {
        return Err(PacketError::LengthMismatch {
            said: h.len,
            got: after,
        });
    }
    Ok(h.len as usize)
}

/// The longest handshake line a host process may send.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a host process's handshake is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectLineError {
    /// No newline within the first bytes.
    #[error("no newline in the first {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// Not `CONNECT <port>`.
    #[error("expected 'CONNECT <port>'")]
    Malformed,
}

/// Looks for a complete `CONNECT <port>\n` at the start of `buf`. Returns the port and the
/// bytes the line took, or None while the line is incomplete.
pub fn parse_connect_line(buf: &[u8]) -> Result<Option<(u32, usize)>, ConnectLineError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CONNECT_LINE {
            Err(ConnectLineError::TooLong)
        } else {
            Ok(None)
        };
    };
    if nl >= MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let line = std::str::from_utf8(&buf[..nl]).map_err(|_| ConnectLineError::Malformed)?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line
        .strip_prefix("CONNECT ")
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u32>().ok())
        .ok_or(ConnectLineError::Malformed)?;
    Ok(Some((port, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_at_the_documented_offsets() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 52,
            len: 7,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 99,
        };
        let b = h.to_bytes();
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn guest_packets_are_checked() {
        let mut h = Header {
            src_cid: 3,
            dst_cid: 2,
            kind: TYPE_STREAM,
            op: op::RW,
            len: 3,
            ..Header::default()
        };
        let mut p = h.to_bytes().to_vec();
        p.extend_from_slice(b"abcdef");
        assert_eq!(parse_guest_packet(&p, 3).unwrap().1, b"abc");
        assert_eq!(parse_guest_packet(&p[..10], 3), Err(PacketError::Short(10)));
        assert_eq!(
            parse_guest_packet(&p[..HDR_LEN + 2], 3),
            Err(PacketError::LengthMismatch { said: 3, got: 2 })
        );
        assert_eq!(parse_guest_packet(&p, 4), Err(PacketError::BadSource(3)));
        h.dst_cid = 7;
        assert_eq!(
            parse_guest_packet(&h.to_bytes(), 3),
            Err(PacketError::BadDestination(7))
        );
        h.dst_cid = 2;
        h.len = MAX_PAYLOAD + 1;
        assert_eq!(
            parse_guest_packet(&h.to_bytes(), 3),
            Err(PacketError::TooLarge(MAX_PAYLOAD + 1))
        );
        h.len = 5;
        h.op = op::REQUEST;
        assert_eq!(parse_guest_packet(&h.to_bytes(), 3).unwrap().1, b"");
    }

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52\nxy"), Ok(Some((52, 11))));
        assert_eq!(parse_connect_line(b"CONNECT 52\r\n"), Ok(Some((52, 12))));
        assert_eq!(parse_connect_line(b"CONNECT 5"), Ok(None));
        assert_eq!(parse_connect_line(b""), Ok(None));
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT \n",
            b"CONNECT -1\n",
            b"CONNECT +1\n",
            b"CONNECT 4294967296\n",
            b"connect 5\n",
            b"CONNECT 5 6\n",
            b"\xff\n",
        ] {
            assert_eq!(parse_connect_line(bad), Err(ConnectLineError::Malformed));
        }
        assert_eq!(
            parse_connect_line(&[b'1'; MAX_CONNECT_LINE]),
            Err(ConnectLineError::TooLong)
        );
    }
}
