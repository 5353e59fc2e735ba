//! Snapshot files: the path holds the old file or the whole new one, and no temporary file
//! is left, whatever fails.

use std::path::{Path, PathBuf};

use super::*;
use crate::snapshot::MAX_SNAPSHOT_SIZE;
use crate::state::Section;

/// A fresh, empty directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-snapfile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn one(name: &str, data: &[u8]) -> SectionSet {
    let mut s = SectionSet::new();
    s.push(Section {
        name: name.to_string(),
        version: 1,
        data: data.to_vec(),
    })
    .unwrap();
    s
}

#[test]
fn a_written_file_reads_back_and_leaves_nothing_else() {
    let d = scratch("roundtrip");
    let p = d.join("state");
    write_snapshot_file(&p, &one("vcpu0", b"regs")).unwrap();
    assert_eq!(read_snapshot_file(&p).unwrap(), one("vcpu0", b"regs"));
    assert_eq!(listing(&d), ["state"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_existing_file_is_replaced_whole() {
    let d = scratch("replace");
    let p = d.join("state");
    write_snapshot_file(&p, &one("old", &[1; 100])).unwrap();
    write_snapshot_file(&p, &one("new", b"x")).unwrap();
    assert_eq!(read_snapshot_file(&p).unwrap(), one("new", b"x"));
    assert_eq!(listing(&d), ["state"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_path_without_a_file_name_is_refused() {
    assert!(matches!(
        write_snapshot_file(Path::new("/"), &one("a", b"")),
        Err(SnapshotError::NotAFilePath(_))
    ));
    let e = write_snapshot_file(Path::new("some/dir/.."), &one("a", b"")).unwrap_err();
    assert_eq!(e.to_string(), "some/dir/.. is not a path to a file");
}

#[test]
fn an_unwritable_directory_leaves_nothing() {
    let d = scratch("unwritable");
    let missing = d.join("no-such-dir/state");
    let e = write_snapshot_file(&missing, &one("a", b"")).unwrap_err();
    assert!(matches!(e, SnapshotError::File { op: "create", .. }), "{e}");
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    // A "directory" that is a regular file.
    std::fs::write(d.join("plain"), b"keep").unwrap();
    let e = write_snapshot_file(&d.join("plain/state"), &one("a", b"")).unwrap_err();
    assert!(matches!(e, SnapshotError::File { op: "create", .. }), "{e}");
    assert_eq!(listing(&d), ["plain"]);
    assert_eq!(std::fs::read(d.join("plain")).unwrap(), b"keep");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_failed_write_leaves_the_old_file_intact() {
    let d = scratch("failed-write");
    let p = d.join("state");
    write_snapshot_file(&p, &one("old", b"good")).unwrap();
    let old = std::fs::read(&p).unwrap();
    let new = encode_snapshot(&one("new", &[9; 4096])).unwrap();
    // Half the file goes out, then the disk fills up.
    let e = replace_file(&p, &new, |f, b| {
        f.write_all(&b[..b.len() / 2])?;
        Err(std::io::Error::from_raw_os_error(libc_enospc()))
    })
    .unwrap_err();
    assert!(matches!(e, SnapshotError::File { op: "write", .. }), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), old);
    assert_eq!(listing(&d), ["state"], "the temporary file is removed");
    std::fs::remove_dir_all(&d).unwrap();
}

/// ENOSPC, without a libc dependency for one number.
fn libc_enospc() -> i32 {
    28
}

#[test]
fn a_failed_rename_removes_the_temporary_file() {
    let d = scratch("failed-rename");
    // The target is a non-empty directory: rename(2) cannot replace it.
    let p = d.join("state");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("inside"), b"x").unwrap();
    let e = write_snapshot_file(&p, &one("a", b"")).unwrap_err();
    assert!(
        matches!(e, SnapshotError::File { op: "replace", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("state"), "{e}");
    assert_eq!(listing(&d), ["state"]);
    assert_eq!(listing(&p), ["inside"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn state_that_cannot_be_encoded_touches_no_file() {
    let d = scratch("bad-state");
    let p = d.join("state");
    write_snapshot_file(&p, &one("old", b"good")).unwrap();
    let old = std::fs::read(&p).unwrap();
    let e = write_snapshot_file(&p, &one(&"n".repeat(200), b"")).unwrap_err();
    assert!(matches!(e, SnapshotError::BadNameLength { .. }), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), old);
    assert_eq!(listing(&d), ["state"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reading_names_the_file_or_the_damage() {
    let d = scratch("read");
    let p = d.join("missing");
    let e = read_snapshot_file(&p).unwrap_err();
    assert!(matches!(e, SnapshotError::File { op: "open", .. }), "{e}");
    assert!(e.to_string().starts_with("cannot open "), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    let p = d.join("cut");
    let whole = encode_snapshot(&one("vcpu0", &[1; 64])).unwrap();
    std::fs::write(&p, &whole[..40]).unwrap();
    let e = read_snapshot_file(&p).unwrap_err();
    assert!(
        e.to_string()
            .contains("the data of section vcpu0 (version 1)"),
        "{e}"
    );
    assert_eq!(read_snapshot_bytes(&p).unwrap(), &whole[..40]);
    // A directory cannot be read as a file.
    let e = read_snapshot_file(&d).unwrap_err();
    assert!(matches!(e, SnapshotError::File { op: "read", .. }), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn temporary_names_are_hidden_unique_and_short() {
    let a = temp_name(b"state");
    let b = temp_name(b"state");
    assert_ne!(a, b);
    assert!(a.to_string_lossy().starts_with(".state."));
    assert!(a.to_string_lossy().ends_with(".tmp"));
    let long = temp_name(&[b'x'; 255]);
    assert!(long.len() < 255, "{}", long.len());
}

#[test]
fn a_file_over_the_limit_is_refused_unread() {
    let d = scratch("too-large");
    let p = d.join("huge");
    // Sparse: no disk space is used.
    let f = File::create(&p).unwrap();
    f.set_len(MAX_SNAPSHOT_SIZE as u64 + 1).unwrap();
    drop(f);
    let e = read_snapshot_file(&p).unwrap_err();
    assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
