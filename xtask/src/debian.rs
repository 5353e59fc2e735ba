//! Debian arm64 packages: resolving dependencies, downloading into the cache with checksums
//! checked against the apt index, and unpacking.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cache::{Cache, sha256_file};
use crate::sh::{cmd, output, run};

/// One package as the apt index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl Package {
    /// The file name this package has in the cache.
    pub fn file_name(&self) -> String {
        format!(
            "{}_{}_arm64.deb",
            self.name,
            self.version.replace(':', "%3a")
        )
    }
}

/// Which apt release to prefer (`-t`), if not the default.
fn release_args(release: Option<&str>) -> Vec<String> {
    release
        .map(|r| vec!["-t".to_string(), r.to_string()])
        .unwrap_or_default()
}

/// The arm64 packages that `roots` need, themselves included, without recommends.
pub fn resolve(roots: &[&str], release: Option<&str>) -> Result<Vec<Package>> {
    let mut c = cmd("apt-cache", release_args(release));
    c.args([
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
    ]);
    c.args(roots.iter().map(|r| format!("{r}:arm64")));
    let text = output(&mut c)?;
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .filter_map(|l| l.strip_suffix(":arm64"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    show(&names, release)
}

/// Reads version and checksum of each named arm64 package from the apt index.
pub fn show(names: &[String], release: Option<&str>) -> Result<Vec<Package>> {
    let mut c = cmd("apt-cache", release_args(release));
    c.args(["show", "--no-all-versions"]);
    c.args(names.iter().map(|n| format!("{n}:arm64")));
    let pkgs = parse_index(&output(&mut c)?);
    for n in names {
        if !pkgs.iter().any(|p| &p.name == n) {
            bail!("the apt index has no arm64 package {n}; run apt-get update");
        }
    }
    Ok(pkgs)
}

/// Parses `apt-cache show` stanzas.
pub fn parse_index(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        if let (Some(name), Some(version), Some(sha256)) =
            (field("Package:"), field("Version:"), field("SHA256:"))
        {
            if field("Architecture:").as_deref() == Some("arm64")
                || field("Architecture:").as_deref() == Some("all")
            {
                out.push(Package {
                    name,
                    version,
                    sha256,
                });
            }
        }
    }
    out
}

/// Makes sure every package is in the cache with its index checksum, downloading what is
/// missing. Returns the cached paths, in the order given.
pub fn fetch(cache: &Cache, pkgs: &[Package]) -> Result<Vec<PathBuf>> {
    let dir = cache.debs_dir()?;
    let mut missing = Vec::new();
    for p in pkgs {
        let path = dir.join(p.file_name());
        if path.exists() && sha256_file(&path)? == p.sha256 {
            continue;
        }
        let _ = fs::remove_file(&path);
        missing.push(p);
    }
    if !missing.is_empty() {
        let tmp = cache.scratch("debs")?;
        eprintln!("xtask: downloading {} Debian arm64 packages", missing.len());
        let mut c = cmd(
            "apt-get",
            ["download", "-qq", "-o", "APT::Sandbox::User=root"],
        );
        c.args(
            missing
                .iter()
                .map(|p| format!("{}:arm64={}", p.name, p.version)),
        );
        c.current_dir(tmp.path());
        run(&mut c).context("downloading Debian packages failed")?;
        adopt_downloads(tmp.path(), &dir, &missing)?;
    }
    Ok(pkgs.iter().map(|p| dir.join(p.file_name())).collect())
}

/// Moves downloaded files whose checksum matches a wanted package into the cache. Any wanted
/// package left without a matching file is an error; nothing unchecked enters the cache.
pub fn adopt_downloads(from: &Path, to: &Path, wanted: &[&Package]) -> Result<()> {
    let mut by_sum: BTreeMap<&str, &Package> =
        wanted.iter().map(|p| (p.sha256.as_str(), *p)).collect();
    for entry in fs::read_dir(from)? {
        let path = entry?.path();
        let sum = sha256_file(&path)?;
        if let Some(p) = by_sum.remove(sum.as_str()) {
            let dest = to.join(p.file_name());
            fs::rename(&path, &dest)
                .with_context(|| format!("cannot move {} into the cache", path.display()))?;
        }
    }
    if !by_sum.is_empty() {
        let names: Vec<String> = by_sum
            .values()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        bail!(
            "download incomplete or checksum mismatch against the apt index for: {}",
            names.join(", ")
        );
    }
    Ok(())
}

/// Unpacks a .deb into a folder.
pub fn unpack(deb: &Path, into: &Path) -> Result<()> {
    fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    run(cmd("dpkg-deb", ["-x"]).arg(deb).arg(into))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_stanzas_give_name_version_checksum() {
        let text = "Package: curl\nVersion: 7.88.1-10+deb12u14\nArchitecture: arm64\n\
            SHA256: abc\nDescription: x\n\nPackage: foo\nVersion: 1\nArchitecture: amd64\nSHA256: d\n";
        assert_eq!(
            parse_index(text),
            vec![Package {
                name: "curl".into(),
                version: "7.88.1-10+deb12u14".into(),
                sha256: "abc".into()
            }]
        );
    }

    #[test]
    fn epoch_is_escaped_in_file_names() {
        let p = Package {
            name: "q".into(),
            version: "1:2.0".into(),
            sha256: String::new(),
        };
        assert_eq!(p.file_name(), "q_1%3a2.0_arm64.deb");
    }

    #[test]
    fn a_corrupt_download_never_enters_the_cache() {
        let tmp = std::env::temp_dir().join(format!("xtask-adopt-{}", std::process::id()));
        let (from, to) = (tmp.join("from"), tmp.join("to"));
        fs::create_dir_all(&from).unwrap();
        fs::create_dir_all(&to).unwrap();
        fs::write(from.join("good.deb"), b"good").unwrap();
        fs::write(from.join("bad.deb"), b"tampered").unwrap();
        let good = Package {
            name: "good".into(),
            version: "1".into(),
            sha256: crate::cache::sha256_bytes(b"good"),
        };
        let bad = Package {
            name: "bad".into(),
            version: "1".into(),
            sha256: crate::cache::sha256_bytes(b"bad"),
        };
        let err = adopt_downloads(&from, &to, &[&good, &bad]).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(err.to_string().contains("bad=1"), "{err}");
        assert!(to.join(good.file_name()).exists());
        assert!(!to.join(bad.file_name()).exists());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
