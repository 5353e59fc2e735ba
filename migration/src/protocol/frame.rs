//! Frames: a fixed 28-byte header and a payload. The header carries the payload's length and
//! CRC-64 and a CRC-64 of its own, so a corrupt length is caught before the payload is read,
//! and a length within the checksum is still checked against its message type's limit before
//! anything is allocated for it.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `VMMG` |
//! | 4 | 2 | message type, u16 |
//! | 6 | 2 | flags, u16 (0) |
//! | 8 | 4 | payload length, u32 |
//! | 12 | 8 | CRC-64/XZ of the payload |
//! | 20 | 8 | CRC-64/XZ of bytes 0..20 |

use std::io::Read;

use super::message::MessageType;
use super::{ProtocolError, escaped_start};
use crate::crc64::crc64;

/// The first bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"VMMG";
/// The length of a frame header.
pub const HEADER_LEN: usize = 28;

/// The most payload memory reserved before the bytes arrive; a longer payload (within its
/// limit) grows the buffer as it is read, so a peer that declares a large payload and sends
/// little of it costs at most this much.
const PREALLOC: usize = 1 << 20;

/// Fills in the header of `frame`, whose first `HEADER_LEN` bytes are room for it and the
/// rest the payload of a message of type `kind`. The caller has checked the payload against
/// the type's limit, which is below `u32::MAX`.
pub(super) fn seal_frame(kind: MessageType, frame: &mut [u8]) {
    let (header, payload) = frame.split_at_mut(HEADER_LEN);
    let len = u32::try_from(payload.len()).expect("payloads are checked against their limit");
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
    header[6..8].copy_from_slice(&0u16.to_le_bytes());
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12..20].copy_from_slice(&crc64(payload).to_le_bytes());
    let header_crc = crc64(&header[..20]);
    header[20..28].copy_from_slice(&header_crc.to_le_bytes());
}

/// Reads one frame: its message type and its payload, both checked against their checksums.
pub(super) fn read_frame(r: &mut impl Read) -> Result<(MessageType, Vec<u8>), ProtocolError> {
    let mut payload = Vec::new();
    let kind = read_frame_into(r, &mut payload)?;
    Ok((kind, payload))
}

/// Reads one frame into `payload` (cleared first, its allocation reused): the message type;
/// the payload is checked against its checksum.
pub(super) fn read_frame_into(
    r: &mut impl Read,
    payload: &mut Vec<u8>,
) -> Result<MessageType, ProtocolError> {
    payload.clear();
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    // The magic first, on what arrived: a peer that is not a migration peer is named as
    // such even when it sent less than a header.
    let magic_part = got.min(FRAME_MAGIC.len());
    if header[..magic_part] != FRAME_MAGIC[..magic_part] {
        return Err(ProtocolError::BadMagic {
            found: escaped_start(&header[..got]),
        });
    }
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < HEADER_LEN {
        return Err(ProtocolError::Truncated {
            part: "frame header".to_string(),
            needed: HEADER_LEN,
            got,
        });
    }
    let stored = u64_at(&header, 20);
    let computed = crc64(&header[..20]);
    if stored != computed {
        return Err(ProtocolError::ChecksumMismatch {
            part: "frame header".to_string(),
            stored,
            computed,
        });
    }
    let raw_kind = u16::from_le_bytes([header[4], header[5]]);
    let kind = MessageType::from_u16(raw_kind).ok_or(ProtocolError::UnknownType(raw_kind))?;
    let flags = u16::from_le_bytes([header[6], header[7]]);
    if flags != 0 {
        return Err(ProtocolError::BadFlags {
            message: kind.name(),
            flags,
        });
    }
    let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len as usize > kind.payload_limit() {
        return Err(ProtocolError::TooLong {
            message: kind.name(),
            len: u64::from(len),
            limit: kind.payload_limit(),
        });
    }
    let len = len as usize;
    payload.reserve(len.min(PREALLOC));
    r.take(len as u64)
        .read_to_end(payload)
        .map_err(ProtocolError::Read)?;
    let part = || format!("payload of a {} frame", kind.name());
    if payload.len() < len {
        return Err(ProtocolError::Truncated {
            part: part(),
            needed: len,
            got: payload.len(),
        });
    }
    let stored = u64_at(&header, 12);
    let computed = crc64(payload);
    if stored != computed {
        return Err(ProtocolError::ChecksumMismatch {
            part: part(),
            stored,
            computed,
        });
    }
    Ok(kind)
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Read(e)),
        }
    }
    Ok(got)
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// `stream` with the checksums of every whole frame made right (and, for payloads that are
/// snapshot containers, the container's own checksum too), so that a fuzzer's mutations reach
/// what the checksums guard. Walks frames by their declared lengths; stops at the first frame
/// that does not fit in what is left.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fix_checksums(stream: &[u8]) -> Vec<u8> {
    let mut out = stream.to_vec();
    let mut at = 0;
    while out.len() - at >= HEADER_LEN {
        let len = u32::from_le_bytes([out[at + 8], out[at + 9], out[at + 10], out[at + 11]]);
        let start = at + HEADER_LEN;
        let Some(end) = start.checked_add(len as usize).filter(|&e| e <= out.len()) else {
            break;
        };
        let kind = u16::from_le_bytes([out[at + 4], out[at + 5]]);
        let container = matches!(
            MessageType::from_u16(kind),
            Some(MessageType::Preflight | MessageType::State)
        );
        if container && let Some(fixed) = crate::fuzzing::with_fixed_checksum(&out[start..end]) {
            out[start..end].copy_from_slice(&fixed);
        }
        let payload_crc = crc64(&out[start..end]);
        out[at + 12..at + 20].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc64(&out[at..at + 20]);
        out[at + 20..at + 28].copy_from_slice(&header_crc.to_le_bytes());
        at = end;
    }
    out
}
