//! The arm64 Linux `Image` format: header checks, recognising gzip (the VMM's loader inflates
//! it), and where the kernel, device tree and initrd go in guest RAM (from the header's
//! `image_size`, not the file size).

use crate::layout::{FDT_MAX_SIZE, KERNEL_ALIGN};

/// The arm64 Image magic, "ARM\x64", at offset 56.
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";
/// Size of the arm64 Image header.
pub const HEADER_SIZE: usize = 64;
/// Largest decompressed kernel accepted, against gzip bombs.
pub const MAX_KERNEL_SIZE: u64 = 512 << 20;
const PAGE: u64 = 4096;

/// Errors about a kernel image or where it fits.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// The file is shorter than the header.
    #[error("kernel file is too short ({0} bytes) to be an arm64 Image")]
    TooShort(usize),
    /// The magic is missing.
    #[error("not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 56)")]
    BadMagic,
    /// gzip data could not be inflated.
    #[error("cannot decompress the gzip kernel: {0}")]
    Gzip(String),
    /// The inflated kernel is larger than accepted.
    #[error("decompressed kernel exceeds {} MiB", MAX_KERNEL_SIZE >> 20)]
    TooLarge,
    /// The kernel and device tree do not fit in guest memory.
    #[error(
        "guest memory of {mem_mib} MiB is too small for this kernel (it needs at least {need_mib} MiB)"
    )]
    MemoryTooSmall {
        /// Memory given.
        mem_mib: u64,
        /// Memory the kernel image and device tree need.
        need_mib: u64,
    },
    /// The header's offsets and sizes do not describe an image that fits any address space.
    #[error(
        "the Image header's text_offset ({text_offset:#x}) and image_size ({image_size:#x}) place the kernel beyond the end of the address space"
    )]
    HeaderOverflow {
        /// The header's text_offset.
        text_offset: u64,
        /// The header's image_size.
        image_size: u64,
    },
    /// text_offset is not 4 KiB aligned (Booting.rst requires it).
    #[error("the Image header's text_offset ({0:#x}) is not a multiple of 4 KiB")]
    MisalignedTextOffset(u64),
    /// The guest memory range itself wraps around the address space.
    #[error("guest memory at {base:#x} of {size:#x} bytes wraps around the address space")]
    MemoryRange {
        /// Base of guest memory.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// The initrd does not fit after the kernel and device tree.
    #[error(
        "initrd of {initrd_bytes} bytes does not fit in guest memory ({free_bytes} bytes free after the kernel and device tree)"
    )]
    InitrdTooLarge {
        /// Size of the initrd.
        initrd_bytes: u64,
        /// Room left for it.
        free_bytes: u64,
    },
}

/// The fields of the arm64 Image header that placement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from a 2 MiB-aligned base at which the image must be loaded.
    pub text_offset: u64,
    /// Memory the image occupies once running, BSS included (0 on very old kernels).
    pub image_size: u64,
}

/// Whether data starts with the gzip magic.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// Parses and checks the header.
pub fn parse_header(data: &[u8]) -> Result<ImageHeader, ImageError> {
    if data.len() < HEADER_SIZE {
        return Err(ImageError::TooShort(data.len()));
    }
    if &data[56..60] != IMAGE_MAGIC {
        return Err(ImageError::BadMagic);
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let image_size = u64_at(16);
    // Booting.rst: with image_size 0, text_offset is 0x80000 whatever the field says.
    let text_offset = if image_size == 0 { 0x8_0000 } else { u64_at(8) };
    if text_offset % PAGE != 0 {
        return Err(ImageError::MisalignedTextOffset(text_offset));
    }
    Ok(ImageHeader {
        text_offset,
        image_size,
    })
}

/// Where everything goes in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    /// Load address of the kernel (also the entry point).
    pub kernel: u64,
    /// End of the memory the kernel will occupy.
    pub kernel_end: u64,
    /// Address of the device tree.
    pub fdt: u64,
    /// Address and length of the initrd.
    pub initrd: Option<(u64, u64)>,
}

/// `v` rounded up to a multiple of `a` (a power of two), or `None` past the address space.
fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

/// Where the kernel's first byte goes for `header` in memory starting at `mem_base`: the
/// first 2 MiB boundary at or above it, plus `text_offset`. Checked, so a crafted header
/// is refused instead of wrapping around.
pub fn kernel_address(mem_base: u64, header: ImageHeader) -> Result<u64, ImageError> {
    align_up(mem_base, KERNEL_ALIGN)
        .and_then(|base| base.checked_add(header.text_offset))
        .ok_or(ImageError::HeaderOverflow {
            text_offset: header.text_offset,
            image_size: header.image_size,
        })
}

/// Places kernel, device tree and initrd in `mem_base..mem_base + mem_size`.
/// `file_len` is the (decompressed) image length. Every sum is checked: a header whose
/// fields would wrap, or a layout that leaves guest memory, is an error, so the pieces never
/// overlap each other and always lie inside guest memory.
pub fn plan(
    mem_base: u64,
    mem_size: u64,
    header: ImageHeader,
    file_len: u64,
    initrd_len: Option<u64>,
) -> Result<BootPlan, ImageError> {
    let mem_end = mem_base
        .checked_add(mem_size)
        .ok_or(ImageError::MemoryRange {
            base: mem_base,
            size: mem_size,
        })?;
    let overflow = ImageError::HeaderOverflow {
        text_offset: header.text_offset,
        image_size: header.image_size,
    };
    let kernel = kernel_address(mem_base, header)?;
    let kernel_end = kernel
        .checked_add(header.image_size.max(file_len))
        .ok_or_else(|| overflow.clone())?;
    let fdt = align_up(kernel_end, KERNEL_ALIGN);
    let after_fdt = fdt.and_then(|f| f.checked_add(FDT_MAX_SIZE));
    let (fdt, after_fdt) = match (fdt, after_fdt) {
        (Some(fdt), Some(end)) if end <= mem_end => (fdt, end),
        // Past guest memory, or past the address space: either way too big for this guest.
        (_, end) => {
            let need = end.map_or(u64::MAX, |e| e - mem_base);
            return Err(ImageError::MemoryTooSmall {
                mem_mib: mem_size >> 20,
                need_mib: need.div_ceil(1 << 20),
            });
        }
    };
    let initrd = match initrd_len {
        None => None,
        Some(len) => {
            // after_fdt <= mem_end, so aligning to a page cannot pass the address space.
            let start = align_up(after_fdt, PAGE).ok_or(overflow)?;
            let free = mem_end.saturating_sub(start);
            if len > free {
                return Err(ImageError::InitrdTooLarge {
                    initrd_bytes: len,
                    free_bytes: free,
                });
            }
            Some((start, len))
        }
    };
    Ok(BootPlan {
        kernel,
        kernel_end,
        fdt,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[56..60].copy_from_slice(IMAGE_MAGIC);
        h
    }

    #[test]
    fn header_fields_are_read() {
        let h = parse_header(&header(0, 0x240_0000)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x240_0000
            }
        );
        // Old kernels: image_size 0 means text_offset 0x80000.
        assert_eq!(
            parse_header(&header(0x1234, 0)).unwrap().text_offset,
            0x8_0000
        );
    }

    #[test]
    fn non_images_are_rejected_by_name() {
        assert_eq!(parse_header(b"short"), Err(ImageError::TooShort(5)));
        let mut h = header(0, 1);
        h[56] = b'X';
        assert_eq!(parse_header(&h), Err(ImageError::BadMagic));
        assert!(
            ImageError::BadMagic
                .to_string()
                .contains("not an arm64 Linux Image")
        );
    }

    #[test]
    fn gzip_is_recognised_by_its_magic() {
        assert!(is_gzip(&[0x1f, 0x8b, 8, 0]));
        assert!(!is_gzip(&header(0, 0x1000)));
        assert!(!is_gzip(&[0x1f]));
    }

    #[test]
    fn placement_uses_image_size_not_file_size() {
        let mb = 1u64 << 20;
        let h = ImageHeader {
            text_offset: 0,
            image_size: 37 * mb,
        };
        // A 30 MiB file whose image occupies 37 MiB: the FDT goes after 37 MiB, rounded to 2 MiB.
        let p = plan(0x8000_0000, 128 * mb, h, 30 * mb, Some(mb)).unwrap();
        assert_eq!(p.kernel, 0x8000_0000);
        assert_eq!(p.kernel_end, 0x8000_0000 + 37 * mb);
        assert_eq!(p.fdt, 0x8000_0000 + 38 * mb);
        assert_eq!(p.initrd, Some((0x8000_0000 + 40 * mb, mb)));
    }

    #[test]
    fn too_little_memory_is_named() {
        let mb = 1u64 << 20;
        let h = ImageHeader {
            text_offset: 0,
            image_size: 37 * mb,
        };
        assert_eq!(
            plan(0x8000_0000, 32 * mb, h, 30 * mb, None),
            Err(ImageError::MemoryTooSmall {
                mem_mib: 32,
                need_mib: 40
            })
        );
        let e = plan(0x8000_0000, 64 * mb, h, 30 * mb, Some(100 * mb)).unwrap_err();
        assert_eq!(
            e,
            ImageError::InitrdTooLarge {
                initrd_bytes: 100 * mb,
                free_bytes: 24 * mb
            }
        );
        assert!(e.to_string().contains("initrd"));
    }

    #[test]
    fn crafted_headers_are_refused_not_wrapped() {
        // Regression: these sums overflowed (a panic in debug builds, a wrapped placement
        // over the kernel in release ones).
        let mb = 1u64 << 20;
        let h = ImageHeader {
            text_offset: !(PAGE - 1),
            image_size: 1,
        };
        assert!(matches!(
            plan(0x8000_0000, 128 * mb, h, 4096, None),
            Err(ImageError::HeaderOverflow { .. })
        ));
        let h = ImageHeader {
            text_offset: 0,
            image_size: u64::MAX,
        };
        assert!(matches!(
            plan(0x8000_0000, 128 * mb, h, 4096, None),
            Err(ImageError::HeaderOverflow { .. })
        ));
        // Fits the address space but ends within 2 MiB of its top: the FDT cannot follow.
        let h = ImageHeader {
            text_offset: 0,
            image_size: u64::MAX - 0x8000_0000 - 4096,
        };
        assert!(matches!(
            plan(0x8000_0000, 128 * mb, h, 4096, Some(1)),
            Err(ImageError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            plan(
                u64::MAX - mb,
                128 * mb,
                ImageHeader {
                    text_offset: 0,
                    image_size: 1
                },
                1,
                None
            ),
            Err(ImageError::MemoryRange { .. })
        ));
        let mut raw = header(0x1001, 0x1000);
        assert_eq!(
            parse_header(&raw),
            Err(ImageError::MisalignedTextOffset(0x1001))
        );
        raw[8..16].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert!(parse_header(&raw).is_ok());
    }

    #[test]
    fn every_accepted_plan_keeps_its_pieces_apart_and_inside_memory() {
        let mb = 1u64 << 20;
        let edges = [
            0,
            1,
            PAGE,
            KERNEL_ALIGN - PAGE,
            KERNEL_ALIGN,
            60 * mb,
            u64::MAX / 2,
            u64::MAX - PAGE + 1,
        ];
        for &text_offset in &edges {
            for &image_size in &edges {
                for &file_len in &[0, 64, 30 * mb, u64::MAX] {
                    for &initrd in &[None, Some(0), Some(mb), Some(u64::MAX)] {
                        for &(base, size) in &[
                            (0x8000_0000, 128 * mb),
                            (0x8000_0001, 64 * mb),
                            (0, u64::MAX),
                        ] {
                            let h = ImageHeader {
                                text_offset: text_offset & !(PAGE - 1),
                                image_size,
                            };
                            let Ok(p) = plan(base, size, h, file_len, initrd) else {
                                continue;
                            };
                            let end = base + size;
                            assert!(p.kernel >= base && p.kernel <= p.kernel_end);
                            assert!(p.kernel_end - p.kernel >= file_len.max(image_size));
                            assert!(p.fdt >= p.kernel_end && p.fdt + FDT_MAX_SIZE <= end);
                            if let Some((a, len)) = p.initrd {
                                assert!(a >= p.fdt + FDT_MAX_SIZE && len <= end - a);
                            }
                        }
                    }
                }
            }
        }
    }
}
