//! Snapshot files on disk. Writing goes to a temporary name in the target's directory,
//! which is synced and then renamed over the target, and the directory is synced: whatever
//! fails, the path holds either its old file or the complete new one, never a part, and no
//! temporary file is left behind.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{SnapshotError, encode_snapshot, read_limited};
use crate::state::SectionSet;

/// Writes `sections` as a snapshot file at `path`, replacing any file there atomically.
pub fn write_snapshot_file(path: &Path, sections: &SectionSet) -> Result<(), SnapshotError> {
    // Encoding checks the state first, so state that cannot be written touches no file.
    let bytes = encode_snapshot(sections)?;
    replace_file(path, &bytes, Write::write_all)
}

/// Reads and decodes the snapshot file at `path`.
pub fn read_snapshot_file(path: &Path) -> Result<SectionSet, SnapshotError> {
    super::decode_snapshot(&read_snapshot_bytes(path)?)
}

/// The bytes of the file at `path`, unchecked but refused past `MAX_SNAPSHOT_SIZE` (for
/// `summarize` and `decode_snapshot` of one read).
pub fn read_snapshot_bytes(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let io = |op| {
        move |source| SnapshotError::File {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut f = File::open(path).map_err(io("open"))?;
    read_limited(&mut f).map_err(|e| match e {
        SnapshotError::Read(source) => io("read")(source),
        e => e,
    })
}

/// Makes temporary names unique within the process; the process id makes them unique
/// between processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name in the directory of `file_name` that nothing else uses: hidden, and short enough
/// for any file system (the target's name is cut to its first 200 bytes).
fn temp_name(file_name: &[u8]) -> OsString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = b".".to_vec();
    name.extend_from_slice(&file_name[..file_name.len().min(200)]);
    name.extend_from_slice(format!(".{}.{n}.tmp", std::process::id()).as_bytes());
    OsString::from_vec(name)
}

/// Puts `bytes` at `path` by way of a temporary file that `write` fills; on any error the
/// temporary file is removed and `path` is as it was.
fn replace_file(
    path: &Path,
    bytes: &[u8],
    write: impl FnOnce(&mut File, &[u8]) -> std::io::Result<()>,
) -> Result<(), SnapshotError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| SnapshotError::NotAFilePath(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = dir.join(temp_name(file_name.as_bytes()));
    let fail = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| SnapshotError::File {
            op,
            path: p,
            source,
        }
    };
    // `create_new`: never truncate a file someone else made under this name.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(fail("create", &temp))?;
    let filled = write(&mut f, bytes)
        .map_err(fail("write", &temp))
        .and_then(|()| f.sync_all().map_err(fail("sync", &temp)));
    drop(f);
    let renamed = filled.and_then(|()| std::fs::rename(&temp, path).map_err(fail("replace", path)));
    if let Err(e) = renamed {
        // Best effort: the error that matters is the one being returned.
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // Without this the rename may not survive a crash of the host.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("sync the directory", &dir))
}

#[cfg(test)]
mod tests;
