//! The body of the `migration_stream` fuzz target: the migration protocol's decoder, on bytes
//! as a destination (or a source) would read them from the network.

use crate::protocol::{
    Message, Phase, SUPPORTED_VERSIONS, Side, accept_welcome, answer_hello, decode_message,
    encode_message, fix_checksums, read_message,
};

/// A stream of frames, as it is and with every frame's checksums made right (and those of
/// the snapshot containers inside `Preflight` and `State`), so that mutations reach the
/// payload decoders rather than stopping at a checksum.
pub fn migration_stream(data: &[u8]) {
    check_stream(data);
    let fixed = fix_checksums(data);
    if fixed != data {
        check_stream(&fixed);
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
