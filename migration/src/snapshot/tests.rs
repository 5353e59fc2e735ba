//! The snapshot container: round trips, the byte layout, every refusal with its message,
//! single-bit corruption and truncation at every length, and the golden files.

use std::io::Read;
use std::path::PathBuf;

use super::*;
use crate::crc64::crc64;

fn section(name: &str, version: u16, data: &[u8]) -> Section {
    Section {
        name: name.to_string(),
        version,
        data: data.to_vec(),
    }
}

fn set(sections: &[Section]) -> SectionSet {
    let mut s = SectionSet::new();
    for x in sections {
        s.push(x.clone()).unwrap();
    }
    s
}

/// The set of the golden file and of most tests: an ordinary section, a newer one, an
/// empty one.
fn sample() -> SectionSet {
    set(&[
        section("vcpu0", 2, &[1, 2, 3, 4, 5]),
        section("serial", 1, b"uart"),
        section("rtc", 1, &[]),
    ])
}

/// A file laid out by hand, as DESIGN.md describes it, independently of the encoder.
fn raw_file(version: u32, arch: u16, sections: &[(&[u8], u16, &[u8])]) -> Vec<u8> {
    let mut f = b"VMMSTATE".to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&arch.to_le_bytes());
    f.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (name, v, data) in sections {
        f.extend_from_slice(&(name.len() as u16).to_le_bytes());
        f.extend_from_slice(name);
        f.extend_from_slice(&v.to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(data);
    }
    let crc = crc64(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn err(bytes: &[u8]) -> SnapshotError {
    decode_snapshot(bytes).expect_err("the file is refused")
}

#[test]
fn round_trip() {
    let bytes = encode_snapshot(&sample()).unwrap();
    assert_eq!(decode_snapshot(&bytes).unwrap(), sample());
    let mut written = Vec::new();
    write_snapshot(&mut written, &sample()).unwrap();
    assert_eq!(written, bytes);
    assert_eq!(read_snapshot(&mut &written[..]).unwrap(), sample());
    // Section order is kept.
    let names: Vec<String> = decode_snapshot(&bytes)
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["vcpu0", "serial", "rtc"]);
}

#[test]
fn an_empty_set_round_trips() {
    let bytes = encode_snapshot(&SectionSet::new()).unwrap();
    assert_eq!(bytes.len(), HEADER_LEN + CRC_LEN);
    assert!(decode_snapshot(&bytes).unwrap().is_empty());
}

#[test]
fn the_layout_is_the_documented_one() {
    let bytes = encode_snapshot(&sample()).unwrap();
    let by_hand = raw_file(
        1,
        0xAA64,
        &[
            (b"vcpu0", 2, &[1, 2, 3, 4, 5]),
            (b"serial", 1, b"uart"),
            (b"rtc", 1, b""),
        ],
    );
    assert_eq!(bytes, by_hand);
    assert_eq!(&bytes[..8], b"VMMSTATE");
    assert_eq!(bytes[8..12], [1, 0, 0, 0]);
    assert_eq!(bytes[12..14], [0x64, 0xAA]);
    assert_eq!(bytes[14..18], [3, 0, 0, 0]);
    assert_eq!(bytes[18..20], [5, 0]);
    assert_eq!(&bytes[20..25], b"vcpu0");
}

#[test]
fn a_bad_magic_is_refused() {
    let mut bytes = encode_snapshot(&sample()).unwrap();
    bytes[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    let e = err(&bytes);
    assert!(matches!(e, SnapshotError::BadMagic { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "not a snapshot state file: it starts with \"\\x7fELF\\x02\\x01\\x01\\x00\" instead of \"VMMSTATE\""
    );
    // Also in a file shorter than the magic.
    assert!(matches!(err(b"VMX"), SnapshotError::BadMagic { .. }));
}

#[test]
fn a_newer_format_version_is_refused_naming_both_versions() {
    let bytes = raw_file(2, ARCH_AARCH64, &[(b"vcpu0", 1, b"x")]);
    let e = err(&bytes);
    assert!(matches!(
        e,
        SnapshotError::FormatTooNew { found: 2, known: 1 }
    ));
    assert_eq!(
        e.to_string(),
        "the snapshot has format version 2, newer than this build reads (up to version 1)"
    );
    // Refused before the rest is read: a newer format may lay it out differently.
    let mut bytes = bytes[..12].to_vec();
    bytes[8] = 0xff;
    assert!(
        err(&bytes)
            .to_string()
            .contains("format version 255, newer")
    );
}

#[test]
fn format_version_zero_is_refused() {
    let e = err(&raw_file(0, ARCH_AARCH64, &[]));
    assert_eq!(
        e.to_string(),
        "the snapshot has format version 0, which no release wrote"
    );
}

#[test]
fn another_architecture_is_refused() {
    let e = err(&raw_file(1, 0x8664, &[]));
    assert!(matches!(e, SnapshotError::WrongArch { found: 0x8664 }));
    assert!(e.to_string().contains("architecture 0x8664"), "{e}");
    assert!(e.to_string().contains("aarch64"), "{e}");
}

#[test]
fn a_bad_checksum_is_refused() {
    let mut bytes = encode_snapshot(&sample()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    let e = err(&bytes);
    assert!(
        e.to_string()
            .starts_with("checksum mismatch: the file is corrupt"),
        "{e}"
    );
    // A flipped data byte of vcpu0, with the checksum intact.
    let mut bytes = encode_snapshot(&sample()).unwrap();
    bytes[32] ^= 1;
    assert!(matches!(
        err(&bytes),
        SnapshotError::ChecksumMismatch { .. }
    ));
}

#[test]
fn every_single_bit_flip_is_detected() {
    let good = encode_snapshot(&sample()).unwrap();
    for bit in 0..good.len() * 8 {
        let mut bytes = good.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        assert!(
            decode_snapshot(&bytes).is_err(),
            "flipping bit {bit} (byte {}) went unnoticed",
            bit / 8
        );
        assert!(summarize(&bytes).is_err(), "bit {bit}");
    }
}

#[test]
fn truncation_at_every_length_is_detected() {
    let good = encode_snapshot(&sample()).unwrap();
    for len in 0..good.len() {
        match err(&good[..len]) {
            SnapshotError::Truncated { offset, left, .. } => {
                assert_eq!(offset + left, len, "cut at {len}");
            }
            e => panic!("cut at {len}: {e}"),
        }
    }
}

#[test]
fn a_truncated_file_says_where_it_ends() {
    let good = encode_snapshot(&sample()).unwrap();
    let said = |len: usize| err(&good[..len]).to_string();
    assert_eq!(
        said(0),
        "the snapshot is truncated: the header needs 8 bytes at offset 0, but only 0 are left"
    );
    assert_eq!(
        said(14),
        "the snapshot is truncated: the header needs 4 bytes at offset 14, but only 0 are left"
    );
    // In vcpu0's data (it starts at 20 + 5 + 2 + 4).
    assert_eq!(
        said(33),
        "the snapshot is truncated: the data of section vcpu0 (version 2) needs 5 bytes at offset 31, but only 2 are left"
    );
    assert!(
        said(38).contains("the name of section 2 of 3"),
        "{}",
        said(38)
    );
    assert!(said(good.len() - 13).contains("the version of section rtc"));
    assert!(said(good.len() - 12).contains("the data length of section rtc (version 1)"));
    assert!(said(good.len() - 1).contains("the checksum needs 8 bytes"));
}

#[test]
fn a_count_the_file_cannot_hold_is_truncation_not_an_allocation() {
    let mut bytes = raw_file(1, ARCH_AARCH64, &[]);
    bytes[14..18].copy_from_slice(&(MAX_SECTIONS as u32).to_le_bytes());
    // The count is read, then the checksum's bytes as a first section, then the file ends.
    let e = err(&bytes);
    assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("the name of section 1 of {MAX_SECTIONS}")),
        "{e}"
    );
}

#[test]
fn too_many_sections_are_refused() {
    let mut bytes = raw_file(1, ARCH_AARCH64, &[]);
    bytes[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = err(&bytes);
    assert!(matches!(e, SnapshotError::TooManySections(n) if n == u32::MAX as usize));
    assert!(e.to_string().contains("4294967295 sections"), "{e}");
    let many = SectionSet::from_unique(
        (0..=MAX_SECTIONS)
            .map(|i| section(&format!("s{i}"), 1, &[]))
            .collect(),
    );
    assert!(matches!(
        encode_snapshot(&many),
        Err(SnapshotError::TooManySections(n)) if n == MAX_SECTIONS + 1
    ));
}

#[test]
fn trailing_garbage_is_refused() {
    let mut bytes = encode_snapshot(&sample()).unwrap();
    bytes.extend_from_slice(b"junk");
    let e = err(&bytes);
    assert!(matches!(e, SnapshotError::TrailingBytes(4)));
    assert_eq!(
        e.to_string(),
        "the snapshot has 4 bytes of trailing garbage after its checksum"
    );
}

#[test]
fn a_file_over_the_limit_is_refused() {
    let big = vec![0u8; MAX_SNAPSHOT_SIZE + 1];
    let e = err(&big);
    assert!(matches!(
        e,
        SnapshotError::TooLarge {
            limit: MAX_SNAPSHOT_SIZE
        }
    ));
    assert_eq!(
        e.to_string(),
        "the snapshot is larger than the limit of 67108864 bytes"
    );
}

/// A reader that counts what is read from it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn reading_stops_one_byte_past_the_limit() {
    let mut endless = Counting {
        inner: std::io::repeat(b'V'),
        read: 0,
    };
    let e = read_snapshot(&mut endless).unwrap_err();
    assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
    assert_eq!(endless.read, MAX_SNAPSHOT_SIZE as u64 + 1);
}

#[test]
fn state_over_the_limit_is_not_written() {
    let s = set(&[section("memory", 1, &vec![0; MAX_SNAPSHOT_SIZE])]);
    let e = encode_snapshot(&s).unwrap_err();
    assert!(matches!(e, SnapshotError::StateTooLarge { .. }), "{e}");
    let mut out = Vec::new();
    assert!(write_snapshot(&mut out, &s).is_err());
    assert!(out.is_empty(), "nothing is written");
    // The largest state that fits is written and read back.
    let overhead = HEADER_LEN + CRC_LEN + SECTION_FIXED_LEN + "memory".len();
    let s = set(&[section("memory", 1, &vec![7; MAX_SNAPSHOT_SIZE - overhead])]);
    let bytes = encode_snapshot(&s).unwrap();
    assert_eq!(bytes.len(), MAX_SNAPSHOT_SIZE);
    assert_eq!(decode_snapshot(&bytes).unwrap(), s);
}

#[test]
fn a_name_that_is_not_utf8_is_refused() {
    let bytes = raw_file(
        1,
        ARCH_AARCH64,
        &[(b"vcpu0", 1, b""), (b"se\xffrial", 1, b"")],
    );
    let e = err(&bytes);
    assert!(matches!(e, SnapshotError::NameNotUtf8 { index: 2, .. }));
    assert_eq!(
        e.to_string(),
        "section 2 has a name that is not UTF-8 (\"se\u{fffd}rial\")"
    );
}

#[test]
fn names_too_long_or_empty_are_refused() {
    let long = "n".repeat(MAX_SECTION_NAME + 1);
    let e = err(&raw_file(1, ARCH_AARCH64, &[(long.as_bytes(), 1, b"")]));
    assert!(
        matches!(e, SnapshotError::BadNameLength { index: 1, len, .. } if len == MAX_SECTION_NAME + 1)
    );
    assert!(
        e.to_string().starts_with(
            "section 1 has a name of 129 bytes (\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...\")"
        ),
        "{e}"
    );
    let e = err(&raw_file(1, ARCH_AARCH64, &[(b"", 1, b"")]));
    assert!(matches!(e, SnapshotError::BadNameLength { len: 0, .. }));
    // The longest name is fine.
    let longest = "n".repeat(MAX_SECTION_NAME);
    let ok = set(&[section(&longest, 1, b"")]);
    assert_eq!(decode_snapshot(&encode_snapshot(&ok).unwrap()).unwrap(), ok);
    // The writer refuses what the reader would.
    let e = encode_snapshot(&set(&[section("ok", 1, b""), section(&long, 1, b"")]));
    assert!(matches!(
        e,
        Err(SnapshotError::BadNameLength { index: 2, .. })
    ));
    let e = encode_snapshot(&set(&[section("", 1, b"")]));
    assert!(matches!(
        e,
        Err(SnapshotError::BadNameLength {
            index: 1,
            len: 0,
            ..
        })
    ));
}

#[test]
fn duplicate_sections_are_refused() {
    let bytes = raw_file(
        1,
        ARCH_AARCH64,
        &[(b"serial", 1, b"a"), (b"rtc", 1, b""), (b"serial", 2, b"b")],
    );
    let e = err(&bytes);
    assert_eq!(
        e.to_string(),
        "the snapshot has section serial twice (sections 1 and 3)"
    );
    assert!(summarize(&bytes).is_err());
}

#[test]
fn the_checksum_is_checked_before_names() {
    // A corrupt file is reported as corrupt, not by whatever its damage looks like.
    let mut bytes = raw_file(1, ARCH_AARCH64, &[(b"serial", 1, b"a")]);
    bytes[20] = 0xff;
    assert!(matches!(
        err(&bytes),
        SnapshotError::ChecksumMismatch { .. }
    ));
}

#[test]
fn the_summary_lists_every_section() {
    let bytes = encode_snapshot(&sample()).unwrap();
    let s = summarize(&bytes).unwrap();
    assert_eq!(s.format_version, 1);
    assert_eq!(s.size, bytes.len() as u64);
    let stored = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().unwrap());
    assert_eq!(s.checksum, stored);
    let got: Vec<(&str, u16, u64)> = s
        .sections
        .iter()
        .map(|x| (x.name.as_str(), x.version, x.size))
        .collect();
    assert_eq!(got, [("vcpu0", 2, 5), ("serial", 1, 4), ("rtc", 1, 0)]);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["size"], bytes.len());
    assert_eq!(json["sections"][0]["name"], "vcpu0");
    assert_eq!(json["sections"][0]["version"], 2);
    assert_eq!(json["sections"][0]["size"], 5);
    // It refuses what decoding refuses.
    assert!(matches!(
        summarize(&bytes[..bytes.len() - 1]),
        Err(SnapshotError::Truncated { .. })
    ));
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Keep forever: a snapshot container of format version 1 must load in every later build.
#[test]
fn golden_container_v1_loads() {
    let bytes = std::fs::read(golden("container-v1.bin")).unwrap();
    let s = summarize(&bytes).unwrap();
    assert_eq!(s.format_version, 1);
    let got = decode_snapshot(&bytes).unwrap();
    let want: Vec<(&str, u16, &[u8])> = vec![
        ("vcpu0", 2, &[1, 2, 3, 4, 5]),
        ("serial", 1, b"uart"),
        ("rtc", 1, b""),
    ];
    let got: Vec<(&str, u16, &[u8])> = got
        .iter()
        .map(|x| (x.name.as_str(), x.version, x.data.as_slice()))
        .collect();
    assert_eq!(got, want);
}

/// The file of the current format version is what this build writes;
/// `VMM_BLESS=1 cargo test -p migration golden` writes it after a format change (a new
/// version's file is added; older ones stay, see DESIGN.md).
#[test]
fn golden_container_of_this_version_is_what_we_write() {
    let path = golden(&format!("container-v{FORMAT_VERSION}.bin"));
    let bytes = encode_snapshot(&sample()).unwrap();
    if std::env::var_os("VMM_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    }
    let committed = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VMM_BLESS=1 writes it)", path.display()));
    assert_eq!(committed, bytes, "{} is stale", path.display());
}
