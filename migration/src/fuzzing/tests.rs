//! The fuzz target without libFuzzer: its seeds are what they say they are
//! (`VMM_UPDATE_FUZZ_SEEDS=1` rewrites them), and the body survives the seeds, every
//! truncation and single-bit flip of them, and pseudo-random bytes.

use std::path::PathBuf;

use super::*;
use crate::snapshot::SnapshotError;
use crate::state::{Section, SectionSet};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/snapshot_file")
}

fn valid() -> Vec<u8> {
    let mut s = SectionSet::new();
    for (name, version, data) in [
        ("vcpu0", 2u16, &[1u8, 2, 3, 4][..]),
        ("serial", 1, b"uart"),
        ("rtc", 1, b""),
    ] {
        s.push(Section {
            name: name.to_string(),
            version,
            data: data.to_vec(),
        })
        .unwrap();
    }
    encode_snapshot(&s).unwrap()
}

/// The seeds, by file name.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let good = valid();
    let truncated = good[..good.len() - 11].to_vec();
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x01;
    let empty = encode_snapshot(&SectionSet::new()).unwrap();
    vec![
        ("1-valid", good),
        ("2-truncated", truncated),
        ("3-bad-crc", bad_crc),
        ("4-no-sections", empty),
    ]
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
        assert_eq!(stored, bytes, "{} is stale", path.display());
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        ["1-valid", "2-truncated", "3-bad-crc", "4-no-sections"]
    );
}

#[test]
fn each_seed_reaches_its_code() {
    let seeds = seeds();
    assert_eq!(decode_snapshot(&seeds[0].1).unwrap().len(), 3);
    assert!(matches!(
        decode_snapshot(&seeds[1].1),
        Err(SnapshotError::Truncated { .. })
    ));
    assert!(matches!(
        decode_snapshot(&seeds[2].1),
        Err(SnapshotError::ChecksumMismatch { .. })
    ));
    assert!(decode_snapshot(&seeds[3].1).unwrap().is_empty());
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
fn smoke_snapshot_file() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for (_, seed) in seeds() {
        for len in 0..=seed.len() {
            inputs.push(seed[..len].to_vec());
        }
        for bit in 0..seed.len() * 8 {
            let mut v = seed.clone();
            v[bit / 8] ^= 1 << (bit % 8);
            inputs.push(v);
        }
        inputs.push(seed);
    }
    let mut r = XorShift(0x5eed_f022);
    for _ in 0..2000 {
        let len = (r.next() % 200) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        // Half of them start like a snapshot, to get past the magic and the version.
        if r.next() % 2 == 0 {
            let head = &valid()[..18];
            let n = head.len().min(v.len());
            v[..n].copy_from_slice(&head[..n]);
        }
        inputs.push(v);
    }
    for (i, input) in inputs.iter().enumerate() {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        let ok = std::panic::catch_unwind(|| snapshot_file(input));
        assert!(
            ok.is_ok(),
            "smoke input {i} panicked; its bytes in hex: {hex}"
        );
    }
}

#[test]
fn a_repaired_checksum_reaches_the_name_check() {
    // With the checksum repaired, a seed with a damaged name reaches the name check.
    let mut v = valid();
    v[20] = 0xff;
    let body = v.len() - 8;
    let crc = crc64(&v[..body]);
    v[body..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        decode_snapshot(&v),
        Err(SnapshotError::NameNotUtf8 { index: 1, .. })
    ));
    snapshot_file(&v);
}
