//! A deterministic `newc` cpio writer for initramfs images: sorted entries, owner root,
//! mtime 0, so the same inputs give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A folder.
    Dir,
    /// A regular file with its permission bits.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// An in-memory archive keyed by path (without a leading slash).
#[derive(Debug, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes.entry(parent.clone()).or_insert(Node::Dir);
        }
        self.nodes.insert(path, node);
    }

    /// Adds a folder.
    pub fn dir(&mut self, path: &str) {
        self.add(path, Node::Dir);
    }

    /// Adds a file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.add(path, Node::File { mode, data });
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Node::Symlink(target.to_string()));
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.add(path, Node::CharDev(major, minor));
    }

    /// Whether a path is present.
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path.trim_start_matches('/'))
    }

    /// Writes the archive, trailer included.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040755, &[], (0, 0)),
                Node::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Node::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Node::CharDev(ma, mi) => (0o020600, &[], (*ma, *mi)),
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            entry(out, ino, mode, nlink, rdev, path, data)?;
        }
        entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
    }

    /// The archive as bytes.
    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn pad4<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

fn entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad4(out, data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_output_is_deterministic() {
        let mut a = Archive::new();
        a.file("/bin/busybox", 0o755, b"elf".to_vec());
        a.symlink("lib/ld.so", "x/ld.so");
        a.char_dev("dev/console", 5, 1);
        assert!(a.contains("bin"));
        assert!(a.contains("/lib"));
        let bytes = a.to_bytes();
        assert_eq!(bytes, a.to_bytes());
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/busybox\0"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn headers_carry_size_mode_and_device() {
        let mut a = Archive::new();
        a.char_dev("console", 5, 1);
        let bytes = a.to_bytes();
        let h = std::str::from_utf8(&bytes[..110]).unwrap();
        let field = |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
        assert_eq!(field(1), 0o020600);
        assert_eq!(field(6), 0, "filesize");
        assert_eq!((field(9), field(10)), (5, 1), "rdev");
        assert_eq!(field(11), "console".len() as u32 + 1);
    }
}
