//! Running external programs with errors that name the program and its arguments.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Builds a `Command` from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Describes a command for error messages.
pub fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails if it cannot start or exits non-zero.
pub fn run(c: &mut Command) -> Result<()> {
    let status = c
        .status()
        .with_context(|| format!("cannot start `{}`", describe(c)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(c));
    }
    Ok(())
}

/// Runs a command, captures its output, and fails with its stderr if it exits non-zero.
pub fn output(c: &mut Command) -> Result<String> {
    let out: Output = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed with {}:\n{}",
            describe(c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How a bounded run ended.
#[derive(Debug)]
pub struct Bounded {
    pub status: ExitStatus,
    /// It was still running at the time limit and was killed.
    pub timed_out: bool,
}

/// How long output is still read after a run is killed: a process it started may hold the
/// pipe open.
const DRAIN: Duration = Duration::from_secs(10);

/// A pipe whose ends are closed on exec; (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs `c` and hands each line of its stdout (with `merge_stderr`, of its stdout and stderr
/// through one pipe, so their order is kept) to `each`. Kills it (SIGKILL) if it still runs
/// after `limit`; then reads what is left for at most [`DRAIN`].
pub fn run_lines(
    mut c: Command,
    merge_stderr: bool,
    limit: Duration,
    each: &mut dyn FnMut(&str),
) -> Result<Bounded> {
    let what = describe(&c);
    let mut child;
    let out: Box<dyn Read + Send> = if merge_stderr {
        let (r, w) = pipe()?;
        c.stdout(Stdio::from(w.try_clone()?)).stderr(Stdio::from(w));
        child = c.spawn().with_context(|| format!("cannot run `{what}`"))?;
        // The command holds the write ends: without dropping it, the pipe never ends.
        drop(c);
        Box::new(std::fs::File::from(r))
    } else {
        c.stdout(Stdio::piped());
        child = c.spawn().with_context(|| format!("cannot run `{what}`"))?;
        Box::new(child.stdout.take().context("no stdout")?)
    };
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        // Bytes, not `lines()`: output that is not UTF-8 must not end the reading.
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            if tx
                .send(line.trim_end_matches(['\n', '\r']).to_string())
                .is_err()
            {
                return;
            }
            buf.clear();
        }
    });
    let mut deadline = Instant::now() + limit;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => each(&l),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) if timed_out => break,
            Err(RecvTimeoutError::Timeout) => {
                eprintln!(
                    "xtask: `{what}` still running after {} s; killing it",
                    limit.as_secs()
                );
                let _ = child.kill();
                timed_out = true;
                deadline = Instant::now() + DRAIN;
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{what}`"))?;
    Ok(Bounded { status, timed_out })
}

/// Whether a program can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Quotes a word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(c: Command, merge: bool, limit: Duration) -> (Vec<String>, Bounded) {
        let mut got = Vec::new();
        let b = run_lines(c, merge, limit, &mut |l| got.push(l.to_string())).expect("runs");
        (got, b)
    }

    #[test]
    fn lines_keep_their_order_across_stdout_and_stderr() {
        let c = cmd("sh", ["-c", "echo one; echo two >&2; echo three; exit 4"]);
        let (got, b) = lines_of(c, true, Duration::from_secs(60));
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!((b.status.code(), b.timed_out), (Some(4), false));
    }

    #[test]
    fn a_run_past_its_limit_is_killed() {
        let c = cmd("sh", ["-c", "exec sleep 600"]);
        let (_, b) = lines_of(c, false, Duration::from_millis(300));
        assert!(b.timed_out);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&b.status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn quoting_keeps_words_intact() {
        assert_eq!(shell_quote("grep"), "grep");
        assert_eq!(shell_quote("CPU part"), "'CPU part'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
