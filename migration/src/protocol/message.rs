//! The messages and their payload layouts. All integers are little-endian; a string is a u16
//! byte length and that many bytes of UTF-8; a set of sections is a snapshot state container
//! (`snapshot::encode_snapshot`, with its own format version and CRC-64), so state travels
//! exactly as it is saved. A payload must be consumed exactly: bytes left over are malformed.

use std::io::{Read, Write};

use super::ProtocolError;
use super::frame::{HEADER_LEN, read_frame, read_frame_into, seal_frame};
use crate::snapshot::{MAX_SNAPSHOT_SIZE, decode_snapshot, encode_snapshot};
use crate::state::SectionSet;

/// The size of a guest page on the wire.
pub const PAGE_SIZE: usize = 4096;
/// The most page records in one `Memory` message (4 MiB of page data).
pub const MAX_PAGES_PER_MESSAGE: usize = 1024;
/// The longest `vmm_version` in a `Hello`, in bytes.
pub const MAX_VMM_VERSION_LEN: usize = 256;
/// The longest reason in a `Refuse` or an `Abort`, in bytes.
pub const MAX_REASON_LEN: usize = 16384;

/// A record's index and kind.
const RECORD_FIXED_LEN: usize = 8 + 1;
/// The highest page index: its guest-physical address still fits in 64 bits.
const MAX_PAGE_INDEX: u64 = u64::MAX / PAGE_SIZE as u64;

/// One message of the migration protocol. Which side sends which, and when, is in `Phase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Source, first: the protocol versions it speaks and what it is.
    Hello {
        /// The newest protocol version the source speaks.
        protocol_version: u32,
        /// The oldest.
        min_protocol_version: u32,
        /// The source VMM's version, for messages.
        vmm_version: String,
        /// The guest's architecture (`snapshot::ARCH_AARCH64`).
        arch: u16,
    },
    /// Destination: the protocol version both will speak.
    Welcome {
        /// The version chosen.
        protocol_version: u32,
    },
    /// Destination: it will not take this guest (after `Hello` or `Preflight`).
    Refuse {
        /// Why, naming the difference.
        reason: String,
    },
    /// Source: the state sections the destination checks before any page moves.
    Preflight {
        /// The sections.
        sections: SectionSet,
    },
    /// Destination: the pre-flight checks passed.
    Ready,
    /// Source: guest pages.
    Memory {
        /// At most `MAX_PAGES_PER_MESSAGE` records.
        pages: Vec<PageRecord>,
    },
    /// Source: the end of a round of pages (the first round is round 1).
    RoundEnd {
        /// The round that ended.
        round: u32,
    },
    /// Source, at the switchover: all device, vCPU and vGIC state.
    State {
        /// The sections.
        sections: SectionSet,
    },
    /// Destination: the state is loaded; it is ready to run the guest.
    Loaded,
    /// Source: the point of no return; the destination now owns the guest.
    Commit,
    /// Destination: it resumed the guest.
    Running,
    /// Either side, before `Commit`: the migration failed.
    Abort {
        /// Why.
        reason: String,
    },
    /// Source, before `Commit`: the operator cancelled the migration.
    Cancelled,
}

/// One guest page in a `Memory` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRecord {
    /// The page's index: its guest-physical address divided by `PAGE_SIZE`.
    pub index: u64,
    /// What the page holds.
    pub data: PageData,
}

/// A page's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageData {
    /// All zeros: a marker, no bytes on the wire.
    Zero,
    /// Exactly `PAGE_SIZE` bytes.
    Bytes(Vec<u8>),
}

/// The type field of a frame. The numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageType {
    /// `Message::Hello`.
    Hello = 1,
    /// `Message::Welcome`.
    Welcome = 2,
    /// `Message::Refuse`.
    Refuse = 3,
    /// `Message::Preflight`.
    Preflight = 4,
    /// `Message::Ready`.
    Ready = 5,
    /// `Message::Memory`.
    Memory = 6,
    /// `Message::RoundEnd`.
    RoundEnd = 7,
    /// `Message::State`.
    State = 8,
    /// `Message::Loaded`.
    Loaded = 9,
    /// `Message::Commit`.
    Commit = 10,
    /// `Message::Running`.
    Running = 11,
    /// `Message::Abort`.
    Abort = 12,
    /// `Message::Cancelled`.
    Cancelled = 13,
}

impl MessageType {
    /// Every type, in number order.
    pub const ALL: [MessageType; 13] = [
        Self::Hello,
        Self::Welcome,
        Self::Refuse,
        Self::Preflight,
        Self::Ready,
        Self::Memory,
        Self::RoundEnd,
        Self::State,
        Self::Loaded,
        Self::Commit,
        Self::Running,
        Self::Abort,
        Self::Cancelled,
    ];

    /// The type with wire number `v`.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u16 == v)
    }

    /// Its name, as in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "Hello",
            Self::Welcome => "Welcome",
            Self::Refuse => "Refuse",
            Self::Preflight => "Preflight",
            Self::Ready => "Ready",
            Self::Memory => "Memory",
            Self::RoundEnd => "RoundEnd",
            Self::State => "State",
            Self::Loaded => "Loaded",
            Self::Commit => "Commit",
            Self::Running => "Running",
            Self::Abort => "Abort",
            Self::Cancelled => "Cancelled",
        }
    }

    /// The longest payload of this type; a frame declaring more is refused unread.
    pub fn payload_limit(self) -> usize {
        match self {
            Self::Hello => 4 + 4 + 2 + 2 + MAX_VMM_VERSION_LEN,
            Self::Welcome | Self::RoundEnd => 4,
            Self::Refuse | Self::Abort => 2 + MAX_REASON_LEN,
            Self::Preflight | Self::State => MAX_SNAPSHOT_SIZE,
            Self::Memory => 4 + MAX_PAGES_PER_MESSAGE * (RECORD_FIXED_LEN + PAGE_SIZE),
            Self::Ready | Self::Loaded | Self::Commit | Self::Running | Self::Cancelled => 0,
        }
    }
}

impl Message {
    /// Its frame's type.
    pub fn kind(&self) -> MessageType {
        match self {
            Self::Hello { .. } => MessageType::Hello,
            Self::Welcome { .. } => MessageType::Welcome,
            Self::Refuse { .. } => MessageType::Refuse,
            Self::Preflight { .. } => MessageType::Preflight,
            Self::Ready => MessageType::Ready,
            Self::Memory { .. } => MessageType::Memory,
            Self::RoundEnd { .. } => MessageType::RoundEnd,
            Self::State { .. } => MessageType::State,
            Self::Loaded => MessageType::Loaded,
            Self::Commit => MessageType::Commit,
            Self::Running => MessageType::Running,
            Self::Abort { .. } => MessageType::Abort,
            Self::Cancelled => MessageType::Cancelled,
        }
    }

    /// Its name, as in messages.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// Writes `m` as one frame and flushes.
pub fn write_message(w: &mut impl Write, m: &Message) -> Result<(), ProtocolError> {
    let frame = encode_message(m)?;
    w.write_all(&frame).map_err(ProtocolError::Write)?;
    w.flush().map_err(ProtocolError::Write)
}

/// Reads one frame and decodes its message. A stream that ends cleanly between frames is
/// `ProtocolError::Closed`.
pub fn read_message(r: &mut impl Read) -> Result<Message, ProtocolError> {
    let (kind, payload) = read_frame(r)?;
    decode_payload(kind, &payload)
}

/// The frame of `m`.
pub fn encode_message(m: &Message) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = encode_payload(m)?;
    let kind = m.kind();
    let payload_len = frame.len() - HEADER_LEN;
    if payload_len > kind.payload_limit() {
        return Err(ProtocolError::Unencodable {
            message: kind.name(),
            reason: format!(
                "its payload is {payload_len} bytes, over the limit of {}",
                kind.payload_limit()
            ),
        });
    }
    seal_frame(kind, &mut frame);
    Ok(frame)
}

/// Decodes the frame at the start of `bytes`: the message and the bytes the frame took.
pub fn decode_message(bytes: &[u8]) -> Result<(Message, usize), ProtocolError> {
    let mut rest = bytes;
    let m = read_message(&mut rest)?;
    Ok((m, bytes.len() - rest.len()))
}

/// A frame of `m` with its header left zero: the payload is written after room for the
/// header, so a 4 MiB `Memory` is not copied a second time to put a header before it.
fn encode_payload(m: &Message) -> Result<Vec<u8>, ProtocolError> {
    let name = m.name();
    let mut out = vec![0u8; HEADER_LEN];
    match m {
        Message::Hello {
            protocol_version,
            min_protocol_version,
            vmm_version,
            arch,
        } => {
            out.extend_from_slice(&protocol_version.to_le_bytes());
            out.extend_from_slice(&min_protocol_version.to_le_bytes());
            out.extend_from_slice(&arch.to_le_bytes());
            put_str(
                &mut out,
                name,
                "vmm_version",
                vmm_version,
                MAX_VMM_VERSION_LEN,
            )?;
        }
        Message::Welcome { protocol_version } => {
            out.extend_from_slice(&protocol_version.to_le_bytes());
        }
        Message::RoundEnd { round } => out.extend_from_slice(&round.to_le_bytes()),
        Message::Refuse { reason } | Message::Abort { reason } => {
            put_str(&mut out, name, "reason", reason, MAX_REASON_LEN)?;
        }
        Message::Preflight { sections } | Message::State { sections } => {
            let container = encode_snapshot(sections).map_err(|e| ProtocolError::Unencodable {
                message: name,
                reason: e.to_string(),
            })?;
            out.extend_from_slice(&container);
        }
        Message::Memory { pages } => {
            if pages.len() > MAX_PAGES_PER_MESSAGE {
                return Err(ProtocolError::Unencodable {
                    message: name,
                    reason: format!(
                        "it has {} pages, more than the limit of {MAX_PAGES_PER_MESSAGE}",
                        pages.len()
                    ),
                });
            }
            let count = u32::try_from(pages.len()).expect("at most MAX_PAGES_PER_MESSAGE");
            out.reserve(4 + pages.len() * (RECORD_FIXED_LEN + PAGE_SIZE));
            out.extend_from_slice(&count.to_le_bytes());
            for p in pages {
                if p.index > MAX_PAGE_INDEX {
                    return Err(ProtocolError::Unencodable {
                        message: name,
                        reason: format!("page index {:#x} is beyond 64-bit addresses", p.index),
                    });
                }
                out.extend_from_slice(&p.index.to_le_bytes());
                match &p.data {
                    PageData::Zero => out.push(0),
                    PageData::Bytes(b) if b.len() == PAGE_SIZE => {
                        out.push(1);
                        out.extend_from_slice(b);
                    }
                    PageData::Bytes(b) => {
                        return Err(ProtocolError::Unencodable {
                            message: name,
                            reason: format!(
                                "page {:#x} has {} bytes instead of {PAGE_SIZE}",
                                p.index,
                                b.len()
                            ),
                        });
                    }
                }
            }
        }
        Message::Ready
        | Message::Loaded
        | Message::Commit
        | Message::Running
        | Message::Cancelled => {}
    }
    Ok(out)
}

fn put_str(
    out: &mut Vec<u8>,
    message: &'static str,
    field: &str,
    s: &str,
    max: usize,
) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(ProtocolError::Unencodable {
            message,
            reason: format!("its {field} is {} bytes, over the limit of {max}", s.len()),
        });
    }
    let len = u16::try_from(s.len()).expect("string limits are below 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn decode_payload(kind: MessageType, payload: &[u8]) -> Result<Message, ProtocolError> {
    let mut p = Payload {
        bytes: payload,
        at: 0,
        message: kind.name(),
    };
    let m = match kind {
        MessageType::Hello => Message::Hello {
            protocol_version: p.u32("protocol_version")?,
            min_protocol_version: p.u32("min_protocol_version")?,
            arch: p.u16("arch")?,
            vmm_version: p.string("vmm_version", MAX_VMM_VERSION_LEN)?,
        },
        MessageType::Welcome => Message::Welcome {
            protocol_version: p.u32("protocol_version")?,
        },
        MessageType::Refuse => Message::Refuse {
            reason: p.string("reason", MAX_REASON_LEN)?,
        },
        MessageType::Abort => Message::Abort {
            reason: p.string("reason", MAX_REASON_LEN)?,
        },
        MessageType::RoundEnd => Message::RoundEnd {
            round: p.u32("round")?,
        },
        MessageType::Preflight => Message::Preflight {
            sections: p.sections()?,
        },
        MessageType::State => Message::State {
            sections: p.sections()?,
        },
        MessageType::Memory => Message::Memory { pages: p.pages()? },
        MessageType::Ready => Message::Ready,
        MessageType::Loaded => Message::Loaded,
        MessageType::Commit => Message::Commit,
        MessageType::Running => Message::Running,
        MessageType::Cancelled => Message::Cancelled,
    };
    p.finish()?;
    Ok(m)
}

/// A cursor over a payload whose every error is `Malformed`, naming the message.
struct Payload<'a> {
    bytes: &'a [u8],
    at: usize,
    message: &'static str,
}

impl<'a> Payload<'a> {
    fn malformed(&self, reason: String) -> ProtocolError {
        ProtocolError::Malformed {
            message: self.message,
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtocolError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(self.malformed(format!(
                "the payload ends in the {what}: it needs {n} bytes at offset {}, {left} are left",
                self.at
            )));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str, max: usize) -> Result<String, ProtocolError> {
        let len = self.u16(&format!("length of the {what}"))? as usize;
        if len > max {
            return Err(self.malformed(format!(
                "its {what} is {len} bytes, over the limit of {max}"
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(format!("its {what} is not UTF-8")))
    }

    /// The rest of the payload, a snapshot container.
    fn sections(&mut self) -> Result<SectionSet, ProtocolError> {
        let rest = self.take(self.bytes.len() - self.at, "sections")?;
        decode_snapshot(rest).map_err(|e| self.malformed(format!("its sections: {e}")))
    }

    fn pages(&mut self) -> Result<Vec<PageRecord>, ProtocolError> {
        let mut pages = Vec::new();
        self.pages_walk(|index, data| {
            pages.push(PageRecord {
                index,
                data: data.map_or(PageData::Zero, |d| PageData::Bytes(d.to_vec())),
            });
        })?;
        Ok(pages)
    }

    /// Walks a `Memory` payload's records, checking each, and hands each to `each`; answers
    /// the record count.
    fn pages_walk(
        &mut self,
        mut each: impl FnMut(u64, Option<&'a [u8]>),
    ) -> Result<usize, ProtocolError> {
        let count = self.u32("page count")? as usize;
        if count > MAX_PAGES_PER_MESSAGE {
            return Err(self.malformed(format!(
                "it has {count} pages, more than the limit of {MAX_PAGES_PER_MESSAGE}"
            )));
        }
        for i in 0..count {
            let index = self.u64(&format!("index of page record {i}"))?;
            if index > MAX_PAGE_INDEX {
                return Err(self.malformed(format!(
                    "page record {i} has index {index:#x}, beyond 64-bit addresses"
                )));
            }
            let data = match self.u8(&format!("kind of page record {i}"))? {
                0 => None,
                1 => Some(self.take(PAGE_SIZE, &format!("data of page {index:#x}"))?),
                k => {
                    return Err(self.malformed(format!(
                        "page record {i} (page {index:#x}) has kind {k}; 0 (zero) and 1 (bytes) are defined"
                    )));
                }
            };
            each(index, data);
        }
        Ok(count)
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        let left = self.bytes.len() - self.at;
        if left == 0 {
            Ok(())
        } else {
            Err(self.malformed(format!("{left} bytes left over after the message")))
        }
    }
}

/// A `Memory` message's records, borrowed from the frame's payload: the receiver's path for
/// guest pages, which copies each page once (into guest memory) instead of into a `Vec` per
/// page. The layout is checked in full when it is made, with the same errors as
/// `read_message`.
#[derive(Debug, Clone, Copy)]
pub struct MemoryPages<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> MemoryPages<'a> {
    /// Checks a `Memory` payload.
    fn parse(payload: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut p = Payload {
            bytes: payload,
            at: 0,
            message: MessageType::Memory.name(),
        };
        // The same walk as the decoder's, without keeping the pages.
        let count = p.pages_walk(|_, _| ())?;
        p.finish()?;
        Ok(Self {
            bytes: payload,
            count,
        })
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each record: the page index, and its bytes (`None` for a zero page).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&'a [u8]>)> + 'a {
        let bytes = self.bytes;
        let mut at = 4;
        (0..self.count).map(move |_| {
            let mut index = [0u8; 8];
            index.copy_from_slice(&bytes[at..at + 8]);
            let kind = bytes[at + 8];
            at += RECORD_FIXED_LEN;
            let data = (kind == 1).then(|| {
                let d = &bytes[at..at + PAGE_SIZE];
                at += PAGE_SIZE;
                d
            });
            (u64::from_le_bytes(index), data)
        })
    }
}

/// A message as the receiver's fast path reads it: pages borrowed from the payload, anything
/// else decoded.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A `Memory` message.
    Pages(MemoryPages<'a>),
    /// Any other message.
    Message(Message),
}

/// Reads one frame into `buf` (its allocation reused from frame to frame) and decodes it,
/// leaving a `Memory` message's pages in `buf`.
pub fn read_incoming<'a>(
    r: &mut impl Read,
    buf: &'a mut Vec<u8>,
) -> Result<Incoming<'a>, ProtocolError> {
    let kind = read_frame_into(r, buf)?;
    if kind == MessageType::Memory {
        MemoryPages::parse(buf).map(Incoming::Pages)
    } else {
        decode_payload(kind, buf).map(Incoming::Message)
    }
}

/// Writes the `Memory` frame of `records` (at most `MAX_PAGES_PER_MESSAGE`, each a zero page
/// or `PAGE_SIZE` bytes) into `out`, reusing its allocation: the sender's path for guest
/// pages, which copies each page once. The bytes are exactly those `encode_message` gives for
/// the same pages.
pub fn encode_memory_frame(
    records: &[crate::engine::PageRecord<'_>],
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    use crate::engine::PageData as Data;
    let name = MessageType::Memory.name();
    let unencodable = |reason: String| ProtocolError::Unencodable {
        message: name,
        reason,
    };
    if records.len() > MAX_PAGES_PER_MESSAGE {
        return Err(unencodable(format!(
            "it has {} pages, more than the limit of {MAX_PAGES_PER_MESSAGE}",
            records.len()
        )));
    }
    out.clear();
    out.resize(HEADER_LEN, 0);
    let count = u32::try_from(records.len()).expect("at most MAX_PAGES_PER_MESSAGE");
    out.extend_from_slice(&count.to_le_bytes());
    for r in records {
        if r.index > MAX_PAGE_INDEX {
            return Err(unencodable(format!(
                "page index {:#x} is beyond 64-bit addresses",
                r.index
            )));
        }
        out.extend_from_slice(&r.index.to_le_bytes());
        match r.data {
            Data::Zero => out.push(0),
            Data::Bytes(b) if b.len() == PAGE_SIZE => {
                out.push(1);
                out.extend_from_slice(b);
            }
            Data::Bytes(b) => {
                return Err(unencodable(format!(
                    "page {:#x} has {} bytes instead of {PAGE_SIZE}",
                    r.index,
                    b.len()
                )));
            }
        }
    }
    seal_frame(MessageType::Memory, out);
    Ok(())
}
