//! `migration_stream` without libFuzzer: its seeds are what they say they are
//! (`VMM_UPDATE_FUZZ_SEEDS=1` rewrites them), each reaches its code, and the body survives the
//! seeds, every truncation of the golden stream, every single-bit flip of a small stream, and
//! pseudo-random bytes.

use std::path::PathBuf;

use super::*;
use crate::protocol::tests::{one_of_each, small_of_each, stream_of};
use crate::protocol::{HEADER_LEN, ProtocolError};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/migration_stream")
}

/// The seeds, by file name: the golden stream, the same cut in the middle of its `Memory`
/// page data, and the same with one byte of its `State` payload changed.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let golden = stream_of(&one_of_each());
    let memory_at = frame_start(&golden, 4);
    let truncated = golden[..memory_at + HEADER_LEN + 2000].to_vec();
    let mut corrupt = golden.clone();
    corrupt[frame_start(&golden, 6) + HEADER_LEN + 30] ^= 0x20;
    vec![
        ("1-golden", golden),
        ("2-truncated", truncated),
        ("3-corrupt", corrupt),
    ]
}

/// Where frame `n` (from 0) of an intact stream starts.
fn frame_start(stream: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        at += decode_message(&stream[at..]).expect("an intact stream").1;
    }
    at
}

#[test]
fn the_seeds_are_current() {
    let update = std::env::var_os("VMM_UPDATE_FUZZ_SEEDS").is_some();
    if update {
        std::fs::create_dir_all(corpus()).unwrap();
    }
    for (name, bytes) in seeds() {
        let path = corpus().join(name);
        if update {
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (VMM_UPDATE_FUZZ_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert!(stored == bytes, "{} is stale", path.display());
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ["1-golden", "2-truncated", "3-corrupt"]);
    // The golden seed is the golden stream of the tests.
    let golden =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/stream-v1.bin"))
            .unwrap();
    assert!(seeds()[0].1 == golden);
}

/// The messages a stream yields before its first error, and that error.
fn read_all(mut bytes: &[u8]) -> (usize, ProtocolError) {
    let mut n = 0;
    loop {
        match read_message(&mut bytes) {
            Ok(_) => n += 1,
            Err(e) => return (n, e),
        }
    }
}

#[test]
fn each_seed_reaches_its_code() {
    let seeds = seeds();
    let (n, e) = read_all(&seeds[0].1);
    assert_eq!(n, 13);
    assert!(matches!(e, ProtocolError::Closed));
    let (n, e) = read_all(&seeds[1].1);
    assert_eq!(n, 4);
    assert!(matches!(e, ProtocolError::Truncated { .. }), "{e}");
    let (n, e) = read_all(&seeds[2].1);
    assert_eq!(n, 6);
    assert!(matches!(e, ProtocolError::ChecksumMismatch { .. }), "{e}");
    // With the checksums fixed, the corrupt State reaches the sections' decoder.
    let (n, e) = read_all(&fix_checksums(&seeds[2].1));
    assert_eq!(n, 6);
    assert!(
        e.to_string()
            .starts_with("malformed State message: its sections: "),
        "{e}"
    );
}

/// A small deterministic generator (xorshift64), so a failing input is found again.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn smoke_migration_stream() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for (_, seed) in seeds() {
        inputs.push(seed);
    }
    let golden = stream_of(&one_of_each());
    for len in 0..golden.len() {
        inputs.push(golden[..len].to_vec());
    }
    let small = stream_of(&small_of_each());
    for bit in 0..small.len() * 8 {
        let mut v = small.clone();
        v[bit / 8] ^= 1 << (bit % 8);
        inputs.push(v);
    }
    let mut r = XorShift(0x5eed_5712);
    for _ in 0..2000 {
        let len = (r.next() % 300) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        // Half of them start with a frame header of a random known type, so that the fixed
        // checksums let the payload decoders see random bytes.
        if r.next() % 2 == 0 && v.len() >= 12 {
            v[..4].copy_from_slice(b"VMMG");
            let kind = (r.next() % 13 + 1) as u16;
            v[4..6].copy_from_slice(&kind.to_le_bytes());
            v[6..8].copy_from_slice(&[0, 0]);
            let payload = (v.len().saturating_sub(HEADER_LEN)) as u32;
            v[8..12].copy_from_slice(&payload.to_le_bytes());
        }
        inputs.push(v);
    }
    for (i, input) in inputs.iter().enumerate() {
        let hex: String = input.iter().take(400).map(|b| format!("{b:02x}")).collect();
        let ok = std::panic::catch_unwind(|| migration_stream(input));
        assert!(
            ok.is_ok(),
            "smoke input {i} panicked; its first bytes in hex: {hex}"
        );
    }
}
