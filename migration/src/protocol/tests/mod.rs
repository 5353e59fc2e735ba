//! Tests of the wire protocol, and the messages they (and the golden stream and the fuzz
//! seeds) are built from.

use super::*;
use crate::state::{Section, SectionSet};

mod framing;
mod golden;
mod messages;
mod phases;

/// A set of sections: `(name, version, data)`.
pub(crate) fn sections(list: &[(&str, u16, &[u8])]) -> SectionSet {
    let mut s = SectionSet::new();
    for (name, version, data) in list {
        s.push(Section {
            name: name.to_string(),
            version: *version,
            data: data.to_vec(),
        })
        .expect("distinct names");
    }
    s
}

/// A page of `PAGE_SIZE` bytes that are not all alike.
pub(crate) fn pattern_page(seed: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// One message of each type, in the order of a migration and then the ways to end one early:
/// the content of the golden stream.
pub(crate) fn one_of_each() -> Vec<Message> {
    let mut all = small_of_each();
    let memory = all
        .iter_mut()
        .find(|m| matches!(m, Message::Memory { .. }))
        .expect("one Memory");
    *memory = Message::Memory {
        pages: vec![
            PageRecord {
                index: 0,
                data: PageData::Zero,
            },
            PageRecord {
                index: 0x4_0001,
                data: PageData::Bytes(pattern_page(0x5a)),
            },
            PageRecord {
                index: 7,
                data: PageData::Zero,
            },
        ],
    };
    all
}

/// `one_of_each` without page data (its `Memory` holds zero pages only): a stream of a few
/// hundred bytes, for the tests that try every truncation and every bit flip.
pub(crate) fn small_of_each() -> Vec<Message> {
    vec![
        Message::Hello {
            protocol_version: 1,
            min_protocol_version: 1,
            vmm_version: "vmm 0.1.0".to_string(),
            arch: crate::snapshot::ARCH_AARCH64,
        },
        Message::Welcome {
            protocol_version: 1,
        },
        Message::Preflight {
            sections: sections(&[("vcpu0", 2, &[1, 2, 3, 4]), ("gic", 1, b"gicv3")]),
        },
        Message::Ready,
        Message::Memory {
            pages: vec![
                PageRecord {
                    index: 0,
                    data: PageData::Zero,
                },
                PageRecord {
                    index: 7,
                    data: PageData::Zero,
                },
            ],
        },
        Message::RoundEnd { round: 1 },
        Message::State {
            sections: sections(&[
                ("vcpu0", 2, &[1, 2, 3, 4]),
                ("gic", 1, b"gicv3"),
                ("rtc", 1, b""),
            ]),
        },
        Message::Loaded,
        Message::Commit,
        Message::Running,
        Message::Refuse {
            reason: "the counter runs at 62500000 Hz on the source and 24000000 Hz here"
                .to_string(),
        },
        Message::Abort {
            reason: "cannot open the disk /var/lib/vmm/root.img".to_string(),
        },
        Message::Cancelled,
    ]
}

/// The frames of `messages`, one after another.
pub(crate) fn stream_of(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        write_message(&mut out, m).expect("the test messages encode");
    }
    out
}

/// Reads messages from `bytes` until an error; the messages and the error.
fn read_all(bytes: &[u8]) -> (Vec<Message>, ProtocolError) {
    let mut r = bytes;
    let mut got = Vec::new();
    loop {
        match read_message(&mut r) {
            Ok(m) => got.push(m),
            Err(e) => return (got, e),
        }
    }
}

/// A frame built by hand: any type number, flags and payload, with correct checksums.
fn raw_frame(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&FRAME_MAGIC);
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&crate::crc64::crc64(payload).to_le_bytes());
    let crc = crate::crc64::crc64(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(payload);
    f
}
