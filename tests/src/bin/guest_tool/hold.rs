//! `hold MIB`: the snapshot tests' workload. One thread per online CPU, each pinned to its
//! CPU, fills its part of MIB MiB with a known pattern; then one counting thread per CPU
//! increments its counter every millisecond and checks that CLOCK_MONOTONIC never goes
//! backwards. On SIGUSR1 the main thread writes `/tmp/hold.status`:
//! `counters=C0,C1,.. backwards=0|1 sum=X expected=Y` (sum: the memory's checksum now;
//! expected: right after the fill). It prints `HOLD_READY` once filled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{Result, os_err};

static BACKWARDS: AtomicBool = AtomicBool::new(false);

fn pattern(offset: usize) -> u8 {
    ((offset / 4096).wrapping_mul(31) ^ (offset % 251)) as u8 | 1
}

fn checksum(mem: &[u8]) -> u64 {
    mem.chunks(8).fold(0u64, |s, w| {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        s.wrapping_mul(31).wrapping_add(u64::from_le_bytes(b))
    })
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn monotonic() -> i128 {
    // SAFETY: timespec is plain data, filled by the call.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn count(counter: &AtomicU64) -> ! {
    let mut last = monotonic();
    loop {
        counter.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let now = monotonic();
        if now < last {
            BACKWARDS.store(true, Ordering::Relaxed);
        }
        last = now;
    }
}

pub fn hold(mib: u64) -> Result<()> {
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let len = (mib as usize) << 20;
    let mut mem = vec![0u8; len];
    let per = len.div_ceil(cpus).next_multiple_of(4096);
    // SIGUSR1 waits for sigwait in this thread; threads started after inherit the block.
    // SAFETY: sigset_t is plain data, set up by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls edit it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::scope(|s| {
        for (cpu, part) in mem.chunks_mut(per).enumerate() {
            s.spawn(move || {
                pin(cpu);
                let base = cpu * per;
                for (i, b) in part.iter_mut().enumerate() {
                    *b = pattern(base + i);
                }
            });
        }
    });
    let expected = checksum(&mem);
    let counters: &'static [AtomicU64] = Box::leak(
        (0..cpus)
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    for (cpu, c) in counters.iter().enumerate() {
        std::thread::spawn(move || {
            pin(cpu);
            count(c)
        });
    }
    std::fs::write("/tmp/hold.pid", std::process::id().to_string())
        .map_err(|e| format!("/tmp/hold.pid: {e}"))?;
    println!("HOLD_READY {expected:#x}");
    loop {
        let mut sig = 0;
        // SAFETY: `set` holds SIGUSR1, blocked in this thread; `sig` receives its number.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return Err(os_err("sigwait"));
        }
        let counts: Vec<String> = counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed).to_string())
            .collect();
        let status = format!(
            "counters={} backwards={} sum={:#x} expected={expected:#x}\n",
            counts.join(","),
            u8::from(BACKWARDS.load(Ordering::Relaxed)),
            checksum(&mem)
        );
        std::fs::write("/tmp/hold.status.tmp", status)
            .and_then(|()| std::fs::rename("/tmp/hold.status.tmp", "/tmp/hold.status"))
            .map_err(|e| format!("/tmp/hold.status: {e}"))?;
    }
}
