//! Drives a `vmm` process and its guest's serial console from a test: waits for lines, runs
//! shell commands and collects their output, and checks how the process ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Generous bound for anything a guest does under nested emulation. It only ends a hung test;
/// no test asserts on time.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// The `vmm` binary: `$VMM_BIN`, else `vmm` on PATH.
pub fn vmm_bin() -> PathBuf {
    std::env::var_os("VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("vmm"))
}

/// A guest artifact named by an environment variable (`GUEST_KERNEL`, ...).
pub fn artifact(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(var)
            .unwrap_or_else(|| panic!("{var} is not set: run inside `cargo xtask host`")),
    )
}

/// A running `vmm` whose console is on its stdio.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    /// Every console line seen so far.
    pub transcript: Vec<String>,
    seq: u32,
}

impl Guest {
    /// Starts `vmm` with these arguments.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(vmm_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm");
        let stdin = child.stdin.take();
        let lines = pump_lines(child.stdout.take().expect("stdout"));
        let stderr = pump_lines(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdin,
            lines,
            stderr,
            transcript: Vec::new(),
            seq: 0,
        }
    }

    /// Boots the standard guest (kernel + initrd) with extra `vmm run` arguments.
    pub fn boot(extra: &[&str]) -> Self {
        let kernel = artifact("GUEST_KERNEL");
        let initrd = artifact("GUEST_INITRD");
        let mut args = vec![
            "run",
            "--kernel",
            kernel.to_str().expect("utf-8"),
            "--initrd",
            initrd.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let mut g = Self::start(&args);
        g.wait_for("GUEST_READY");
        g
    }

    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => {
                println!("guest| {l}");
                self.transcript.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for a console line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        while let Some(l) = self.next_line(deadline) {
            if l.contains(needle) {
                return l;
            }
        }
        panic!(
            "console never showed {needle:?}; stderr: {}",
            self.stderr_text()
        );
    }

    /// Waits for the guest: the console line that contains `needle`, with no command sent.
    pub fn wait_quiet(&mut self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while let Some(l) = self.next_line(deadline) {
            if l.contains(needle) {
                return Some(l);
            }
        }
        None
    }

    /// Every console line that arrives within `within`.
    pub fn collect_for(&mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Some(l) = self.next_line(deadline) {
            out.push(l);
        }
        out
    }

    /// Sends raw text to the console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(text.as_bytes())
            .expect("write to the console");
        stdin.flush().expect("flush the console");
    }

    /// Runs a shell command in the guest and returns its output lines.
    pub fn sh(&mut self, cmd: &str) -> Vec<String> {
        self.seq += 1;
        // The quotes split the markers in the echoed input, so only real output matches.
        let (start, end) = (format!("@@B{}@@", self.seq), format!("@@E{}@@", self.seq));
        self.send(&format!(
            "echo '@@B{0}''@@'; {cmd}; echo '@@E{0}''@@'\n",
            self.seq
        ));
        let deadline = Instant::now() + PATIENCE;
        let mut out = Vec::new();
        let mut inside = false;
        while let Some(l) = self.next_line(deadline) {
            if l.trim_end() == start {
                inside = true;
            } else if let Some(last) = l.trim_end().strip_suffix(&end).filter(|_| inside) {
                // Output without a final newline ends on the marker's line.
                if !last.is_empty() {
                    out.push(last.to_string());
                }
                return out;
            } else if inside && !is_kernel_log(&l) {
                out.push(l.trim_end().to_string());
            }
        }
        panic!(
            "command {cmd:?} did not finish; stderr: {}",
            self.stderr_text()
        );
    }

    /// Waits for the process to end; returns its status and stderr.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for vmm") {
                while self
                    .next_line(Instant::now() + Duration::from_millis(200))
                    .is_some()
                {}
                let err = self.stderr_text();
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vmm did not exit; stderr: {}", self.stderr_text());
            }
            // Keep the console drained so the guest never blocks on output.
            let _ = self.next_line(Instant::now() + Duration::from_millis(50));
        }
    }

    fn stderr_text(&self) -> String {
        std::thread::sleep(Duration::from_millis(100));
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Sends a signal to the vmm process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kernel message on the console (`[    6.179614] ...`), which can land amid command output.
fn is_kernel_log(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .is_some_and(|(t, _)| {
            t.trim()
                .split_once('.')
                .is_some_and(|(a, b)| a.trim().parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
        })
}

fn pump_lines<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        while reader
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let line = String::from_utf8_lossy(&buf)
                .replace('\r', "")
                .trim_end_matches('\n')
                .to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `vmm` with arguments that must be refused; returns (exit code, stderr).
pub fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "vmm panicked: {stderr}");
    (out.status.code(), stderr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_lines_are_recognised() {
        assert!(super::is_kernel_log(
            "[    6.179614] sh (144): drop_caches: 3"
        ));
        assert!(super::is_kernel_log("[12345.000001] x"));
        assert!(!super::is_kernel_log("bbbb"));
        assert!(!super::is_kernel_log("[x] not a time"));
    }
}
