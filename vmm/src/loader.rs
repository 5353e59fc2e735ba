//! Puts the kernel Image and the initrd in guest memory straight from their files.
//!
//! Nothing is read into a heap buffer first: a raw Image and the initrd go from the file into
//! the guest mapping with one read each, and a gzip Image is inflated through a small bounce
//! buffer into place. Reading whole files into memory and then copying them doubled the
//! VMM's peak resident memory during boot (a 35 MiB kernel was resident twice).
//!
//! Placement is [`arch::image::plan`]'s: every sum checked, every piece inside guest memory.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arch::image::{self, BootPlan, HEADER_SIZE, ImageError, ImageHeader, MAX_KERNEL_SIZE};
use flate2::read::GzDecoder;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes inflated at a time from a gzip kernel.
const BOUNCE: usize = 64 << 10;

/// Errors loading the kernel or the initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Kernel or initrd.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel image or the placement is wrong.
    #[error("kernel {}: {source}", path.display())]
    Image {
        /// The kernel's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// Writing guest memory failed.
    #[error("writing the {what} into guest memory: {source}")]
    Memory {
        /// Kernel or initrd.
        what: &'static str,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

enum Body {
    /// A raw Image, positioned after its header, with its total length.
    Raw(File, u64),
    /// A gzip Image, inflated up to its header.
    Gzip(Box<GzDecoder<BufReader<File>>>),
}

/// An opened kernel whose header has been read and checked; the rest is still in the file.
pub struct KernelFile {
    path: PathBuf,
    header_bytes: [u8; HEADER_SIZE],
    header: ImageHeader,
    body: Body,
}

impl std::fmt::Debug for KernelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelFile")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// An opened initrd and its length.
#[derive(Debug)]
pub struct InitrdFile {
    path: PathBuf,
    file: File,
    len: u64,
}

fn read_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LoadError {
    let path = path.to_path_buf();
    move |source| LoadError::Read { what, path, source }
}

/// Reads until `buf` is full or the end of `r`; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl KernelFile {
    /// Opens a kernel Image, raw or gzip-compressed, and checks its header.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(read_err("kernel", path))?;
        Self::from_file(file, path)
    }

    /// Checks the header of an already open kernel; `path` names it in errors.
    pub fn from_file(mut file: File, path: &Path) -> Result<Self, LoadError> {
        let len = file.metadata().map_err(read_err("kernel", path))?.len();
        file.seek(SeekFrom::Start(0))
            .map_err(read_err("kernel", path))?;
        let image_err = |source| LoadError::Image {
            path: path.to_path_buf(),
            source,
        };
        let mut header_bytes = [0u8; HEADER_SIZE];
        let got = read_full(&mut file, &mut header_bytes).map_err(read_err("kernel", path))?;
        let body = if image::is_gzip(&header_bytes[..got]) {
            file.seek(SeekFrom::Start(0))
                .map_err(read_err("kernel", path))?;
            let f = file;
            let mut gz = Box::new(GzDecoder::new(BufReader::new(f)));
            let got = read_full(&mut gz, &mut header_bytes)
                .map_err(|e| image_err(ImageError::Gzip(e.to_string())))?;
            if got < HEADER_SIZE {
                return Err(image_err(ImageError::TooShort(got)));
            }
            Body::Gzip(gz)
        } else {
            if got < HEADER_SIZE {
                return Err(image_err(ImageError::TooShort(got)));
            }
            Body::Raw(file, len)
        };
        let header = image::parse_header(&header_bytes).map_err(image_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            header_bytes,
            header,
            body,
        })
    }

    /// Where the kernel, device tree and an initrd of `initrd_len` bytes go in
    /// `mem_base..mem_base + mem_size`, for as much of the image as is known before loading
    /// it: a raw Image's file length, a gzip one's header only (checked again once inflated).
    pub fn plan(
        &self,
        mem_base: u64,
        mem_size: u64,
        initrd_len: Option<u64>,
    ) -> Result<BootPlan, LoadError> {
        let len = match self.body {
            Body::Raw(_, len) => len,
            Body::Gzip(_) => 0,
        };
        image::plan(mem_base, mem_size, self.header, len, initrd_len).map_err(|source| {
            LoadError::Image {
                path: self.path.clone(),
                source,
            }
        })
    }
}

impl InitrdFile {
    /// Opens an initrd.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(read_err("initrd", path))?;
        Self::from_file(file, path)
    }

    /// Measures an already open initrd; `path` names it in errors.
    pub fn from_file(mut file: File, path: &Path) -> Result<Self, LoadError> {
        let len = file.metadata().map_err(read_err("initrd", path))?.len();
        file.seek(SeekFrom::Start(0))
            .map_err(read_err("initrd", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// The initrd's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the initrd is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Loads the kernel and the initrd into `mem` (which spans `mem_base..mem_base + mem_size`)
/// and returns where everything went, the device tree's place included. Nothing is written
/// outside the places the plan gives.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    mem_base: u64,
    mem_size: u64,
    kernel: KernelFile,
    initrd: Option<InitrdFile>,
) -> Result<BootPlan, LoadError> {
    let initrd_len = initrd.as_ref().map(InitrdFile::len);
    // For a raw Image this is the final plan; for a gzip one, a first check.
    let first = kernel.plan(mem_base, mem_size, initrd_len)?;
    let KernelFile {
        path,
        header_bytes,
        header,
        body,
    } = kernel;
    let image_err = |source| LoadError::Image {
        path: path.clone(),
        source,
    };
    let mem_err = |what| move |source| LoadError::Memory { what, source };
    let at = first.kernel;
    let plan = match body {
        Body::Raw(mut file, len) => {
            mem.write_slice(&header_bytes, GuestAddress(at))
                .map_err(mem_err("kernel"))?;
            let rest = usize::try_from(len - HEADER_SIZE as u64)
                .map_err(|_| image_err(ImageError::TooLarge))?;
            // The plan put `at..at + len` inside guest memory; a file that shrank since it
            // was measured fails here with a short read.
            mem.read_exact_volatile_from(GuestAddress(at + HEADER_SIZE as u64), &mut file, rest)
                .map_err(mem_err("kernel"))?;
            first
        }
        Body::Gzip(mut gz) => {
            // The inflated length is known only at the end: inflate into the room that guest
            // memory has after the load address (at most MAX_KERNEL_SIZE), then place the
            // rest behind what it turned out to be.
            let mem_end = mem_base.saturating_add(mem_size);
            let room = mem_end.saturating_sub(at).min(MAX_KERNEL_SIZE);
            if room < HEADER_SIZE as u64 {
                return Err(image_err(too_small(mem_size)));
            }
            mem.write_slice(&header_bytes, GuestAddress(at))
                .map_err(mem_err("kernel"))?;
            let mut len = HEADER_SIZE as u64;
            let mut buf = vec![0u8; BOUNCE];
            loop {
                let n = read_full(&mut gz, &mut buf)
                    .map_err(|e| image_err(ImageError::Gzip(e.to_string())))?;
                if n == 0 {
                    break;
                }
                if len + n as u64 > room {
                    return Err(image_err(if room == MAX_KERNEL_SIZE {
                        ImageError::TooLarge
                    } else {
                        too_small(mem_size)
                    }));
                }
                mem.write_slice(&buf[..n], GuestAddress(at + len))
                    .map_err(mem_err("kernel"))?;
                len += n as u64;
            }
            image::plan(mem_base, mem_size, header, len, initrd_len).map_err(image_err)?
        }
    };
    if let (Some(mut initrd), Some((addr, len))) = (initrd, plan.initrd) {
        let len = usize::try_from(len).map_err(|_| LoadError::Read {
            what: "initrd",
            path: initrd.path.clone(),
            source: io::Error::other("too large for this host"),
        })?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut initrd.file, len)
            .map_err(mem_err("initrd"))?;
    }
    Ok(plan)
}

/// The error for a gzip kernel that inflates past the end of guest memory: its real size is
/// unknown, but it needs more than there is.
fn too_small(mem_size: u64) -> ImageError {
    ImageError::MemoryTooSmall {
        mem_mib: mem_size >> 20,
        need_mib: (mem_size >> 20) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::GuestRam;
    use std::io::Write;

    const BASE: u64 = 0x8000_0000;
    const MIB: u64 = 1 << 20;

    fn image(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        v[8..16].copy_from_slice(&text_offset.to_le_bytes());
        v[16..24].copy_from_slice(&image_size.to_le_bytes());
        v[56..60].copy_from_slice(b"ARM\x64");
        v
    }

    /// A file holding `data`, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file_with(data: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmm-loader-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        File::create(&p).unwrap().write_all(data).unwrap();
        TempFile(p)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn mem(size: u64) -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(BASE), size as usize)]).unwrap()
    }

    fn read_back(m: &GuestRam, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn raw_and_gzip_kernels_land_where_the_plan_says() {
        let k = image(0x8_0000, 3 * MIB, 300_000);
        let initrd = vec![0x5a; 12_345];
        let i = file_with(&initrd);
        for data in [k.clone(), gzip(&k)] {
            let f = file_with(&data);
            let m = mem(16 * MIB);
            let kf = KernelFile::open(f.path()).unwrap();
            let p = load(
                &m,
                BASE,
                16 * MIB,
                kf,
                Some(InitrdFile::open(i.path()).unwrap()),
            )
            .unwrap();
            assert_eq!(p.kernel, BASE + 0x8_0000);
            assert_eq!(p.kernel_end, p.kernel + 3 * MIB);
            assert_eq!(read_back(&m, p.kernel, k.len()), k);
            let (at, len) = p.initrd.unwrap();
            assert_eq!(len, initrd.len() as u64);
            assert_eq!(read_back(&m, at, initrd.len()), initrd);
        }
    }

    #[test]
    fn bad_kernels_are_named_and_nothing_is_written() {
        let m = mem(16 * MIB);
        let short = file_with(b"ARM");
        assert!(matches!(
            KernelFile::open(short.path()),
            Err(LoadError::Image {
                source: ImageError::TooShort(3),
                ..
            })
        ));
        let not_gz = file_with(&[0x1f, 0x8b, 0, 0, 0, 0]);
        assert!(matches!(
            KernelFile::open(not_gz.path()),
            Err(LoadError::Image {
                source: ImageError::Gzip(_),
                ..
            })
        ));
        // A header whose offsets wrap: refused before a byte is written.
        let huge = file_with(&image(!0xfff, 1, 4096));
        let kf = KernelFile::open(huge.path()).unwrap();
        let e = load(&m, BASE, 16 * MIB, kf, None).unwrap_err();
        assert!(matches!(
            e,
            LoadError::Image {
                source: ImageError::HeaderOverflow { .. },
                ..
            }
        ));
        assert!(e.to_string().contains("text_offset"), "{e}");
        assert!(read_back(&m, BASE, 4096).iter().all(|&b| b == 0));
        let missing = KernelFile::open(Path::new("/nonexistent/Image")).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("cannot read kernel /nonexistent/Image")
        );
    }

    #[test]
    fn kernels_and_initrds_too_big_for_memory_are_refused() {
        let m = mem(8 * MIB);
        // A raw image that needs 7 MiB + FDT in 8 MiB.
        let big = file_with(&image(0, 7 * MIB, 4096));
        let kf = KernelFile::open(big.path()).unwrap();
        assert!(matches!(
            load(&m, BASE, 8 * MIB, kf, None),
            Err(LoadError::Image {
                source: ImageError::MemoryTooSmall { .. },
                ..
            })
        ));
        // A gzip image that inflates past the end of memory (image_size says less).
        let k = image(0, 4096, 9 * MIB as usize);
        let gz = file_with(&gzip(&k));
        let kf = KernelFile::open(gz.path()).unwrap();
        assert!(matches!(
            load(&m, BASE, 8 * MIB, kf, None),
            Err(LoadError::Image {
                source: ImageError::MemoryTooSmall { .. },
                ..
            })
        ));
        let ok = file_with(&image(0, MIB, 4096));
        let i = file_with(&vec![1u8; 5 * MIB as usize]);
        let kf = KernelFile::open(ok.path()).unwrap();
        assert!(matches!(
            load(
                &m,
                BASE,
                8 * MIB,
                kf,
                Some(InitrdFile::open(i.path()).unwrap())
            ),
            Err(LoadError::Image {
                source: ImageError::InitrdTooLarge { .. },
                ..
            })
        ));
    }
}
