//! Kernel modules for an initramfs: find them in an unpacked Debian kernel package, follow
//! their `depends=` lists, and decompress them (busybox insmod loads files as they are).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sh::{cmd, describe};

/// A module ready to load: its name and its uncompressed object.
#[derive(Debug)]
pub struct Module {
    pub name: String,
    pub object: Vec<u8>,
}

/// Module names use `_`; file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn index(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index(&p, out)?;
        } else if let Some(stem) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko.xz"))
        {
            out.insert(normalize(stem), p.clone());
        }
    }
    Ok(())
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let mut c = cmd("xz", ["-dc"]);
    c.arg(path);
    let out = c
        .output()
        .with_context(|| format!("cannot run `{}`", describe(&c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(&c),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The `depends=` list of a module object, read from its `.modinfo` section.
pub fn depends(object: &[u8]) -> Result<Vec<String>> {
    let elf = goblin::elf::Elf::parse(object).context("module is not an ELF object")?;
    for sh in &elf.section_headers {
        if elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo") {
            let start = sh.sh_offset as usize;
            let end = start + sh.sh_size as usize;
            let data = object.get(start..end).context("truncated .modinfo")?;
            for item in data.split(|b| *b == 0) {
                if let Some(list) = item.strip_prefix(b"depends=") {
                    let list = String::from_utf8_lossy(list);
                    return Ok(list
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(normalize)
                        .collect());
                }
            }
            return Ok(Vec::new());
        }
    }
    bail!("module has no .modinfo section")
}

/// The wanted modules and everything they depend on, dependencies first.
pub fn closure(modules_root: &Path, wanted: &[&str]) -> Result<Vec<Module>> {
    let mut files = BTreeMap::new();
    index(modules_root, &mut files)?;
    let mut done: Vec<Module> = Vec::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        done: &mut Vec<Module>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if done.iter().any(|m| m.name == name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("module dependency loop through {name}");
        }
        let path = files
            .get(name)
            .with_context(|| format!("kernel module {name} not found in the kernel package"))?;
        let object = decompress(path)?;
        stack.push(name.to_string());
        for d in depends(&object)? {
            visit(&d, files, done, stack)?;
        }
        stack.pop();
        done.push(Module {
            name: name.to_string(),
            object,
        });
        Ok(())
    }
    for w in wanted {
        visit(&normalize(w), &files, &mut done, &mut Vec::new())?;
    }
    Ok(done)
}
