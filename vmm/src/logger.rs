//! The logger: `vmm: LEVEL message` lines to stderr, or to a file or FIFO given by `--log-path`
//! or `PUT /logger`, at a level that can change while running.
//!
//! A log file or FIFO is opened and written non-blocking, as the metrics sink is: a FIFO
//! with no reader is refused when it is given instead of hanging the VMM in open, and a line
//! that a full FIFO cannot take is dropped and counted (`logger.missed_log_count`) instead of
//! stopping whichever thread logged it, a vCPU included.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};

struct Target {
    out: Option<Box<dyn Write + Send>>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct VmmLogger {
    target: Mutex<Target>,
}

impl Log for VmmLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut t = self
            .target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = &t.module {
            if !r.module_path().is_some_and(|p| p.starts_with(m.as_str())) {
                return;
            }
        }
        let mut line = String::from("vmm:");
        if t.show_level {
            line.push_str(&format!(" {}", r.level()));
        }
        if t.show_origin {
            line.push_str(&format!(
                " {}:{}",
                r.file().unwrap_or("?"),
                r.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(" {}", r.args()));
        match t.out.as_mut() {
            Some(f) => {
                line.push('\n');
                if !write_line(f.as_mut(), &line) {
                    crate::metrics::METRICS.logger.missed_log_count.inc();
                }
            }
            // \r keeps lines tidy when the terminal is in raw mode for the guest console.
            None => {
                let _ = write!(std::io::stderr(), "{line}\r\n");
            }
        }
    }

    fn flush(&self) {}
}

/// Writes a whole line in one call; false if it did not all go (a full FIFO, an error).
/// The destination is non-blocking, so this never waits for a reader.
fn write_line(out: &mut dyn Write, line: &str) -> bool {
    matches!(out.write(line.as_bytes()), Ok(n) if n == line.len())
}

/// Opens a log file (appended to, created if missing) or an existing FIFO, non-blocking.
fn open_log(p: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => std::io::Error::new(
                e.kind(),
                format!("{p} is a FIFO that nobody reads (open it for reading first)"),
            ),
            _ => e,
        })
}

static LOGGER: VmmLogger = VmmLogger {
    target: Mutex::new(Target {
        out: None,
        show_level: true,
        show_origin: false,
        module: None,
    }),
};

/// Installs the logger at `level` (only the first call takes effect).
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Changes where and how the log is written. `path` None keeps the current destination.
pub fn configure(
    path: Option<&str>,
    level: Option<LevelFilter>,
    show_level: Option<bool>,
    show_origin: Option<bool>,
    module: Option<&str>,
) -> std::io::Result<()> {
    let out: Option<Box<dyn Write + Send>> = match path {
        Some(p) => Some(Box::new(open_log(p)?)),
        None => None,
    };
    let mut t = LOGGER
        .target
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if out.is_some() {
        t.out = out;
    }
    if let Some(s) = show_level {
        t.show_level = s;
    }
    if let Some(s) = show_origin {
        t.show_origin = s;
    }
    if let Some(m) = module {
        t.module = Some(m.to_string());
    }
    if let Some(l) = level {
        log::set_max_level(l);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn fifo(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the path it is given.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    }

    #[test]
    fn a_log_fifo_nobody_reads_is_refused_not_waited_for() {
        // Regression: the log was opened blocking, so a FIFO without a reader hung the VMM
        // in open, and a reader that stopped reading stopped every thread that logged.
        let p = fifo("noreader");
        let e = open_log(p.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("nobody reads"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_stalled_log_reader_costs_lines_not_a_blocked_thread() {
        let p = fifo("stalled");
        // A reader that never reads.
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        let mut f = open_log(p.to_str().unwrap()).unwrap();
        let line = format!("vmm: WARN {}\n", "x".repeat(100));
        let (written, missed) = (0..2000).fold((0, 0), |(w, m), _| {
            if write_line(&mut f, &line) {
                (w + 1, m)
            } else {
                (w, m + 1)
            }
        });
        // A pipe holds 64 KiB: about 600 of these lines; the rest are dropped, not waited for.
        assert!(
            written > 0 && missed > 0,
            "{written} written, {missed} missed"
        );
        drop(reader);
        let _ = std::fs::remove_file(&p);
    }
}
