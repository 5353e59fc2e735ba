//! The snapshot state file: a container of versioned sections (see `state`) with a magic, a
//! format version, a CRC-64 over the whole and a size limit. The byte layout and the
//! versioning rules are in migration/DESIGN.md.
//!
//! The format version is the container's only; what a section holds is versioned by the
//! section itself. Decoding never panics and never trusts a length before checking it against
//! what is left: a file that is truncated, corrupt, too large, of a newer format or holding
//! two sections with one name is refused with a `SnapshotError` naming the problem.
//!
//! Decoding walks the structure before it checks the checksum, so that a truncated file says
//! where it ends (which section) and bytes appended after a complete file are reported as
//! such; everything else (names, architecture, duplicates) is judged only once the checksum
//! has said the bytes are the ones that were written.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::crc64::crc64;
use std::collections::HashSet;

use crate::state::{Section, SectionSet};

mod file;

pub use file::{read_snapshot_bytes, read_snapshot_file, write_snapshot_file};

/// The first bytes of every snapshot state file.
pub const MAGIC: [u8; 8] = *b"VMMSTATE";
/// The container format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The architecture tag of an aarch64 guest's snapshot.
pub const ARCH_AARCH64: u16 = 0xAA64;
/// The largest snapshot state file read or written: guest memory is in a file of its own,
/// so the state of vCPUs, the vGIC and devices stays far below this.
pub const MAX_SNAPSHOT_SIZE: usize = 64 << 20;
/// The longest section name, in bytes of UTF-8.
pub const MAX_SECTION_NAME: usize = 128;
/// The most sections a snapshot holds: a few per vCPU and per device, with room to spare,
/// and a bound on what a decoder allocates for a file of many empty sections.
pub const MAX_SECTIONS: usize = 16384;

/// Magic, format version, architecture, section count.
const HEADER_LEN: usize = 8 + 4 + 2 + 4;
/// Name length, version, data length: the fixed part of a section.
const SECTION_FIXED_LEN: usize = 2 + 2 + 4;
/// The CRC-64 at the end.
const CRC_LEN: usize = 8;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    File {
        /// What was being done: "create", "write", "read", ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading from a stream failed.
    #[error("cannot read the snapshot: {0}")]
    Read(#[source] std::io::Error),
    /// Writing to a stream failed.
    #[error("cannot write the snapshot: {0}")]
    Write(#[source] std::io::Error),
    /// The path has no file name to write to.
    #[error("{} is not a path to a file", .0.display())]
    NotAFilePath(PathBuf),
    /// The file is larger than any snapshot this build writes.
    #[error("the snapshot is larger than the limit of {limit} bytes")]
    TooLarge {
        /// `MAX_SNAPSHOT_SIZE`.
        limit: usize,
    },
    /// The state to write does not fit in a snapshot.
    #[error("the state is {size} bytes, more than the snapshot limit of {limit} bytes")]
    StateTooLarge {
        /// What the file would be.
        size: u64,
        /// `MAX_SNAPSHOT_SIZE`.
        limit: usize,
    },
    /// The file does not start with `MAGIC`.
    #[error("not a snapshot state file: it starts with \"{found}\" instead of \"VMMSTATE\"")]
    BadMagic {
        /// The first bytes, escaped.
        found: String,
    },
    /// A container format version no release wrote.
    #[error("the snapshot has format version {0}, which no release wrote")]
    BadFormatVersion(u32),
    /// Written by a newer build.
    #[error(
        "the snapshot has format version {found}, newer than this build reads (up to version {known})"
    )]
    FormatTooNew {
        /// The file's format version.
        found: u32,
        /// `FORMAT_VERSION`.
        known: u32,
    },
    /// The snapshot is of a guest of another architecture.
    #[error(
        "the snapshot is of a guest of architecture {found:#06x}; this build restores aarch64 guests ({ARCH_AARCH64:#06x})"
    )]
    WrongArch {
        /// The file's architecture tag.
        found: u16,
    },
    /// The file ends before its structure does.
    #[error(
        "the snapshot is truncated: {part} needs {needed} bytes at offset {offset}, but only {left} are left"
    )]
    Truncated {
        /// Which part of the file: the header, a section's name or data, the checksum.
        part: String,
        /// Where that part starts.
        offset: usize,
        /// Its length.
        needed: usize,
        /// What the file has from `offset` on.
        left: usize,
    },
    /// The checksum does not match the bytes.
    #[error(
        "checksum mismatch: the file is corrupt (it stores {stored:#018x}, its bytes give {computed:#018x})"
    )]
    ChecksumMismatch {
        /// The CRC-64 in the file.
        stored: u64,
        /// The CRC-64 of the bytes before it.
        computed: u64,
    },
    /// More sections than any snapshot holds.
    #[error("the snapshot has {0} sections, more than the limit of {MAX_SECTIONS}")]
    TooManySections(usize),
    /// Bytes after a complete, intact snapshot.
    #[error("the snapshot has {0} bytes of trailing garbage after its checksum")]
    TrailingBytes(usize),
    /// A section name that is empty or longer than `MAX_SECTION_NAME`.
    #[error(
        "section {index} has a name of {len} bytes (\"{name}\"); names are 1 to {MAX_SECTION_NAME} bytes"
    )]
    BadNameLength {
        /// Its position, from 1.
        index: usize,
        /// The name's length in bytes.
        len: usize,
        /// The name's start, lossily decoded.
        name: String,
    },
    /// A section name that is not UTF-8.
    #[error("section {index} has a name that is not UTF-8 (\"{name}\")")]
    NameNotUtf8 {
        /// Its position, from 1.
        index: usize,
        /// The name, lossily decoded.
        name: String,
    },
    /// Two sections with one name.
    #[error("the snapshot has section {name} twice (sections {first} and {second})")]
    DuplicateSection {
        /// The name.
        name: String,
        /// The first one's position, from 1.
        first: usize,
        /// The second one's position.
        second: usize,
    },
}

/// What `vmm snapshot inspect` shows of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    /// The container format version.
    pub format_version: u32,
    /// The file's size in bytes.
    pub size: u64,
    /// The CRC-64 stored at the end (verified).
    pub checksum: u64,
    /// Every section, in file order.
    pub sections: Vec<SectionSummary>,
}

/// One section of a `SnapshotSummary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionSummary {
    /// The section's name.
    pub name: String,
    /// The version of its layout.
    pub version: u16,
    /// Its data's size in bytes.
    pub size: u64,
}

/// Encodes `sections` as a snapshot file; refuses names that would not decode and state
/// over the size limit, so that nothing written is unreadable.
pub fn encode_snapshot(sections: &SectionSet) -> Result<Vec<u8>, SnapshotError> {
    let mut size = (HEADER_LEN + CRC_LEN) as u64;
    for (i, s) in sections.iter().enumerate() {
        let len = s.name.len();
        if len == 0 || len > MAX_SECTION_NAME {
            return Err(SnapshotError::BadNameLength {
                index: i + 1,
                len,
                name: name_start(s.name.as_bytes()),
            });
        }
        size += (SECTION_FIXED_LEN + len) as u64 + s.data.len() as u64;
    }
    if sections.len() > MAX_SECTIONS {
        return Err(SnapshotError::TooManySections(sections.len()));
    }
    if size > MAX_SNAPSHOT_SIZE as u64 {
        return Err(SnapshotError::StateTooLarge {
            size,
            limit: MAX_SNAPSHOT_SIZE,
        });
    }
    // Below the size limit, every count and length fits its field.
    let fits = "the size limit keeps every count and length within its field";
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_AARCH64.to_le_bytes());
    let count = u32::try_from(sections.len()).expect(fits);
    out.extend_from_slice(&count.to_le_bytes());
    for s in sections.iter() {
        let name_len = u16::try_from(s.name.len()).expect(fits);
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(s.name.as_bytes());
        out.extend_from_slice(&s.version.to_le_bytes());
        let data_len = u32::try_from(s.data.len()).expect(fits);
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&s.data);
    }
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Writes `sections` as a snapshot file to `w`.
pub fn write_snapshot(w: &mut impl Write, sections: &SectionSet) -> Result<(), SnapshotError> {
    let bytes = encode_snapshot(sections)?;
    w.write_all(&bytes).map_err(SnapshotError::Write)?;
    w.flush().map_err(SnapshotError::Write)
}

/// Reads a snapshot file from `r`: at most `MAX_SNAPSHOT_SIZE + 1` bytes are read, so a
/// stream without end is refused as too large.
pub fn read_snapshot(r: &mut impl Read) -> Result<SectionSet, SnapshotError> {
    decode_snapshot(&read_limited(r)?)
}

/// Decodes a snapshot file.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SectionSet, SnapshotError> {
    let parsed = parse(bytes)?;
    let sections = parsed
        .sections
        .into_iter()
        .map(|s| Section {
            name: s.name.to_string(),
            version: s.version,
            data: s.data.to_vec(),
        })
        .collect();
    Ok(SectionSet::from_unique(sections))
}

/// Checks a snapshot file as `decode_snapshot` does and describes it.
pub fn summarize(bytes: &[u8]) -> Result<SnapshotSummary, SnapshotError> {
    let parsed = parse(bytes)?;
    Ok(SnapshotSummary {
        format_version: parsed.format_version,
        size: bytes.len() as u64,
        checksum: parsed.checksum,
        sections: parsed
            .sections
            .iter()
            .map(|s| SectionSummary {
                name: s.name.to_string(),
                version: s.version,
                size: s.data.len() as u64,
            })
            .collect(),
    })
}

/// Reads all of `r`, refusing more than `MAX_SNAPSHOT_SIZE` bytes.
fn read_limited(r: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    r.take(MAX_SNAPSHOT_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(SnapshotError::Read)?;
    if bytes.len() > MAX_SNAPSHOT_SIZE {
        return Err(SnapshotError::TooLarge {
            limit: MAX_SNAPSHOT_SIZE,
        });
    }
    Ok(bytes)
}

/// A checked file: its sections borrow the bytes.
struct Parsed<'a> {
    format_version: u32,
    checksum: u64,
    sections: Vec<RawSection<'a>>,
}

struct RawSection<'a> {
    /// Position in the file, from 1.
    index: usize,
    name: &'a str,
    version: u16,
    data: &'a [u8],
}

/// A section before its name is known to be valid.
struct UncheckedSection<'a> {
    name: &'a [u8],
    version: u16,
    data: &'a [u8],
}

/// Reads fields off the front of the file, refusing to read past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, part: impl FnOnce() -> String) -> Result<&'a [u8], SnapshotError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(SnapshotError::Truncated {
                part: part(),
                offset: self.pos,
                needed: n,
                left,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        part: impl FnOnce() -> String,
    ) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, part)?);
        Ok(a)
    }
}

/// The first bytes of a name, lossily decoded, for messages about names that are wrong.
fn name_start(name: &[u8]) -> String {
    const SHOWN: usize = 32;
    let shown = String::from_utf8_lossy(&name[..name.len().min(SHOWN)]).into_owned();
    if name.len() > SHOWN {
        format!("{shown}...")
    } else {
        shown
    }
}

/// Checks a whole file: header, structure, checksum, then names, architecture and duplicates.
fn parse(bytes: &[u8]) -> Result<Parsed<'_>, SnapshotError> {
    if bytes.len() > MAX_SNAPSHOT_SIZE {
        return Err(SnapshotError::TooLarge {
            limit: MAX_SNAPSHOT_SIZE,
        });
    }
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::BadMagic {
            found: bytes[..magic_len].escape_ascii().to_string(),
        });
    }
    let mut c = Cursor { bytes, pos: 0 };
    let header = || "the header".to_string();
    c.take(MAGIC.len(), header)?;
    // The version comes before anything else is read: a newer format may lay out the rest,
    // the checksum included, differently.
    let format_version = u32::from_le_bytes(c.array(header)?);
    if format_version == 0 {
        return Err(SnapshotError::BadFormatVersion(0));
    }
    if format_version > FORMAT_VERSION {
        return Err(SnapshotError::FormatTooNew {
            found: format_version,
            known: FORMAT_VERSION,
        });
    }
    let arch = u16::from_le_bytes(c.array(header)?);
    let count = u32::from_le_bytes(c.array(header)?) as usize;
    if count > MAX_SECTIONS {
        return Err(SnapshotError::TooManySections(count));
    }

    // Every section takes at least its fixed part, so a count the file cannot hold fails
    // at the first missing section, not in the allocator.
    let room = (bytes.len() - c.pos) / SECTION_FIXED_LEN;
    let mut raw = Vec::with_capacity(count.min(room));
    for i in 1..=count {
        let len =
            u16::from_le_bytes(c.array(|| format!("the name length of section {i} of {count}"))?)
                as usize;
        let name = c.take(len, || format!("the name of section {i} of {count}"))?;
        let shown = || name_start(name);
        let version =
            u16::from_le_bytes(c.array(|| format!("the version of section {}", shown()))?);
        let data_len = u32::from_le_bytes(
            c.array(|| format!("the data length of section {} (version {version})", shown()))?,
        ) as usize;
        let data = c.take(data_len, || {
            format!("the data of section {} (version {version})", shown())
        })?;
        raw.push(UncheckedSection {
            name,
            version,
            data,
        });
    }

    let end = c.pos;
    let stored = u64::from_le_bytes(c.array(|| "the checksum".to_string())?);
    let computed = crc64(&bytes[..end]);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch { stored, computed });
    }
    if c.pos < bytes.len() {
        // The checksum matches where the structure says it is: the bytes after it were
        // added to a complete file.
        return Err(SnapshotError::TrailingBytes(bytes.len() - c.pos));
    }

    if arch != ARCH_AARCH64 {
        return Err(SnapshotError::WrongArch { found: arch });
    }
    let mut sections: Vec<RawSection<'_>> = Vec::with_capacity(raw.len());
    let mut seen: HashSet<&str> = HashSet::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let index = i + 1;
        if s.name.is_empty() || s.name.len() > MAX_SECTION_NAME {
            return Err(SnapshotError::BadNameLength {
                index,
                len: s.name.len(),
                name: name_start(s.name),
            });
        }
        let name = std::str::from_utf8(s.name).map_err(|_| SnapshotError::NameNotUtf8 {
            index,
            name: name_start(s.name),
        })?;
        if !seen.insert(name) {
            let first = sections
                .iter()
                .find(|o| o.name == name)
                .map_or(0, |o| o.index);
            return Err(SnapshotError::DuplicateSection {
                name: name.to_string(),
                first,
                second: index,
            });
        }
        sections.push(RawSection {
            index,
            name,
            version: s.version,
            data: s.data,
        });
    }
    Ok(Parsed {
        format_version,
        checksum: stored,
        sections,
    })
}

#[cfg(test)]
mod tests;
