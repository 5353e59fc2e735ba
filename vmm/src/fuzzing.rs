//! Fuzz-target bodies for the VMM's untrusted input: API requests (from anyone who can reach
//! the API socket), Firecracker config files, and kernel images with their placement. Each takes arbitrary bytes and must not
//! panic; `fuzz/` wraps them for libFuzzer and the unit tests below run them on the seeds in
//! `fuzz/corpus/` and on pseudo-random inputs.

use devices::GuestRam;
use std::time::{Duration, Instant};

use crate::api::model::RateLimiterConfig;
use crate::api::router::{self, ApiRequest};
use crate::config::VmConfig;

/// An API request, written `METHOD PATH\nBODY`: the request line is split at its first
/// space, and everything after the first newline is the body. Requests the router accepts
/// are also validated as the controller would.
pub fn api_request(data: &[u8]) {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &[][..]),
    };
    let line = String::from_utf8_lossy(line);
    let (method, path) = line.split_once(' ').unwrap_or((&line, "/"));
    match router::parse(method, path, body) {
        Ok(req) => {
            let _ = req.metric();
            validate(&req);
        }
        Err(resp) => {
            assert!(
                (400..600).contains(&resp.status),
                "an error response has an error status"
            );
        }
    }
}

/// Runs the model's own checks, which bodies from the API reach before anything acts on
/// them (the vsock socket path is left alone: checking it touches the filesystem), and
/// drives every rate limiter that passes them.
fn validate(req: &ApiRequest) {
    let (checked, limiters) = match req {
        ApiRequest::PutDrive(_, d) => (d.validate(), vec![d.rate_limiter]),
        ApiRequest::PatchDrive(_, p) => (Ok(()), vec![p.rate_limiter]),
        ApiRequest::PutNet(_, n) => (n.validate(), vec![n.rx_rate_limiter, n.tx_rate_limiter]),
        ApiRequest::PatchNet(_, p) => (Ok(()), vec![p.rx_rate_limiter, p.tx_rate_limiter]),
        ApiRequest::PutEntropy(e) => (e.validate(), vec![e.rate_limiter]),
        _ => (Ok(()), Vec::new()),
    };
    if checked.is_err() {
        return;
    }
    for r in limiters.iter().flatten() {
        if r.validate().is_ok() {
            run_limiter(r);
        }
    }
}

/// Admits requests of extreme sizes at extreme times: the token arithmetic must hold.
fn run_limiter(cfg: &RateLimiterConfig) {
    let mut limiter = cfg.build();
    let t0 = Instant::now();
    for (bytes, later) in [
        (0, 0),
        (1, 0),
        (u64::MAX, 0),
        (4096, 1),
        (u64::MAX, u64::from(u32::MAX)),
        (1, u64::MAX / 4),
    ] {
        let Some(now) = t0.checked_add(Duration::from_nanos(later)) else {
            continue;
        };
        if let Err(wait) = limiter.admit(bytes, now) {
            let _ = now.checked_add(wait);
        }
    }
}

/// A Firecracker-style config file (`--config-file`); one that is accepted must also give a
/// guest command line.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = VmConfig::from_firecracker_json(text) {
        let _ = cfg.guest_cmdline();
        assert!(cfg.validate().is_ok(), "an accepted config is valid");
    }
}

/// Guest memory base used by the kernel-image target (the real DRAM base).
const FUZZ_MEM_BASE: u64 = 0x8000_0000;

/// A kernel image and where it goes. The first 24 bytes choose the layout: a gzip flag,
/// guest memory size (1 to 64 MiB), initrd length, and a raw (mem_base, mem_size) pair that
/// drives the placement arithmetic on its own, past anything memory could hold. The rest is
/// the image file. An accepted load must put the image's bytes at the planned address, and
/// the plan's pieces must lie apart and inside memory.
pub fn kernel_image(data: &[u8]) {
    let _ = kernel_image_loaded(data);
}

/// [`kernel_image`], telling whether the loader accepted the input.
fn kernel_image_loaded(data: &[u8]) -> bool {
    use arch::image;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress};

    let Some((head, img)) = data.split_first_chunk::<24>() else {
        return false;
    };
    let word = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let gzip = head[0] & 1 == 1;
    let mem_size = (u64::from(head[1] % 64) + 1) << 20;
    let initrd_len = u64::from(u16::from_le_bytes([head[2], head[3]])) << (head[4] % 6);
    // The arithmetic alone, with addresses no test memory could have.
    if let Ok(h) = image::parse_header(img) {
        let (base, size) = (word(8), word(16));
        if let Ok(p) = image::plan(base, size, h, img.len() as u64, Some(initrd_len)) {
            check_plan(&p, base, size, h.image_size.max(img.len() as u64));
        }
    }
    let file_data = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(img).expect("writing to a Vec cannot fail");
        gz.finish().expect("writing to a Vec cannot fail")
    } else {
        img.to_vec()
    };
    let (Some(kernel), Some(initrd)) = (memfd(&file_data), memfd(&vec![0xa5; initrd_len as usize]))
    else {
        return false;
    };
    let name = std::path::Path::new("fuzz");
    let Ok(k) = crate::loader::KernelFile::from_file(kernel, name) else {
        return false;
    };
    let i = crate::loader::InitrdFile::from_file(initrd, name).expect("the memfd was just made");
    let mem = GuestRam::from_ranges(&[(GuestAddress(FUZZ_MEM_BASE), mem_size as usize)])
        .expect("a small anonymous mapping");
    if let Ok(p) = crate::loader::load(&mem, FUZZ_MEM_BASE, mem_size, k, Some(i)) {
        check_plan(&p, FUZZ_MEM_BASE, mem_size, img.len() as u64);
        let mut back = vec![0u8; img.len()];
        mem.read_slice(&mut back, GuestAddress(p.kernel))
            .expect("the plan keeps the kernel inside memory");
        assert_eq!(back, img, "the kernel is where the plan says");
        return true;
    }
    false
}

/// A plan's pieces lie in order, apart, and inside `base..base + size`.
fn check_plan(p: &arch::image::BootPlan, base: u64, size: u64, kernel_len: u64) {
    let end = base + size;
    assert!(p.kernel >= base && p.kernel_end - p.kernel >= kernel_len);
    assert!(p.fdt >= p.kernel_end && p.fdt + arch::layout::FDT_MAX_SIZE <= end);
    if let Some((a, len)) = p.initrd {
        assert!(a >= p.fdt + arch::layout::FDT_MAX_SIZE && len <= end - a);
    }
}

/// An anonymous in-memory file holding `data`.
fn memfd(data: &[u8]) -> Option<std::fs::File> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a valid C string; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vmm-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data).ok()?;
    Some(f)
}

/// A snapshot state file decoded into every component's layout, as `snapshot/load` does
/// before it builds anything: as given, and with its checksum made right so that mutations
/// reach the sections instead of stopping at the checksum.
pub fn snapshot_state(data: &[u8]) {
    let fixed = migration::fuzzing::with_fixed_checksum(data);
    for bytes in std::iter::once(data).chain(fixed.as_deref()) {
        let Ok(sections) = migration::snapshot::decode_snapshot(bytes) else {
            continue;
        };
        if let Ok(s) = crate::persist::decode::decode_all(sections) {
            assert_eq!(s.vcpus.len(), s.vm.config.vcpus as usize);
            let _ = crate::persist::inspect::inspect(bytes).expect("inspect reads what loads");
        }
    }
}

#[cfg(test)]
mod tests {
    use devices::fuzzing::{seed_corpus, smoke};

    use super::*;

    #[test]
    fn api_seeds_are_accepted_requests() {
        let seeds = seed_corpus("api_request");
        assert!(seeds.len() >= 10, "{} seeds", seeds.len());
        for s in seeds {
            let text = String::from_utf8(s).unwrap();
            let (line, body) = text.split_once('\n').unwrap_or((&text, ""));
            let (method, path) = line.split_once(' ').unwrap();
            assert!(
                router::parse(method, path, body.as_bytes()).is_ok(),
                "the seed {line} is refused"
            );
        }
    }

    #[test]
    fn config_seeds_are_accepted_files() {
        let seeds = seed_corpus("config_file");
        assert!(!seeds.is_empty());
        for s in seeds {
            let text = String::from_utf8(s).unwrap();
            if let Err(e) = VmConfig::from_firecracker_json(&text) {
                panic!("{e}: {text}");
            }
        }
    }

    #[test]
    fn smoke_api_request() {
        smoke("api_request", 2000, api_request);
    }

    #[test]
    fn kernel_image_seeds_load() {
        let seeds = seed_corpus("kernel_image");
        assert!(seeds.len() >= 3, "{} seeds", seeds.len());
        // A raw, a gzip and an old (image_size 0) seed load; the wrapping header is refused.
        let loaded: Vec<bool> = seeds.iter().map(|s| kernel_image_loaded(s)).collect();
        assert_eq!(loaded, [true, true, true, false]);
    }

    #[test]
    fn smoke_kernel_image() {
        smoke("kernel_image", 500, kernel_image);
    }

    #[test]
    fn snapshot_state_seeds_decode() {
        let seeds = seed_corpus("snapshot_state");
        assert!(!seeds.is_empty());
        for s in seeds {
            let sections = migration::snapshot::decode_snapshot(&s).expect("a seed decodes");
            crate::persist::decode::decode_all(sections).expect("its sections decode");
        }
    }

    #[test]
    fn smoke_snapshot_state() {
        smoke("snapshot_state", 300, snapshot_state);
    }

    #[test]
    fn smoke_config_file() {
        smoke("config_file", 2000, config_file);
    }
}
