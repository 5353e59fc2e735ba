//! Fuzz-target bodies for this crate's untrusted input: the snapshot state file (a file
//! anyone may hand to `snapshot/load` or `vmm snapshot inspect`) and the migration stream (what
//! a peer sends over the network). Each takes arbitrary bytes and must not panic; `fuzz/` wraps
//! them for libFuzzer, and the unit tests run them on the seeds in `fuzz/corpus/` and on their
//! truncations, bit flips and pseudo-random bytes.

use crate::crc64::crc64;
use crate::snapshot::{decode_snapshot, encode_snapshot, read_snapshot, summarize};

mod stream;

pub use stream::migration_stream;

/// `data` with its last 8 bytes replaced by the checksum of the rest (for fuzz targets that
/// want mutations to reach what the checksum guards); `None` for fewer than 8 bytes.
pub fn with_fixed_checksum(data: &[u8]) -> Option<Vec<u8>> {
    let body_len = data.len().checked_sub(8)?;
    let mut fixed = data.to_vec();
    let crc = crc64(&fixed[..body_len]);
    fixed[body_len..].copy_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

/// A snapshot file, as it is and with its last 8 bytes replaced by the checksum of the
/// rest, so that the checks behind the checksum (names, architecture, duplicates) are
/// reached by more than the few inputs whose checksum the fuzzer finds.
pub fn snapshot_file(data: &[u8]) {
    check_snapshot(data);
    if let Some(fixed) = with_fixed_checksum(data) {
        check_snapshot(&fixed);
    }
}

/// Decodes `data` three ways (bytes, stream, summary), which must agree; a file that
/// decodes must re-encode to the very same bytes (the format has one encoding of each set
/// of sections) and decode again to the same sections.
fn check_snapshot(data: &[u8]) {
    let decoded = decode_snapshot(data);
    let streamed = read_snapshot(&mut &data[..]);
    let summary = summarize(data);
    match decoded {
        Ok(set) => {
            let again = encode_snapshot(&set).expect("a decoded snapshot encodes");
            assert_eq!(again, data, "a decoded snapshot re-encodes to its bytes");
            assert_eq!(
                decode_snapshot(&again).expect("a re-encoded snapshot decodes"),
                set
            );
            assert_eq!(
                streamed.expect("reading accepts what decoding accepts"),
                set
            );
            let summary = summary.expect("summarize accepts what decoding accepts");
            assert_eq!(summary.size, data.len() as u64);
            let listed: Vec<(&str, u16, u64)> = summary
                .sections
                .iter()
                .map(|s| (s.name.as_str(), s.version, s.size))
                .collect();
            let held: Vec<(&str, u16, u64)> = set
                .iter()
                .map(|s| (s.name.as_str(), s.version, s.data.len() as u64))
                .collect();
            assert_eq!(listed, held, "the summary lists the sections");
        }
        Err(e) => {
            let e = e.to_string();
            assert_eq!(streamed.err().map(|x| x.to_string()), Some(e.clone()));
            assert_eq!(summary.err().map(|x| x.to_string()), Some(e));
        }
    }
}

#[cfg(test)]
mod tests;
