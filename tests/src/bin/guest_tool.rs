//! `vmm-guest-tool`: what busybox lacks inside the test guest (a static aarch64 binary that
//! xtask appends to the guest initramfs as /bin/vmm-guest-tool).
//!
//! - `vsock-echo PORT`: echoes every connection on vsock PORT back to its sender.
//! - `vsock-cat CID PORT`: stdin to a vsock stream, the stream to stdout.
//! - `send vsock:CID:PORT|tcp:ADDR:PORT MIB`: writes MIB MiB, waits for the peer to close,
//!   and prints `SEND_MIBS <MiB/s>` (guest time).
//! - `randread DEV SECONDS`: 4 KiB O_DIRECT random reads; prints `RANDREAD_IOPS <n>`.
//! - `seqread DEV MIB` / `seqwrite DEV MIB`: 1 MiB O_DIRECT requests (writes end with fsync);
//!   prints `SEQREAD_MIBS` / `SEQWRITE_MIBS`.
//! - `hold MIB`: the snapshot tests' workload (see `hold.rs`).
//! - `dirty MIB MIB_PER_S`: the migration tests' dirtier (see `dirty.rs`).
//! - `touch MIB`: fills MIB MiB of anonymous memory with a non-zero pattern (every 8 bytes
//!   differ), prints `TOUCHED <MIB>`, and sleeps with it resident until killed.
//! - `nonzero FILE`: counts the 4 KiB pages of FILE that hold a byte other than zero (holes,
//!   found with SEEK_DATA/SEEK_HOLE, are zero by definition and are not read) and prints
//!   `NONZERO_PAGES <n>`. The benchmark runs it in the host on a snapshot's memory file.
//! - `heartbeat HZ`: prints `HB <seq> <monotonic µs>` HZ times a second (see `beat.rs`).
//! - `sink PORT`: reads one TCP connection on 127.0.0.1:PORT to its end; prints `SINK_BYTES`.
//!   The migration benchmark's plain TCP stream, run in the host against `send tcp:...`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Instant;

#[path = "guest_tool/beat.rs"]
mod beat;
#[path = "guest_tool/dirty.rs"]
mod dirty;
#[path = "guest_tool/hold.rs"]
mod hold;

type Result<T> = std::result::Result<T, String>;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all zeroes is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock_socket() -> Result<OwnedFd> {
    // SAFETY: no memory arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket(AF_VSOCK)"));
    }
    // SAFETY: fd is a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_connect(cid: u32, port: u32) -> Result<File> {
    let fd = vsock_socket()?;
    let a = vsock_addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const a).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("connect to vsock {cid}:{port}")));
    }
    Ok(File::from(fd))
}

fn shut_write(f: &File) {
    // SAFETY: shutdown(2) on an open socket; no memory arguments.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

fn vsock_echo(port: u32) -> Result<()> {
    let fd = vsock_socket()?;
    let a = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const a).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    // SAFETY: listen(2) on an open socket.
    if rc != 0 || unsafe { libc::listen(fd.as_raw_fd(), 64) } != 0 {
        return Err(os_err(&format!("listen on vsock port {port}")));
    }
    println!("VSOCK_ECHO_READY {port}");
    loop {
        // SAFETY: accept(2) without an address; the result is checked.
        let c = unsafe { libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if c < 0 {
            continue;
        }
        // SAFETY: c is a new descriptor owned by nothing else.
        let mut conn = File::from(unsafe { OwnedFd::from_raw_fd(c) });
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            shut_write(&conn);
            // The snapshot tests wait for this: a connection reset by a restore ends here.
            println!("VSOCK_ECHO_CLOSED");
        });
    }
}

fn vsock_cat(cid: u32, port: u32) -> Result<()> {
    let sock = vsock_connect(cid, port)?;
    let mut tx = sock.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || {
        let r = std::io::copy(&mut std::io::stdin().lock(), &mut tx);
        shut_write(&tx);
        r
    });
    let mut rx = sock;
    std::io::copy(&mut rx, &mut std::io::stdout().lock()).map_err(|e| e.to_string())?;
    writer
        .join()
        .map_err(|_| "the writer thread failed".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn send(target: &str, mib: u64) -> Result<()> {
    let parts: Vec<&str> = target.split(':').collect();
    let port = |s: &str| s.parse::<u32>().map_err(|_| format!("bad port {s}"));
    let start = Instant::now();
    let mut sock = match parts.as_slice() {
        ["vsock", cid, p] => vsock_connect(cid.parse().map_err(|_| "bad cid")?, port(p)?)?,
        ["tcp", addr, p] => {
            let s = std::net::TcpStream::connect(format!("{addr}:{}", port(p)?))
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            File::from(OwnedFd::from(s))
        }
        _ => return Err(format!("bad target {target}")),
    };
    let buf = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        sock.write_all(&buf).map_err(|e| format!("write: {e}"))?;
    }
    shut_write(&sock);
    let mut sink = [0u8; 4096];
    while sock.read(&mut sink).map_err(|e| format!("read: {e}"))? > 0 {}
    let secs = start.elapsed().as_secs_f64();
    println!("SEND_MIBS {:.1}", mib as f64 / secs);
    Ok(())
}

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(Self { ptr, layout })
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn open_direct(dev: &str, write: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("open {dev}: {e}"))
}

fn pio(f: &File, buf: &Aligned, off: u64, write: bool) -> Result<()> {
    let n = buf.layout.size();
    // SAFETY: buf owns n bytes; the fd is open.
    let got = unsafe {
        if write {
            libc::pwrite(f.as_raw_fd(), buf.ptr.cast(), n, off as libc::off_t)
        } else {
            libc::pread(f.as_raw_fd(), buf.ptr.cast(), n, off as libc::off_t)
        }
    };
    if got != n as isize {
        return Err(os_err(&format!("I/O at {off}")));
    }
    Ok(())
}

fn randread(dev: &str, secs: f64) -> Result<()> {
    let f = open_direct(dev, false)?;
    let size =
        std::io::Seek::seek(&mut &f, std::io::SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let blocks = size / 4096;
    if blocks == 0 {
        return Err(format!("{dev} is empty"));
    }
    let buf = Aligned::new(4096)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pio(&f, &buf, (x % blocks) * 4096, false)?;
        ops += 1;
    }
    println!(
        "RANDREAD_IOPS {:.0}",
        ops as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn seq(dev: &str, mib: u64, write: bool) -> Result<()> {
    let f = open_direct(dev, write)?;
    let buf = Aligned::new(1 << 20)?;
    let start = Instant::now();
    for i in 0..mib {
        pio(&f, &buf, i << 20, write)?;
    }
    if write {
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    }
    let rate = mib as f64 / start.elapsed().as_secs_f64();
    println!(
        "{} {rate:.1}",
        if write {
            "SEQWRITE_MIBS"
        } else {
            "SEQREAD_MIBS"
        }
    );
    Ok(())
}

/// The value `touch` writes at word `i`: never zero, and different from its neighbours so that
/// no page of it is a page of one repeated byte.
fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn touch(mib: u64) -> Result<()> {
    let len = usize::try_from(mib << 20).map_err(|_| format!("{mib} MiB is too much"))?;
    if len == 0 {
        return Err("touch needs at least 1 MiB".into());
    }
    // SAFETY: a new private anonymous mapping; no memory of ours is passed.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err(&format!("mmap of {mib} MiB")));
    }
    // SAFETY: the mapping is `len` bytes, readable and writable, u64-aligned (page-aligned),
    // and only this function uses it.
    let words = unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern(i as u64);
    }
    println!("TOUCHED {mib}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Keep the pages resident (and this process alive) until the guest is powered off.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Non-zero 4 KiB pages in `buf` (whose length is a multiple of 4 KiB, bar the file's last).
fn nonzero_pages(buf: &[u8]) -> u64 {
    buf.chunks(4096)
        .filter(|page| page.iter().any(|&b| b != 0))
        .count() as u64
}

fn nonzero(path: &str) -> Result<()> {
    println!("NONZERO_PAGES {}", count_nonzero(path)?);
    Ok(())
}

fn count_nonzero(path: &str) -> Result<u64> {
    let f = File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    let fd = f.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let (mut pages, mut off) = (0u64, 0u64);
    while off < len {
        // SAFETY: lseek(2) on an open descriptor; no memory arguments.
        let data = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: only a hole is left.
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(os_err(&format!("SEEK_HOLE in {path}")));
        }
        // Data extents start on page boundaries in the file systems that hold memory files;
        // count from the page that holds `data` anyway.
        let mut at = (data as u64) & !4095;
        while at < hole as u64 {
            let n = buf.len().min((hole as u64 - at) as usize);
            let n = n.next_multiple_of(4096).min((len - at) as usize);
            f.read_exact_at(&mut buf[..n], at)
                .map_err(|e| format!("read {path} at {at}: {e}"))?;
            pages += nonzero_pages(&buf[..n]);
            at += n as u64;
        }
        off = at.max(hole as u64);
    }
    Ok(pages)
}

fn run(args: &[String]) -> Result<()> {
    let num = |s: &String| s.parse::<u64>().map_err(|_| format!("not a number: {s}"));
    match args {
        [c, port] if c == "vsock-echo" => vsock_echo(num(port)? as u32),
        [c, cid, port] if c == "vsock-cat" => vsock_cat(num(cid)? as u32, num(port)? as u32),
        [c, target, mib] if c == "send" => send(target, num(mib)?),
        [c, dev, secs] if c == "randread" => randread(dev, num(secs)? as f64),
        [c, dev, mib] if c == "seqread" => seq(dev, num(mib)?, false),
        [c, dev, mib] if c == "seqwrite" => seq(dev, num(mib)?, true),
        [c, mib] if c == "hold" => hold::hold(num(mib)?),
        [c, mib, rate] if c == "dirty" => dirty::dirty(num(mib)?, num(rate)?),
        [c, mib] if c == "touch" => touch(num(mib)?),
        [c, path] if c == "nonzero" => nonzero(path),
        [c, hz] if c == "heartbeat" => beat::heartbeat(num(hz)?),
        [c, port] if c == "sink" => beat::sink(
            u16::try_from(num(port)?).map_err(|_| format!("bad port {port}"))?,
        ),
        _ => Err("usage: vmm-guest-tool vsock-echo PORT | vsock-cat CID PORT | send TARGET MIB | randread DEV SECS | seqread DEV MIB | seqwrite DEV MIB | hold MIB | dirty MIB MIB_PER_S | touch MIB | nonzero FILE | heartbeat HZ | sink PORT".into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("vmm-guest-tool: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dirtier_page_checks_against_its_own_sequence_number() {
        let mut p = vec![0u8; 4096];
        dirty::fill_page(&mut p, 7, 3);
        assert!(dirty::page_ok(&p, 7));
        assert!(!dirty::page_ok(&p, 8), "another page's index");
        let mut torn = p.clone();
        dirty::fill_page(&mut torn[..2048], 7, 4);
        assert!(!dirty::page_ok(&torn, 7), "half of a newer rewrite");
        p[4000] ^= 1;
        assert!(!dirty::page_ok(&p, 7), "one flipped bit");
        let mut zero = vec![0u8; 4096];
        dirty::fill_page(&mut zero, 0, 0);
        assert!(zero[8..].chunks(8).all(|w| w != [0u8; 8]), "no zero word");
    }

    #[test]
    fn the_touch_pattern_has_no_zero_word_and_no_repeated_page() {
        assert!((0..1 << 20).all(|i| pattern(i) != 0));
        let page: Vec<u64> = (0..512).map(pattern).collect();
        assert!(page.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn nonzero_counts_pages_with_data_in_a_sparse_file() {
        let path = std::env::temp_dir().join(format!("guest-tool-nz-{}", std::process::id()));
        let f = File::create(&path).expect("scratch file");
        f.set_len(64 << 20).expect("sparse length");
        // Three non-zero pages, one written page of zeros (data, but zero), and a byte in the
        // middle of a page past the first 1 MiB chunk of an extent.
        f.write_all_at(&[7u8; 4096], 0).expect("write");
        f.write_all_at(&[1u8; 8192], 10 << 20).expect("write");
        f.write_all_at(&[0u8; 4096], 20 << 20).expect("write");
        f.write_all_at(&[0u8; 3 << 20], 30 << 20).expect("write");
        f.write_all_at(&[9u8], (31 << 20) + 4096 * 5 + 100)
            .expect("write");
        let p = path.to_str().expect("utf-8").to_string();
        assert_eq!(count_nonzero(&p), Ok(4));
        f.write_all_at(&[3u8], (64 << 20) - 1).expect("write");
        assert_eq!(count_nonzero(&p), Ok(5));
        let _ = std::fs::remove_file(&path);
        assert!(count_nonzero(&p).is_err());
    }
}
