//! The artifact cache outside the clone: verified .deb files, and built artifacts published
//! atomically with a manifest of checksums.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Name of the checksum list inside each published artifact folder.
const MANIFEST: &str = "SHA256SUMS";

/// Hex SHA-256 of a byte string.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temporary folder removed on drop, so failures leave nothing half-written.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The cache root: `$VMM_CACHE_DIR`, else `$XDG_CACHE_HOME/vmm`, else `~/.cache/vmm`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache root.
    pub fn open() -> Result<Self> {
        let root = if let Some(d) = std::env::var_os("VMM_CACHE_DIR") {
            PathBuf::from(d)
        } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(d).join("vmm")
        } else {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home).join(".cache/vmm")
        };
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Self { root })
    }

    /// Where verified .deb files live.
    pub fn debs_dir(&self) -> Result<PathBuf> {
        let d = self.root.join("debs");
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// A fresh scratch folder inside the cache (same filesystem, so renames are atomic).
    pub fn scratch(&self, what: &str) -> Result<Scratch> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self
            .root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d)?;
        Ok(Scratch(d))
    }

    /// The published folder of an artifact if it exists and every checksum matches.
    /// A folder that fails verification is removed.
    pub fn lookup(&self, name: &str, key: &str) -> Result<Option<PathBuf>> {
        let dir = self
            .root
            .join("artifacts")
            .join(format!("{name}-{}", &key[..16]));
        if !dir.exists() {
            return Ok(None);
        }
        match verify_manifest(&dir) {
            Ok(()) => Ok(Some(dir)),
            Err(e) => {
                eprintln!("xtask: cached {name} is damaged ({e:#}); rebuilding it");
                fs::remove_dir_all(&dir)?;
                Ok(None)
            }
        }
    }

    /// Publishes a finished scratch folder as an artifact: writes its manifest, then renames it
    /// into place in one step.
    pub fn publish(&self, name: &str, key: &str, built: Scratch) -> Result<PathBuf> {
        write_manifest(built.path())?;
        let parent = self.root.join("artifacts");
        fs::create_dir_all(&parent)?;
        let dir = parent.join(format!("{name}-{}", &key[..16]));
        // Older builds of the same artifact are superseded.
        for e in fs::read_dir(&parent)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.strip_prefix(name)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|k| k.len() == 16)
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        fs::rename(built.path(), &dir)
            .with_context(|| format!("cannot publish {}", dir.display()))?;
        std::mem::forget(built);
        Ok(dir)
    }
}

fn write_manifest(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MANIFEST)
        .collect();
    names.sort();
    let mut text = String::new();
    for n in names {
        text.push_str(&format!("{}  {n}\n", sha256_file(&dir.join(&n))?));
    }
    fs::write(dir.join(MANIFEST), text)?;
    Ok(())
}

/// Checks every file listed in a folder's manifest.
pub fn verify_manifest(dir: &Path) -> Result<()> {
    let text = fs::read_to_string(dir.join(MANIFEST)).context("no manifest")?;
    if text.trim().is_empty() {
        bail!("empty manifest");
    }
    for line in text.lines() {
        let (sum, name) = line.split_once("  ").context("malformed manifest line")?;
        let actual = sha256_file(&dir.join(name))?;
        if actual != sum {
            bail!("checksum mismatch for {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_cache(tag: &str) -> Cache {
        let root = std::env::temp_dir().join(format!("xtask-cache-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        Cache { root }
    }

    #[test]
    fn published_artifacts_are_verified_on_lookup() {
        let cache = test_cache("verify");
        let key = sha256_bytes(b"recipe");
        assert!(cache.lookup("a", &key).unwrap().is_none());
        let s = cache.scratch("a").unwrap();
        fs::write(s.path().join("f"), b"data").unwrap();
        let dir = cache.publish("a", &key, s).unwrap();
        assert_eq!(cache.lookup("a", &key).unwrap(), Some(dir.clone()));
        fs::write(dir.join("f"), b"corrupted").unwrap();
        assert!(cache.lookup("a", &key).unwrap().is_none());
        assert!(!dir.exists(), "a damaged artifact is removed");
        fs::remove_dir_all(&cache.root).unwrap();
    }

    #[test]
    fn failed_builds_leave_no_scratch_behind() {
        let cache = test_cache("scratch");
        let path = {
            let s = cache.scratch("b").unwrap();
            fs::write(s.path().join("half"), b"x").unwrap();
            s.path().to_path_buf()
        };
        assert!(!path.exists());
        fs::remove_dir_all(&cache.root).unwrap();
    }
}
