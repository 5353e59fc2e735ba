//! The golden byte stream of protocol version 1: one message of each type. It is decoded by
//! every later build (so a version-1 peer stays understood), and this build writes it byte
//! for byte. `VMM_BLESS=1 cargo test -p migration golden` rewrites the current version's
//! file; a released version's file must never change (bump the version instead).

use std::path::PathBuf;

use super::*;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn golden_stream_v1_decodes() {
    let bytes = std::fs::read(golden("stream-v1.bin")).unwrap();
    let (got, end) = read_all(&bytes);
    assert!(matches!(end, ProtocolError::Closed), "{end}");
    assert_eq!(got, one_of_each());
    // Spot checks that do not go through the encoder: the first frame is a Hello of
    // version 1 (type 1, 12 + 9 bytes of payload), and the stream's size.
    assert_eq!(&bytes[..12], b"VMMG\x01\x00\x00\x00\x15\x00\x00\x00");
    assert_eq!(&bytes[28..36], [1, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(bytes.len(), 4761);
}

#[test]
fn golden_stream_of_this_version_is_what_we_write() {
    let path = golden(&format!("stream-v{PROTOCOL_VERSION}.bin"));
    let bytes = stream_of(&one_of_each());
    if std::env::var_os("VMM_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let stored = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VMM_BLESS=1 writes it)", path.display()));
    assert!(
        stored == bytes,
        "{} differs from what this build writes",
        path.display()
    );
}
