//! The live-migration wire protocol: framed, checksummed messages between a source VMM and a
//! destination VMM, over any byte stream (`std::io::Read`/`Write`; TCP in the VMM, in-memory
//! buffers in the tests). No KVM and no threads.
//!
//! - `frame`: every message travels in a frame, a fixed 28-byte header (magic, message type,
//!   flags, payload length, CRC-64 of the payload, CRC-64 of the header) and the payload.
//!   Each message type has a payload limit, checked before a byte of the payload is read.
//! - `message`: the messages and their byte layouts (little-endian fixed fields, written by
//!   hand so the wire format is pinned, not left to a serializer).
//! - `handshake`: version negotiation (`Hello` answered by `Welcome` or `Refuse`).
//! - `phase`: which message may come next from which side, so an out-of-order message is
//!   refused instead of acted on.
//!
//! The layouts, the sequence and the commit point are in migration/DESIGN.md ("Wire
//! protocol"). Decoding never panics and never allocates more than a message type's limit.

mod frame;
mod handshake;
mod message;
mod phase;

pub use frame::{FRAME_MAGIC, HEADER_LEN};
pub use handshake::{
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, SUPPORTED_VERSIONS, VersionRange, accept_welcome,
    answer_hello, hello, negotiate,
};
pub use message::{
    Incoming, MAX_PAGES_PER_MESSAGE, MAX_REASON_LEN, MAX_VMM_VERSION_LEN, MemoryPages, Message,
    MessageType, PAGE_SIZE, PageData, PageRecord, decode_message, encode_memory_frame,
    encode_message, read_incoming, read_message, write_message,
};
pub use phase::{Phase, Side};

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use frame::fix_checksums;

/// Why a message could not be sent, received or accepted. Each names the problem, and where
/// it can, the message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading from the peer failed (a reset connection, a read timeout on a stalled stream).
    #[error("cannot read from the migration peer: {0}")]
    Read(#[source] std::io::Error),
    /// Writing to the peer failed.
    #[error("cannot write to the migration peer: {0}")]
    Write(#[source] std::io::Error),
    /// The peer closed the stream between two frames.
    #[error("the migration peer closed the connection")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error(
        "the migration stream is truncated: the peer closed it {got} bytes into the {needed}-byte {part}"
    )]
    Truncated {
        /// The frame header, or the payload of which message.
        part: String,
        /// The length of that part.
        needed: usize,
        /// What arrived of it.
        got: usize,
    },
    /// A frame that does not start with `FRAME_MAGIC`: not a migration peer, or a stream
    /// that lost its place.
    #[error("not a migration stream: a frame starts with \"{found}\" instead of \"VMMG\"")]
    BadMagic {
        /// The first bytes, escaped.
        found: String,
    },
    /// A checksum does not match the bytes it covers.
    #[error(
        "checksum mismatch in the {part}: the migration stream is corrupt (it carries {stored:#018x}, the bytes give {computed:#018x})"
    )]
    ChecksumMismatch {
        /// The frame header, or the payload of which message.
        part: String,
        /// The CRC-64 in the frame.
        stored: u64,
        /// The CRC-64 of the bytes received.
        computed: u64,
    },
    /// A message type this build does not know.
    #[error("unknown migration message type {0}")]
    UnknownType(u16),
    /// Flags set in a frame; protocol version 1 defines none.
    #[error("a {message} frame has flags {flags:#06x}; no flags are defined")]
    BadFlags {
        /// The message type's name.
        message: &'static str,
        /// The flags.
        flags: u16,
    },
    /// A payload longer than its message type allows (refused before it is read).
    #[error("a {message} frame declares {len} bytes of payload, over the limit of {limit}")]
    TooLong {
        /// The message type's name.
        message: &'static str,
        /// The declared length.
        len: u64,
        /// The limit of this message type.
        limit: usize,
    },
    /// A payload whose bytes do not follow its message's layout.
    #[error("malformed {message} message: {reason}")]
    Malformed {
        /// The message type's name.
        message: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A message that cannot be put on the wire (a page of the wrong size, a reason too
    /// long, state over the limit).
    #[error("cannot send a {message} message: {reason}")]
    Unencodable {
        /// The message type's name.
        message: &'static str,
        /// Why.
        reason: String,
    },
    /// A message that is not allowed at this point of the migration.
    #[error("unexpected {got} while {expected}")]
    Unexpected {
        /// What the phase allows, in words.
        expected: String,
        /// The message that came (or was about to be sent), and from which side.
        got: String,
    },
    /// The destination chose a protocol version the source does not speak.
    #[error(
        "the destination chose protocol version {chosen}, which this source does not speak (it speaks {ours})"
    )]
    BadVersion {
        /// The version in the `Welcome`.
        chosen: u32,
        /// The source's range.
        ours: VersionRange,
    },
}

/// The first bytes of `bytes` (at most 8), printable ASCII as is and the rest escaped.
fn escaped_start(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
