//! Installs what the tasks need, idempotently: the Rust target, the Debian arm64 package
//! architecture, the backports apt source, QEMU and a few host tools.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::sh::{cmd, is_root, on_path, output, run};

/// The static aarch64 target every cross build uses.
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-musl";
/// The oldest QEMU verified to run Arm64 KVM hosts (../shared/ENVIRONMENT.md).
const MIN_QEMU_MAJOR: u32 = 10;
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const OUR_SOURCE_STEM: &str = "vmm-backports";

/// Adds the aarch64 rust target and clippy when missing.
pub fn ensure_rust() -> Result<()> {
    let targets = output(&mut cmd("rustup", ["target", "list", "--installed"]))
        .context("rustup is needed to add the aarch64 target")?;
    if !targets.lines().any(|l| l.trim() == AARCH64_TARGET) {
        eprintln!("xtask: adding rust target {AARCH64_TARGET}");
        run(&mut cmd("rustup", ["target", "add", AARCH64_TARGET]))?;
    }
    let components = output(&mut cmd("rustup", ["component", "list", "--installed"]))?;
    if !components.lines().any(|l| l.starts_with("clippy")) {
        eprintln!("xtask: adding rustup component clippy");
        run(&mut cmd("rustup", ["component", "add", "clippy"]))?;
    }
    Ok(())
}

/// The codename of this Debian release, from /etc/os-release.
fn debian_codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_string())
    };
    if field("ID=").as_deref() != Some("debian") {
        bail!(
            "emulated hosts are built from Debian packages and need a Debian machine \
             (apt-get, dpkg); this one is not Debian"
        );
    }
    field("VERSION_CODENAME=").context("/etc/os-release names no VERSION_CODENAME")
}

fn need_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what}\nRun `cargo xtask` as root once so it can install this, or install it yourself."
        );
    }
    Ok(())
}

/// The suite that carries QEMU 10 and the 6.12 cloud kernel.
pub fn backports_suite() -> Result<String> {
    Ok(format!("{}-backports", debian_codename()?))
}

fn apt_update() -> Result<()> {
    eprintln!("xtask: apt-get update");
    run(&mut cmd("apt-get", ["update", "-qq"]))
}

/// Derives a backports entry from the existing Debian apt source: same URIs and keyring,
/// another suite. Returns the file name and its contents.
pub fn derive_backports_source(
    sources: &[(String, String)],
    codename: &str,
) -> Option<(String, String)> {
    let suite = format!("{codename}-backports");
    for (name, text) in sources {
        if name.ends_with(".sources") {
            for para in text.split("\n\n") {
                let fields: Vec<&str> = para.lines().filter(|l| !l.starts_with('#')).collect();
                let suites = fields.iter().find_map(|l| l.strip_prefix("Suites:"));
                let is_main = suites.is_some_and(|s| s.split_whitespace().any(|w| w == codename));
                if !is_main || fields.iter().any(|l| l.starts_with("Enabled: no")) {
                    continue;
                }
                let body: Vec<String> = fields
                    .iter()
                    .map(|l| {
                        if l.starts_with("Suites:") {
                            format!("Suites: {suite}")
                        } else {
                            (*l).to_string()
                        }
                    })
                    .collect();
                return Some((format!("{OUR_SOURCE_STEM}.sources"), body.join("\n") + "\n"));
            }
        } else {
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                // deb [options] URI SUITE COMPONENTS...
                let Some(first) = words.first() else { continue };
                if *first != "deb" {
                    continue;
                }
                let mut i = 1;
                if words.get(i).is_some_and(|w| w.starts_with('[')) {
                    while i < words.len() && !words[i].ends_with(']') {
                        i += 1;
                    }
                    i += 1;
                }
                if words.get(i + 1) == Some(&codename) {
                    let mut w: Vec<String> = words.iter().map(|s| (*s).to_string()).collect();
                    w[i + 1].clone_from(&suite);
                    return Some((format!("{OUR_SOURCE_STEM}.list"), w.join(" ") + "\n"));
                }
            }
        }
    }
    None
}

fn read_sources() -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        out.push(("sources.list".to_string(), text));
    }
    if let Ok(dir) = fs::read_dir(SOURCES_DIR) {
        let mut names: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".sources") || name.ends_with(".list") {
                out.push((name, fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    Ok(out)
}

fn backports_configured(sources: &[(String, String)], suite: &str) -> bool {
    sources.iter().any(|(_, text)| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.split_whitespace().any(|w| w == suite))
    })
}

/// Makes Debian arm64 packages and the backports suite downloadable.
pub fn ensure_apt() -> Result<()> {
    let codename = debian_codename()?;
    let suite = format!("{codename}-backports");
    let mut changed = false;

    let sources = read_sources()?;
    if !backports_configured(&sources, &suite) {
        need_root(&format!("The apt source for {suite} is missing."))?;
        let (name, text) = derive_backports_source(&sources, &codename).with_context(|| {
            format!("no apt source for Debian {codename} found to derive {suite} from")
        })?;
        let path = Path::new(SOURCES_DIR).join(name);
        eprintln!("xtask: adding apt source {}", path.display());
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        changed = true;
    }

    let foreign = output(&mut cmd("dpkg", ["--print-foreign-architectures"]))?;
    if !foreign.lines().any(|l| l.trim() == "arm64") {
        need_root(
            "The arm64 package architecture is not enabled (dpkg --add-architecture arm64).",
        )?;
        run(&mut cmd("dpkg", ["--add-architecture", "arm64"]))?;
        changed = true;
    }

    // The lists may also be missing on a machine that was set up but never updated.
    let probe =
        output(&mut cmd("apt-cache", ["madison", "busybox-static:arm64"])).unwrap_or_default();
    let kernel = output(&mut cmd(
        "apt-cache",
        ["madison", "linux-image-cloud-arm64:arm64"],
    ))
    .unwrap_or_default();
    if changed || probe.trim().is_empty() || !kernel.contains(&suite) {
        need_root("The apt package lists need refreshing (apt-get update).")?;
        apt_update()?;
    }
    Ok(())
}

fn qemu_major() -> Option<u32> {
    let text = output(&mut cmd("qemu-system-aarch64", ["--version"])).ok()?;
    let v = text.split("version ").nth(1)?;
    v.split('.').next()?.trim().parse().ok()
}

/// Installs QEMU from backports and the host tools the artifact recipes use.
pub fn ensure_host_packages() -> Result<()> {
    let suite = backports_suite()?;
    let qemu_ok = qemu_major().is_some_and(|m| m >= MIN_QEMU_MAJOR);
    let tools = [
        ("xz", "xz-utils"),
        ("mke2fs", "e2fsprogs"),
        ("dpkg-deb", "dpkg"),
    ];
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| {
            !on_path(bin)
                && !Path::new("/usr/sbin").join(bin).exists()
                && !Path::new("/sbin").join(bin).exists()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if qemu_ok && missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        let mut msg = String::new();
        if !qemu_ok {
            msg.push_str(&format!(
                "qemu-system-aarch64 {MIN_QEMU_MAJOR}.0 or newer is needed. Install it as root:\n  \
                 apt-get install -t {suite} qemu-system-arm\n(with an apt source for {suite}).\n"
            ));
        }
        if !missing.is_empty() {
            msg.push_str(&format!(
                "Also install: apt-get install {}\n",
                missing.join(" ")
            ));
        }
        bail!("{msg}");
    }
    ensure_apt()?;
    let mut c = cmd(
        "apt-get",
        ["install", "-y", "-qq", "--no-install-recommends"],
    );
    c.env("DEBIAN_FRONTEND", "noninteractive");
    if !qemu_ok {
        eprintln!("xtask: installing qemu-system-arm from {suite}");
        c.args(["-t", &suite, "qemu-system-arm"]);
    }
    c.args(&missing);
    run(&mut c)?;
    if qemu_major().is_none_or(|m| m < MIN_QEMU_MAJOR) {
        bail!(
            "qemu-system-arm from {suite} did not provide qemu-system-aarch64 {MIN_QEMU_MAJOR}.0 or newer"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n\
        Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
        Components: main\n";

    #[test]
    fn backports_entry_copies_uris_and_keyring() {
        let sources = vec![("debian.sources".to_string(), DEB822.to_string())];
        let (name, text) = derive_backports_source(&sources, "bookworm").unwrap();
        assert_eq!(name, "vmm-backports.sources");
        assert_eq!(
            text,
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /k.gpg\n"
        );
        assert!(!backports_configured(&sources, "bookworm-backports"));
        let with = vec![("x.sources".to_string(), text)];
        assert!(backports_configured(&with, "bookworm-backports"));
    }

    #[test]
    fn backports_entry_from_one_line_format() {
        let sources = vec![(
            "sources.list".to_string(),
            "# deb http://old bookworm main\ndeb [arch=amd64,arm64] http://m/debian bookworm main contrib\n"
                .to_string(),
        )];
        let (name, text) = derive_backports_source(&sources, "bookworm").unwrap();
        assert_eq!(name, "vmm-backports.list");
        assert_eq!(
            text,
            "deb [arch=amd64,arm64] http://m/debian bookworm-backports main contrib\n"
        );
    }

    #[test]
    fn no_entry_without_a_matching_suite() {
        let sources = vec![(
            "a.sources".to_string(),
            "Types: deb\nSuites: trixie\n".to_string(),
        )];
        assert!(derive_backports_source(&sources, "bookworm").is_none());
    }
}
