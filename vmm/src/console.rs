//! The serial console: where its output goes (stdio, a file, nowhere) through a bounded
//! queue and a writer thread, the raw-mode terminal guard for stdio, and a scanner that
//! spots a guest kernel panic report in the output.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::METRICS;

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleConfig {
    /// Output to stdout, input from stdin (raw mode if it is a terminal).
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

impl FromStr for ConsoleConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(format!(
                    "console must be stdio, none or file:PATH, not '{s}'"
                )),
            },
        }
    }
}

/// The first line of a kernel panic report.
const PANIC_START: &str = "Kernel panic - not syncing:";
/// Lines the kernel prints when it resets or powers off in an orderly way (the `reboot`
/// system call, SysRq): a reset after one of these is not a panic's.
const ORDERLY_STOP: [&str; 5] = [
    "reboot: Restarting system",
    "reboot: Power down",
    "reboot: System halted",
    "sysrq: Resetting",
    "sysrq: Power Off",
];
const MAX_LINE: usize = 1024;

/// Watches console output, line by line, for a kernel panic report.
///
/// Text alone proves nothing: any guest program that can write to the console can print a
/// panic banner. So the VMM calls a run a panic only when the guest then resets or powers
/// off through PSCI (which the kernel does after a panic when booted with `panic=N`, N not
/// 0), and the kernel printed no orderly-stop line (`reboot: Restarting system`, ...) after
/// the banner. PSCI calls come from the kernel only, and every reset or power-off that the
/// `reboot` system call asks for prints such a line first, so guest userspace cannot fake
/// a panic. A panicked kernel booted without `panic=` halts and is not reported.
#[derive(Debug, Default)]
pub struct PanicScanner {
    line: Vec<u8>,
    /// The last panic banner's message, unless an orderly stop was printed after it.
    message: Option<String>,
}

impl PanicScanner {
    /// The message of the panic whose report is the last thing on the console, if any.
    /// Ask when the guest resets or powers off.
    pub fn pending_panic(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Feeds output.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                if let Some(i) = line.find(PANIC_START) {
                    self.message = Some(line[i..].trim().to_string());
                } else if ORDERLY_STOP.iter().any(|m| line.contains(m)) {
                    self.message = None;
                }
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

/// Console bytes held for a slow reader; beyond this, output is dropped and counted.
pub const CONSOLE_BUFFER: usize = 64 << 10;
/// How long the VMM waits at exit for buffered console output to reach a reader.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Pending {
    bytes: VecDeque<u8>,
    /// The writer thread is writing bytes it took from `bytes`.
    writing: bool,
    /// No more output will come; the writer ends once `bytes` is empty.
    closed: bool,
}

/// Output waiting for the writer thread.
#[derive(Debug, Default)]
struct OutputQueue {
    pending: Mutex<Pending>,
    /// Signalled when bytes arrive or the queue closes.
    more: Condvar,
    /// Signalled when the writer finishes a write.
    progress: Condvar,
    /// Bytes dropped because the queue was full, or the sink failed.
    dropped: AtomicU64,
}

impl OutputQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues what fits; returns how many bytes were dropped.
    fn push(&self, buf: &[u8]) -> usize {
        let mut p = self.lock();
        let room = CONSOLE_BUFFER.saturating_sub(p.bytes.len());
        let take = room.min(buf.len());
        p.bytes.extend(&buf[..take]);
        drop(p);
        if take > 0 {
            self.more.notify_one();
        }
        let lost = buf.len() - take;
        self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        lost
    }

    /// The writer thread: blocking writes to the sink, off the vCPU threads.
    fn serve(&self, mut sink: Box<dyn Write + Send>) {
        let mut chunk = Vec::with_capacity(CONSOLE_BUFFER);
        let mut failed = false;
        loop {
            {
                let mut p = self.lock();
                p.writing = false;
                self.progress.notify_all();
                while p.bytes.is_empty() && !p.closed {
                    p = self
                        .more
                        .wait(p)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if p.bytes.is_empty() {
                    return;
                }
                chunk.clear();
                chunk.extend(p.bytes.drain(..));
                p.writing = true;
            }
            if failed {
                self.dropped
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                continue;
            }
            // A reader that went away (EPIPE) or a full disk: keep the guest running and
            // count what could not be written.
            if sink.write_all(&chunk).and_then(|()| sink.flush()).is_err() {
                failed = true;
                self.dropped
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Closes the queue and waits up to `within` for the writer to write what is left.
    /// Returns whether everything was written.
    fn close_and_flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut p = self.lock();
        p.closed = true;
        self.more.notify_one();
        while !p.bytes.is_empty() || p.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .progress
                .wait_timeout(p, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The serial port's output: the panic scanner, then a bounded queue that a writer thread
/// empties into the configured sink. A reader that stops reading never stops the guest:
/// once [`CONSOLE_BUFFER`] bytes wait, further output is dropped and counted in the
/// `uart.missed_write_count` metric.
pub struct ConsoleOutput {
    scanner: PanicScanner,
    /// `None` for a console that discards everything.
    queue: Option<Arc<OutputQueue>>,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput").finish_non_exhaustive()
    }
}

impl ConsoleOutput {
    /// Opens the sink for a console configuration. A file console is appended to.
    pub fn open(cfg: &ConsoleConfig) -> io::Result<Self> {
        match cfg {
            ConsoleConfig::Stdio => Self::from_writer(Box::new(io::stdout())),
            ConsoleConfig::File(p) => {
                let f: File = OpenOptions::new().create(true).append(true).open(p)?;
                Self::from_writer(Box::new(f))
            }
            ConsoleConfig::None => Ok(Self {
                scanner: PanicScanner::default(),
                queue: None,
            }),
        }
    }

    /// A console writing to `sink` from its own thread.
    pub fn from_writer(sink: Box<dyn Write + Send>) -> io::Result<Self> {
        let queue = Arc::new(OutputQueue::default());
        let q = queue.clone();
        std::thread::Builder::new()
            .name("console".into())
            .stack_size(64 << 10)
            .spawn(move || q.serve(sink))?;
        Ok(Self {
            scanner: PanicScanner::default(),
            queue: Some(queue),
        })
    }

    /// The message of a panic whose report is the last thing on the console (see
    /// [`PanicScanner`]).
    pub fn pending_panic(&self) -> Option<String> {
        self.scanner.pending_panic().map(str::to_string)
    }

    /// Bytes dropped so far because the reader did not keep up or the sink failed.
    pub fn dropped(&self) -> u64 {
        self.queue
            .as_ref()
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scanner.feed(buf);
        METRICS.uart.write_count.add(buf.len() as u64);
        if let Some(q) = &self.queue {
            let lost = q.push(buf);
            METRICS.uart.missed_write_count.add(lost as u64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOutput {
    /// Gives the reader a bounded time to take what is buffered, then lets the writer go.
    fn drop(&mut self) {
        if let Some(q) = &self.queue {
            if !q.close_and_flush(EXIT_FLUSH) {
                log::warn!("console: the reader did not take the last buffered output");
            }
            let lost = q.dropped.load(Ordering::Relaxed);
            if lost > 0 {
                log::warn!(
                    "console: {lost} bytes of guest output were dropped because the console's reader did not keep up"
                );
            }
        }
    }
}

/// Puts a terminal on stdin into raw mode, and restores it when dropped.
#[derive(Debug)]
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Enters raw mode if stdin is a terminal; otherwise does nothing.
    pub fn enter() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Self { saved: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios for the call to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Self { saved: None };
        }
        let saved = t;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        // Keep output post-processing so the VMM's own messages stay readable.
        t.c_oflag |= libc::OPOST;
        // SAFETY: `t` is a valid termios derived from the terminal's own settings.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        Self { saved: Some(saved) }
    }

    /// Restores the terminal now (also done on drop).
    pub fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            // SAFETY: `t` is the state read from this terminal by `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_specs_parse() {
        assert_eq!("stdio".parse::<ConsoleConfig>(), Ok(ConsoleConfig::Stdio));
        assert_eq!("none".parse::<ConsoleConfig>(), Ok(ConsoleConfig::None));
        assert_eq!(
            "file:/tmp/c".parse::<ConsoleConfig>(),
            Ok(ConsoleConfig::File("/tmp/c".into()))
        );
        assert!(
            "file:"
                .parse::<ConsoleConfig>()
                .unwrap_err()
                .contains("stdio, none or file:PATH")
        );
        assert!("tty".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn a_panic_banner_counts_until_an_orderly_stop_follows_it() {
        let mut s = PanicScanner::default();
        s.feed(b"[    1.0] Kernel panic - not syncing: sysrq triggered crash\n");
        s.feed(b"CPU: 0 PID: 1 Comm: sh\nCall trace:\n[    1.1] Rebooting in 1 seconds..\n");
        assert_eq!(
            s.pending_panic(),
            Some("Kernel panic - not syncing: sysrq triggered crash")
        );
        // Regression: a program that prints the banner and is followed by an ordinary
        // reboot or power-off is not a panic.
        s.feed(b"[    9.0] reboot: Power down\n");
        assert_eq!(s.pending_panic(), None);
        s.feed(b"---[ end Kernel pa");
        s.feed(b"nic - not syncing: Attempted to kill init! ]---\n");
        assert_eq!(
            s.pending_panic(),
            Some("Kernel panic - not syncing: Attempted to kill init! ]---")
        );
    }

    #[test]
    fn ordinary_output_raises_nothing() {
        let mut s = PanicScanner::default();
        s.feed(b"GUEST_READY\n/ # echo Kernel panic\nKernel panic\n");
        assert_eq!(s.pending_panic(), None);
    }

    /// A pipe whose reader never reads: the writer thread blocks once it is full.
    fn stalled_pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two-element array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    #[test]
    fn a_console_nobody_reads_never_blocks_the_writer() {
        // Regression: output went to a blocking sink from the vCPU thread, so a stalled
        // reader stopped the guest, then pause, then the VMM.
        let (reader, writer) = stalled_pipe();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut out = ConsoleOutput::from_writer(Box::new(writer)).unwrap();
            let line = [b'x'; 1000];
            for _ in 0..4096 {
                out.write_all(&line).unwrap();
            }
            let dropped = out.dropped();
            // Dropping closes the queue; with nobody reading, the flush gives up.
            let _ = done_tx.send(dropped);
            drop(out);
        });
        // Not a timing assertion: the bound only turns a hang into a failure.
        let dropped = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("writing to a console nobody reads returned");
        let total = 4096 * 1000u64;
        // At most the queue plus one pipe's worth (64 KiB on Linux) was taken.
        assert!(
            dropped >= total - (CONSOLE_BUFFER as u64) * 2 - (1 << 20),
            "{dropped} of {total} bytes dropped"
        );
        assert!(dropped < total);
        worker.join().unwrap();
        drop(reader);
    }

    #[test]
    fn output_reaches_a_reader_in_order() {
        let (reader, writer) = stalled_pipe();
        let collector = std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut r = reader;
            io::Read::read_to_end(&mut r, &mut v).unwrap();
            v
        });
        let mut out = ConsoleOutput::from_writer(Box::new(writer)).unwrap();
        let mut want = Vec::new();
        for i in 0..2000u32 {
            let line = format!("line {i}\n");
            want.extend_from_slice(line.as_bytes());
            out.write_all(line.as_bytes()).unwrap();
            if i % 100 == 0 {
                // Let the writer catch up now and then, as a reader that keeps up would.
                let q = out.queue.clone().unwrap();
                while !q.lock().bytes.is_empty() {
                    std::thread::yield_now();
                }
            }
        }
        assert_eq!(out.dropped(), 0);
        drop(out);
        assert_eq!(collector.join().unwrap(), want);
    }
}
