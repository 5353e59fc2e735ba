//! `dirty MIB MIB_PER_S`: the migration tests' memory dirtier. It fills MIB MiB, then keeps
//! rewriting its pages in turn at MIB_PER_S (0: as fast as it can), each page with random-
//! looking bytes derived from the page's index and a sequence number stored in its first 8
//! bytes, so that any page can be checked on its own: a page whose bytes do not match its
//! sequence number was torn or lost. On SIGUSR1 it checks every page and writes
//! `/tmp/dirty.status`: `pages=N rewrites=R bad=B`. It prints `DIRTY_READY` once filled.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Result, os_err};

const PAGE: usize = 4096;

/// The bytes of page `index` at sequence `seq`: the sequence number, then a xorshift stream
/// seeded by both, never all zero.
pub fn fill_page(page: &mut [u8], index: u64, seq: u64) {
    page[..8].copy_from_slice(&seq.to_le_bytes());
    let mut x = (index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq) | 1;
    for w in page[8..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
}

/// Whether page `index` holds exactly what `fill_page` wrote for its own sequence number.
pub fn page_ok(page: &[u8], index: u64) -> bool {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&page[..8]);
    let mut want = vec![0u8; page.len()];
    fill_page(&mut want, index, u64::from_le_bytes(seq));
    want == page
}

static REWRITES: AtomicU64 = AtomicU64::new(0);

pub fn dirty(mib: u64, rate_mib: u64) -> Result<()> {
    let len = (mib as usize) << 20;
    let pages = len / PAGE;
    let mem = Box::leak(vec![0u8; len].into_boxed_slice());
    for (i, p) in mem.chunks_mut(PAGE).enumerate() {
        fill_page(p, i as u64, 0);
    }
    // SIGUSR1 is taken by sigwait in this thread; the writer inherits the block.
    // SAFETY: sigset_t is plain data, set up by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls edit it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let base = mem.as_mut_ptr() as usize;
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut seq = 1u64;
        loop {
            for i in 0..pages {
                // SAFETY: the page is inside the leaked buffer; the checker reads it
                // concurrently and may see it torn, which it reports only if it stays so
                // (it reads each page again when one looks wrong).
                let p =
                    unsafe { std::slice::from_raw_parts_mut((base + i * PAGE) as *mut u8, PAGE) };
                fill_page(p, i as u64, seq);
                let n = REWRITES.fetch_add(1, Ordering::Relaxed) + 1;
                if rate_mib > 0 {
                    let due = std::time::Duration::from_secs_f64(
                        n as f64 * PAGE as f64 / (rate_mib as f64 * 1048576.0),
                    );
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            seq += 1;
        }
    });
    println!("DIRTY_READY");
    loop {
        let mut sig = 0;
        // SAFETY: `set` holds SIGUSR1, blocked in this thread; `sig` receives its number.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return Err(os_err("sigwait"));
        }
        let mut bad = 0;
        for i in 0..pages {
            // SAFETY: as above; read-only view of one page.
            let p = unsafe { std::slice::from_raw_parts((base + i * PAGE) as *const u8, PAGE) };
            // A page caught mid-rewrite is read again; only one that stays wrong is bad.
            if !page_ok(p, i as u64) && !(0..100).any(|_| page_ok(p, i as u64)) {
                bad += 1;
            }
        }
        let status = format!(
            "pages={pages} rewrites={} bad={bad}\n",
            REWRITES.load(Ordering::Relaxed)
        );
        std::fs::write("/tmp/dirty.status.tmp", status)
            .and_then(|()| std::fs::rename("/tmp/dirty.status.tmp", "/tmp/dirty.status"))
            .map_err(|e| format!("/tmp/dirty.status: {e}"))?;
    }
}
