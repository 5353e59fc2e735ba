//! Binding a Unix socket path the way a long-running server should: a stale socket file (one
//! nobody accepts on) is replaced, while a live socket or any other file is left alone and
//! refused.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a socket path cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A live process already accepts on it.
    #[error("{0} is in use: another process is accepting connections on it")]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// bind(2) failed.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `path` could be bound now, without binding it.
pub fn check_free(path: &Path) -> Result<(), BindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
    }
    Ok(())
}

/// Binds `path`, replacing a stale socket file.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    check_free(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| BindError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-uds-{tag}-{}", std::process::id()))
    }

    #[test]
    fn live_sockets_and_files_are_refused_and_stale_ones_replaced() {
        let live = path("live");
        let _l = bind(&live).unwrap();
        assert!(matches!(bind(&live), Err(BindError::InUse(_))));
        assert!(matches!(check_free(&live), Err(BindError::InUse(_))));
        let stale = path("stale");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(check_free(&stale).is_ok());
        assert!(bind(&stale).is_ok());
        let file = path("file");
        std::fs::write(&file, b"x").unwrap();
        let e = bind(&file).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        let missing_dir = Path::new("/nonexistent-dir/v.sock");
        assert!(matches!(bind(missing_dir), Err(BindError::Io { .. })));
        for p in [live, stale, file] {
            let _ = std::fs::remove_file(p);
        }
    }
}
