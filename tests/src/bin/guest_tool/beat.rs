//! The migration benchmark's observers. `heartbeat HZ` runs in the guest: it prints
//! `HB <seq> <monotonic µs>` HZ times a second on its stdout (the console), so that the host,
//! stamping each line with its own clock, sees every pause the guest's console sees, and the
//! guest's own clock shows every time its vCPU did not run. `sink PORT` runs in the emulated
//! host: the receiving end of the plain TCP stream the migration's throughput is compared
//! with (`send tcp:127.0.0.1:PORT MIB` is the sending end).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::Result;

/// The line the heartbeat prints for beat `seq`, `mono_us` µs after it started.
pub fn beat_line(seq: u64, mono_us: u128) -> String {
    format!("HB {seq} {mono_us}\n")
}

/// The deadline of the beat after one due at `due`, woken at `now`: on schedule, or one
/// period after `now` when the beat was late by more than a period (a stall is then seen as
/// one long gap, not followed by a burst of beats that would hide it).
pub fn next_due(due: Instant, now: Instant, period: Duration) -> Instant {
    let next = due + period;
    if next <= now { now + period } else { next }
}

pub fn heartbeat(hz: u64) -> Result<()> {
    if hz == 0 || hz > 1000 {
        return Err(format!("heartbeat: {hz} Hz is not within 1..=1000"));
    }
    let period = Duration::from_micros(1_000_000 / hz);
    let start = Instant::now();
    let mut out = std::io::stdout();
    let mut due = start;
    for seq in 0u64.. {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = Instant::now();
        out.write_all(beat_line(seq, (now - start).as_micros()).as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("heartbeat: write: {e}"))?;
        due = next_due(due, now, period);
    }
    Ok(())
}

/// Accepts one connection on 127.0.0.1:`port`, reads it to its end in 1 MiB reads, and
/// prints `SINK_BYTES <n>`.
pub fn sink(port: u16) -> Result<()> {
    let l = std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("sink: bind 127.0.0.1:{port}: {e}"))?;
    println!("SINK_LISTENING {port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut s, _) = l.accept().map_err(|e| format!("sink: accept: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("sink: read: {e}")),
        }
    }
    println!("SINK_BYTES {total}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_beat_is_not_followed_by_a_burst() {
        let t0 = Instant::now();
        let p = Duration::from_millis(20);
        // On time: the next beat one period after this one's deadline.
        assert_eq!(next_due(t0, t0 + Duration::from_millis(1), p), t0 + p);
        // 100 ms late: the next beat a period from now, not at t0 + 20 ms (already past).
        let now = t0 + Duration::from_millis(100);
        assert_eq!(next_due(t0, now, p), now + p);
    }

    #[test]
    fn beat_lines_carry_sequence_and_time() {
        assert_eq!(beat_line(7, 140_001), "HB 7 140001\n");
    }
}
