//! The body of the `migration_stream` fuzz target: the migration protocol's decoder, on bytes
//! as a destination (or a source) would read them from the network.

use crate::protocol::{
    Incoming, Message, PageData, Phase, SUPPORTED_VERSIONS, Side, accept_welcome, answer_hello,
    decode_message, encode_message, fix_checksums, read_incoming, read_message,
};

/// A stream of frames, as it is and with every frame's checksums made right (and those of
/// the snapshot containers inside `Preflight` and `State`), so that mutations reach the
/// payload decoders rather than stopping at a checksum.
pub fn migration_stream(data: &[u8]) {
    check_stream(data);
    check_fast_path(data);
    let fixed = fix_checksums(data);
    if fixed != data {
        check_stream(&fixed);
    }
}

/// The receiver's fast path (pages borrowed from the payload) agrees with the decoder on
/// every frame: the same error, or the same message and pages.
fn check_fast_path(data: &[u8]) {
    let (mut a, mut b) = (data, data);
    let mut buf = Vec::new();
    loop {
        let slow = read_message(&mut a);
        let fast = read_incoming(&mut b, &mut buf);
        match (slow, fast) {
            (Err(s), Err(f)) => {
                assert_eq!(s.to_string(), f.to_string(), "both readers refuse alike");
                return;
            }
            (Ok(Message::Memory { pages }), Ok(Incoming::Pages(p))) => {
                assert_eq!(pages.len(), p.len());
                for (r, (index, data)) in pages.iter().zip(p.iter()) {
                    assert_eq!(r.index, index);
                    let same = match (&r.data, data) {
                        (PageData::Zero, None) => true,
                        (PageData::Bytes(x), Some(y)) => x[..] == *y,
                        _ => false,
                    };
                    assert!(same, "page {index}: the readers disagree on it");
                }
            }
            (Ok(m), Ok(Incoming::Message(n))) => assert_eq!(m, n),
            (s, f) => {
                let (s, f) = (s.is_ok(), f.is_ok());
                assert!(
                    !s && !f,
                    "the readers disagree: the decoder {s}, the fast path {f}"
                );
                // Unreachable: both failed is handled above.
                return;
            }
        }
        assert_eq!(a.len(), b.len(), "both readers took the same bytes");
    }
}

/// Reads messages until the first error. Every message read must re-encode to the very bytes
/// of its frame (the format has one encoding of each message) and decode again to itself; each
/// goes through the phase machine and the handshake checks, which must not panic either.
fn check_stream(data: &[u8]) {
    let mut rest = data;
    let mut phase = Phase::START;
    loop {
        let before = rest;
        let m = match read_message(&mut rest) {
            Ok(m) => m,
            Err(e) => {
                // The message is built, so formatting it cannot panic either.
                let _ = e.to_string();
                return;
            }
        };
        let used = before.len() - rest.len();
        let again = encode_message(&m).expect("a decoded message encodes");
        assert_eq!(
            again,
            before[..used],
            "a decoded {} re-encodes to its frame",
            m.name()
        );
        let (decoded, len) = decode_message(&again).expect("a re-encoded message decodes");
        assert_eq!((decoded, len), (m.clone(), used));
        match &m {
            Message::Hello { .. } => {
                let answer = answer_hello(&m, SUPPORTED_VERSIONS).expect("a Hello is answered");
                encode_message(&answer).expect("the answer to a Hello encodes");
            }
            Message::Welcome { protocol_version } => {
                let _ = accept_welcome(*protocol_version, SUPPORTED_VERSIONS);
            }
            _ => {}
        }
        let from = match m {
            Message::Welcome { .. }
            | Message::Refuse { .. }
            | Message::Ready
            | Message::Loaded
            | Message::Running => Side::Destination,
            _ => Side::Source,
        };
        if let Ok(next) = phase.next(from, &m) {
            phase = next;
        } else {
            let _ = phase.expected();
        }
    }
}

#[cfg(test)]
mod tests;
