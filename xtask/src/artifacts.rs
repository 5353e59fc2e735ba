//! The three test artifacts, built from Debian arm64 packages and cached with checksums:
//! the emulated host (kernel + initramfs), the guest (kernel + initramfs), and an ext4 rootfs.
//! Recipes (init scripts, module and package lists) live in `resources/`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::cache::{Cache, Scratch, sha256_bytes};
use crate::cpio::Archive;
use crate::debian::{self, Package};
use crate::kmod;
use crate::setup;
use crate::sh::{cmd, output, run};

/// Bump when a recipe changes in a way its inputs do not show.
const RECIPE_VERSION: &str = "1";
const HOST_INIT: &str = include_str!("../../resources/host/init");
const HOST_MODULES: &str = include_str!("../../resources/host/modules");
const HOST_PACKAGES: &str = include_str!("../../resources/host/packages");
const GUEST_INIT: &str = include_str!("../../resources/guest/init");
const GUEST_MODULES: &str = include_str!("../../resources/guest/modules");
const ROOTFS_MIB: u32 = 64;
const KERNEL_META: &str = "linux-image-cloud-arm64";

/// Paths of every built artifact.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The emulated host's kernel (an arm64 `Image`).
    pub host_kernel: PathBuf,
    /// The emulated host's base initramfs (gzip cpio).
    pub host_initrd: PathBuf,
    /// The guest's kernel (an arm64 `Image`).
    pub guest_kernel: PathBuf,
    /// The guest's initramfs (gzip cpio).
    pub guest_initrd: PathBuf,
    /// The guest's ext4 root filesystem.
    pub guest_rootfs: PathBuf,
    /// The guest files as an uncompressed cpio placing them under /guest in the host.
    pub guest_bundle: PathBuf,
}

/// Non-comment words of a recipe list.
fn list(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn key_of(parts: &[&str], pkgs: &[&Package]) -> String {
    let mut s = String::from(RECIPE_VERSION);
    for p in parts {
        s.push('\0');
        s.push_str(p);
    }
    for p in pkgs {
        s.push_str(&format!("\0{} {} {}", p.name, p.version, p.sha256));
    }
    sha256_bytes(s.as_bytes())
}

/// Resolves the versioned kernel image package behind the cloud metapackage.
fn kernel_package(suite: &str) -> Result<Package> {
    let text = output(&mut cmd(
        "apt-cache",
        ["-t", suite, "depends", &format!("{KERNEL_META}:arm64")],
    ))?;
    let name = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_end_matches(":arm64"))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{KERNEL_META} in {suite} depends on no linux-image package"))?
        .to_string();
    let mut pkgs = debian::show(std::slice::from_ref(&name), Some(suite))?;
    pkgs.retain(|p| p.name == name);
    pkgs.pop()
        .with_context(|| format!("no arm64 package {name} in {suite}"))
}

/// Builds whatever is missing and returns every artifact.
pub fn ensure(cache: &Cache) -> Result<Artifacts> {
    setup::ensure_apt()?;
    setup::ensure_host_packages()?;
    let suite = setup::backports_suite()?;
    let kernel = kernel_package(&suite)?;
    let user_roots = list(HOST_PACKAGES);
    let user = debian::resolve(&user_roots, None)?;
    let busybox = user
        .iter()
        .find(|p| p.name == "busybox-static")
        .context("busybox-static missing from the resolved packages")?;

    let mut host_pkgs: Vec<&Package> = vec![&kernel];
    host_pkgs.extend(user.iter());
    let host_key = key_of(&[HOST_INIT, HOST_MODULES, HOST_PACKAGES], &host_pkgs);
    let guest_key = key_of(&[GUEST_INIT, GUEST_MODULES], &[&kernel, busybox]);
    let rootfs_key = key_of(&[GUEST_INIT, &ROOTFS_MIB.to_string()], &[busybox]);
    let bundle_key = key_of(&[&guest_key, &rootfs_key], &[]);

    let host = match cache.lookup("host", &host_key)? {
        Some(d) => d,
        None => {
            let debs = debian::fetch(
                cache,
                &host_pkgs.iter().map(|p| (*p).clone()).collect::<Vec<_>>(),
            )?;
            let built = build_host(cache, &debs[0], &debs[1..], &user, &user_roots)?;
            cache.publish("host", &host_key, built)?
        }
    };
    let guest = match cache.lookup("guest", &guest_key)? {
        Some(d) => d,
        None => {
            let debs = debian::fetch(cache, &[kernel.clone(), busybox.clone()])?;
            let built = build_guest(cache, &debs[0], &debs[1])?;
            cache.publish("guest", &guest_key, built)?
        }
    };
    let rootfs = match cache.lookup("rootfs", &rootfs_key)? {
        Some(d) => d,
        None => {
            let debs = debian::fetch(cache, std::slice::from_ref(busybox))?;
            let built = build_rootfs(cache, &debs[0])?;
            cache.publish("rootfs", &rootfs_key, built)?
        }
    };
    let bundle = match cache.lookup("guest-bundle", &bundle_key)? {
        Some(d) => d,
        None => {
            let s = cache.scratch("bundle")?;
            let mut a = Archive::new();
            for (name, from) in [
                ("Image", guest.join("Image")),
                ("initrd.cpio.gz", guest.join("initrd.cpio.gz")),
                ("rootfs.ext4", rootfs.join("rootfs.ext4")),
            ] {
                a.file(&format!("guest/{name}"), 0o644, fs::read(&from)?);
            }
            let mut f = fs::File::create(s.path().join("guest.cpio"))?;
            a.write_to(&mut f)?;
            f.flush()?;
            cache.publish("guest-bundle", &bundle_key, s)?
        }
    };
    Ok(Artifacts {
        host_kernel: host.join("Image"),
        host_initrd: host.join("base.cpio.gz"),
        guest_kernel: guest.join("Image"),
        guest_initrd: guest.join("initrd.cpio.gz"),
        guest_rootfs: rootfs.join("rootfs.ext4"),
        guest_bundle: bundle.join("guest.cpio"),
    })
}

/// An extra initramfs part with Debian's arm64 QEMU, the side-by-side anchor for benchmarks.
pub fn ensure_qemu_anchor(cache: &Cache) -> Result<PathBuf> {
    let pkgs = debian::resolve(&["qemu-system-arm"], None)?;
    let refs: Vec<&Package> = pkgs.iter().collect();
    let key = key_of(&["qemu-anchor"], &refs);
    if let Some(d) = cache.lookup("qemu-anchor", &key)? {
        return Ok(d.join("qemu.cpio.gz"));
    }
    eprintln!("xtask: building the QEMU anchor for benchmarks");
    let debs = debian::fetch(cache, &pkgs)?;
    let out = cache.scratch("qemu-anchor")?;
    let work = cache.scratch("qemu-anchor-work")?;
    let tree = work.path().join("tree");
    for deb in &debs {
        debian::unpack(deb, &tree)?;
    }
    let mut a = Archive::new();
    add_tree_path(
        &mut a,
        &tree,
        "usr/bin/qemu-system-aarch64",
        &mut BTreeSet::new(),
    )?;
    fs::write(out.path().join("qemu.cpio.gz"), gzip(&a)?)?;
    Ok(cache
        .publish("qemu-anchor", &key, out)?
        .join("qemu.cpio.gz"))
}

/// The guest initramfs with `vmm-guest-tool` added as /bin/vmm-guest-tool: a second,
/// concatenated gzip cpio, which the kernel unpacks after the first. Written next to `tool`.
pub fn guest_initrd_with_tool(art: &Artifacts, tool: &Path) -> Result<PathBuf> {
    let mut initrd = fs::read(&art.guest_initrd)
        .with_context(|| format!("reading {}", art.guest_initrd.display()))?;
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    let mut a = Archive::new();
    a.file(
        "bin/vmm-guest-tool",
        0o755,
        fs::read(tool).with_context(|| format!("reading {}", tool.display()))?,
    );
    initrd.extend_from_slice(&gzip(&a)?);
    let out = tool.with_file_name("initrd-with-tool.cpio.gz");
    fs::write(&out, initrd).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

fn gzip(a: &Archive) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    a.write_to(&mut gz)?;
    Ok(gz.finish()?)
}

/// Unpacks the kernel package and returns (Image path, modules root).
fn unpack_kernel(deb: &Path, into: &Path) -> Result<(PathBuf, PathBuf)> {
    debian::unpack(deb, into)?;
    let boot = into.join("boot");
    let image = fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no /boot/vmlinuz-*")?;
    let head = fs::read(&image)?;
    // An arm64 Image carries "ARM\x64" at offset 56.
    if head.get(56..60) != Some(b"ARM\x64") {
        bail!("{} is not an uncompressed arm64 Image", image.display());
    }
    let modules = fs::read_dir(into.join("lib/modules"))?
        .flatten()
        .map(|e| e.path())
        .next()
        .context("the kernel package has no lib/modules")?;
    Ok((image, modules))
}

fn add_modules(a: &mut Archive, modules_root: &Path, recipe: &str) -> Result<()> {
    let mods = kmod::closure(modules_root, &list(recipe))?;
    let mut order = String::new();
    for m in mods {
        order.push_str(&m.name);
        order.push('\n');
        a.file(&format!("lib/modules/{}.ko", m.name), 0o644, m.object);
    }
    a.file("etc/modules-load", 0o644, order.into_bytes());
    Ok(())
}

fn base_layout(a: &mut Archive, init_path: &str, init: &str, busybox: &[u8]) {
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "mnt", "etc"] {
        a.dir(d);
    }
    a.char_dev("dev/console", 5, 1);
    a.file("bin/busybox", 0o755, busybox.to_vec());
    a.symlink("bin/sh", "busybox");
    a.file(init_path, 0o755, init.as_bytes().to_vec());
    a.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    a.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
}

fn read_busybox(deb: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let dir = scratch.join("busybox");
    debian::unpack(deb, &dir)?;
    fs::read(dir.join("bin/busybox")).context("busybox-static has no /bin/busybox")
}

fn build_guest(cache: &Cache, kernel_deb: &Path, busybox_deb: &Path) -> Result<Scratch> {
    eprintln!("xtask: building the guest kernel and initramfs");
    let out = cache.scratch("guest")?;
    let work = cache.scratch("guest-work")?;
    let (image, modules) = unpack_kernel(kernel_deb, &work.path().join("kernel"))?;
    fs::copy(&image, out.path().join("Image"))?;
    let mut a = Archive::new();
    base_layout(
        &mut a,
        "init",
        GUEST_INIT,
        &read_busybox(busybox_deb, work.path())?,
    );
    add_modules(&mut a, &modules, GUEST_MODULES)?;
    fs::write(out.path().join("initrd.cpio.gz"), gzip(&a)?)?;
    Ok(out)
}

fn build_rootfs(cache: &Cache, busybox_deb: &Path) -> Result<Scratch> {
    eprintln!("xtask: building the ext4 rootfs");
    let out = cache.scratch("rootfs")?;
    let work = cache.scratch("rootfs-work")?;
    let tree = work.path().join("tree");
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "mnt", "root",
    ] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::write(
        tree.join("bin/busybox"),
        read_busybox(busybox_deb, work.path())?,
    )?;
    fs::write(tree.join("sbin/init"), GUEST_INIT)?;
    fs::write(tree.join("etc/hostname"), "guest\n")?;
    use std::os::unix::fs::PermissionsExt;
    for f in ["bin/busybox", "sbin/init"] {
        fs::set_permissions(tree.join(f), fs::Permissions::from_mode(0o755))?;
    }
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh"))?;
    let img = out.path().join("rootfs.ext4");
    // Fixed UUID, hash seed and clock make the image reproducible.
    let mut c = cmd(
        "mke2fs",
        [
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "rootfs",
            "-U",
            "6b1b3a4e-5d0c-4c36-9a43-1f7d7a2c0001",
            "-E",
            "hash_seed=6b1b3a4e-5d0c-4c36-9a43-1f7d7a2c0002,root_owner=0:0",
            "-d",
        ],
    );
    c.arg(&tree).arg(&img).arg(format!("{ROOTFS_MIB}M"));
    c.env("E2FSPROGS_FAKE_TIME", "1")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin");
    run(&mut c)?;
    Ok(out)
}

/// Finds a library by soname in the unpacked package tree.
fn find_library(root: &Path, soname: &str) -> Option<String> {
    [
        "lib/aarch64-linux-gnu",
        "usr/lib/aarch64-linux-gnu",
        "lib",
        "usr/lib",
    ]
    .iter()
    .map(|d| format!("{d}/{soname}"))
    .find(|p| root.join(p).symlink_metadata().is_ok())
}

/// Adds a path from the unpacked tree, following symlinks within the tree.
fn add_tree_path(
    a: &mut Archive,
    root: &Path,
    rel: &str,
    seen: &mut BTreeSet<String>,
) -> Result<()> {
    let rel = rel.trim_start_matches('/').to_string();
    if !seen.insert(rel.clone()) {
        return Ok(());
    }
    let path = root.join(&rel);
    let meta = path
        .symlink_metadata()
        .with_context(|| format!("{rel} is not in the unpacked packages"))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&path)?.to_string_lossy().into_owned();
        a.symlink(&rel, &target);
        let resolved = if let Some(abs) = target.strip_prefix('/') {
            abs.to_string()
        } else {
            let parent = Path::new(&rel)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            normalize_rel(&format!("{parent}/{target}"))
        };
        return add_tree_path(a, root, &resolved, seen);
    }
    let data = fs::read(&path)?;
    use std::os::unix::fs::PermissionsExt;
    a.file(&rel, meta.permissions().mode() & 0o7777, data.clone());
    if let Ok(elf) = goblin::elf::Elf::parse(&data) {
        if let Some(interp) = elf.interpreter {
            add_tree_path(a, root, interp, seen)?;
        }
        for lib in elf.libraries {
            let found = find_library(root, lib).with_context(|| {
                format!("{rel} needs {lib}, which no unpacked package provides")
            })?;
            add_tree_path(a, root, &found, seen)?;
        }
    }
    Ok(())
}

fn normalize_rel(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Executables a package installs in bin and sbin folders.
fn executables(tree: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for d in ["bin", "sbin", "usr/bin", "usr/sbin"] {
        let Ok(rd) = fs::read_dir(tree.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            let meta = e.path().symlink_metadata()?;
            if meta.is_file() || meta.file_type().is_symlink() {
                out.push(format!("{d}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn build_host(
    cache: &Cache,
    kernel_deb: &Path,
    user_debs: &[PathBuf],
    user: &[Package],
    roots: &[&str],
) -> Result<Scratch> {
    eprintln!("xtask: building the emulated host's kernel and initramfs");
    let out = cache.scratch("host")?;
    let work = cache.scratch("host-work")?;
    let (image, modules) = unpack_kernel(kernel_deb, &work.path().join("kernel"))?;
    fs::copy(&image, out.path().join("Image"))?;

    let all = work.path().join("userland");
    for deb in user_debs {
        debian::unpack(deb, &all)?;
    }
    let busybox_deb = user_debs
        .iter()
        .zip(user)
        .find(|(_, p)| p.name == "busybox-static")
        .map(|(d, _)| d)
        .context("busybox-static not downloaded")?;
    let mut a = Archive::new();
    base_layout(
        &mut a,
        "init",
        HOST_INIT,
        &read_busybox(busybox_deb, work.path())?,
    );
    let mut seen = BTreeSet::new();
    for (deb, pkg) in user_debs.iter().zip(user) {
        if pkg.name == "busybox-static" || !roots.contains(&pkg.name.as_str()) {
            continue;
        }
        let own = work.path().join("pkg").join(&pkg.name);
        debian::unpack(deb, &own)?;
        for exe in executables(&own)? {
            add_tree_path(&mut a, &all, &exe, &mut seen)?;
        }
    }
    if a.contains("bin/bash") {
        a.symlink("bin/sh", "bash");
    }
    add_modules(&mut a, &modules, HOST_MODULES)?;
    fs::write(out.path().join("base.cpio.gz"), gzip(&a)?)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_lists_skip_comments() {
        assert_eq!(
            list("# c\nvirtio_net\n\n tun \n"),
            vec!["virtio_net", "tun"]
        );
        assert!(list(HOST_PACKAGES).contains(&"curl"));
        assert!(list(GUEST_MODULES).contains(&"virtio_mmio"));
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(
            normalize_rel("lib/./x/../aarch64-linux-gnu/ld.so"),
            "lib/aarch64-linux-gnu/ld.so"
        );
    }

    #[test]
    fn keys_change_with_any_input() {
        let p = Package {
            name: "a".into(),
            version: "1".into(),
            sha256: "s".into(),
        };
        let q = Package {
            name: "a".into(),
            version: "2".into(),
            sha256: "s".into(),
        };
        assert_ne!(key_of(&["x"], &[&p]), key_of(&["x"], &[&q]));
        assert_ne!(key_of(&["x"], &[&p]), key_of(&["y"], &[&p]));
        assert_eq!(key_of(&["x"], &[&p]), key_of(&["x"], &[&p]));
    }
}
