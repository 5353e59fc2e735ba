//! The serial console: where its output goes (stdio, a file, nowhere), the raw-mode terminal
//! guard for stdio, and a scanner that spots a guest kernel panic in the output.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;

use crate::events::{EventSender, VmEvent};

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

/// The line the kernel prints last when it panics.
const PANIC_END: &str = "---[ end Kernel panic - not syncing:";
const PANIC_START: &str = "Kernel panic - not syncing:";
const MAX_LINE: usize = 1024;

/// Watches console output, line by line, for the end of a kernel panic report.
#[derive(Debug, Default)]
pub struct PanicScanner {
    line: Vec<u8>,
    /// The panic's first line, kept for a report that never ends.
    message: Option<String>,
}

impl PanicScanner {
    /// The start of a panic report seen so far, if any.
    pub fn started(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Feeds output; returns the panic message once the panic report is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<String> {
        let mut done = None;
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                if let Some(i) = line.find(PANIC_END) {
                    let msg = line[i + PANIC_END.len()..]
                        .trim()
                        .trim_end_matches("]---")
                        .trim();
                    done = Some(format!("Kernel panic - not syncing: {msg}"));
                } else if let Some(i) = line.find(PANIC_START) {
                    self.message = Some(line[i..].trim().to_string());
                }
                if done.is_some() {
                    self.message = None;
                }
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        done
    }
}

/// The serial port's output: the configured sink plus the panic scanner.
pub struct ConsoleOutput {
    sink: Box<dyn Write + Send>,
    scanner: PanicScanner,
    events: Option<EventSender>,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput").finish_non_exhaustive()
    }
}

impl ConsoleOutput {
    /// Opens the sink for a console configuration. A file console is appended to.
    pub fn open(cfg: &ConsoleConfig, events: Option<EventSender>) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = match cfg {
            ConsoleConfig::Stdio => Box::new(io::stdout()),
            ConsoleConfig::File(p) => {
                let f: File = OpenOptions::new().create(true).append(true).open(p)?;
                Box::new(f)
            }
            ConsoleConfig::None => Box::new(io::sink()),
        };
        Ok(Self {
            sink,
            scanner: PanicScanner::default(),
            events,
        })
    }

    /// The first line of a panic report seen in the output, if any.
    pub fn panic_started(&self) -> Option<String> {
        self.scanner.started().map(str::to_string)
    }

    /// Wraps any writer (for tests).
    pub fn from_writer(sink: Box<dyn Write + Send>, events: Option<EventSender>) -> Self {
        Self {
            sink,
            scanner: PanicScanner::default(),
            events,
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(msg) = self.scanner.feed(buf) {
            if let Some(e) = &self.events {
                e.send(VmEvent::GuestPanic(msg));
            }
        }
        // A closed or full sink must not stop the guest: the output is dropped instead.
        let _ = self.sink.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.sink.flush();
        Ok(())
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
    fn a_panic_is_reported_when_its_report_ends() {
        let mut s = PanicScanner::default();
        assert_eq!(
            s.feed(b"[    1.0] Kernel panic - not syncing: sysrq triggered crash\n"),
            None
        );
        assert_eq!(s.feed(b"CPU: 0 PID: 1 Comm: sh\nCall trace:\n"), None);
        let got = s
            .feed(b"[    1.2] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\r\n");
        assert_eq!(
            got.as_deref(),
            Some("Kernel panic - not syncing: sysrq triggered crash")
        );
    }

    #[test]
    fn output_split_across_writes_is_scanned() {
        let (tx, rx) = crate::events::channel().unwrap();
        let mut out = ConsoleOutput::from_writer(Box::new(io::sink()), Some(tx));
        for chunk in [
            &b"---[ end Kernel pa"[..],
            b"nic - not syncing: Attempted to kill init! ]---",
            b"\n",
        ] {
            out.write_all(chunk).unwrap();
        }
        assert_eq!(
            rx.drain(),
            vec![VmEvent::GuestPanic(
                "Kernel panic - not syncing: Attempted to kill init!".into()
            )]
        );
    }

    #[test]
    fn ordinary_output_raises_nothing() {
        let mut s = PanicScanner::default();
        assert_eq!(
            s.feed(b"GUEST_READY\n/ # echo Kernel panic\nKernel panic\n"),
            None
        );
    }
}
