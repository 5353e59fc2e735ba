//! Runs a VM to its end on the VMM thread: starts the vCPU threads, feeds console input,
//! and acts on their events (shutdown, reset, panic, errors) and on termination signals.
//! A reset either ends the run or rebuilds the VM, per the configuration.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::builder::{self, BuildError, BuiltVm, Serial};
use crate::config::{ResetPolicy, VmConfig};
use crate::console::{ConsoleConfig, ConsoleOutput};
use crate::events::{self, EventReceiver, EventSender, VmEvent};
use crate::vcpu::{VcpuError, VcpuHandle};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    Shutdown,
    /// The guest reset and the policy is to exit.
    Reset,
    /// The guest kernel panicked.
    GuestPanic(String),
    /// A vCPU failed.
    VcpuFailed(String),
    /// The VMM was asked to stop by a signal.
    Signal(i32),
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The VM could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// vCPU threads could not start.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The console could not be opened.
    #[error("cannot open the console: {0}")]
    Console(#[source] std::io::Error),
    /// Waiting for events failed.
    #[error("event loop: {0}")]
    Poll(#[source] std::io::Error),
}

/// A VM whose vCPUs are running.
#[derive(Debug)]
pub struct RunningVm {
    built: BuiltVm,
    vcpus: Vec<VcpuHandle>,
}

impl RunningVm {
    /// Starts every vCPU of a built VM.
    pub fn start(mut built: BuiltVm, events: &EventSender) -> Result<Self, VcpuError> {
        let mut vcpus = Vec::new();
        for (i, fd) in built.vcpus.drain(..).enumerate() {
            vcpus.push(VcpuHandle::spawn(i, fd, built.bus.clone(), events.clone())?);
        }
        Ok(Self { built, vcpus })
    }

    /// Pauses every vCPU outside KVM_RUN.
    pub fn pause(&self) {
        for v in &self.vcpus {
            v.pause();
        }
    }

    /// Resumes every vCPU.
    pub fn resume(&self) {
        for v in &self.vcpus {
            v.resume();
        }
    }

    /// The serial port.
    pub fn serial(&self) -> &Serial {
        &self.built.serial
    }

    /// Stops every vCPU thread and releases the VM.
    pub fn stop(self) {
        for v in self.vcpus {
            v.stop();
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP (threads started later inherit this) and returns a
/// signalfd that reports them to the event loop.
fn termination_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only edit it and this thread's mask.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut info).cast(), size) };
    (n == size as isize).then_some(info.ssi_signo as i32)
}

/// Waits for the next thing to act on: console input, a VM event, or a signal.
fn run_until_event(
    vm: &RunningVm,
    rx: &EventReceiver,
    signals: &OwnedFd,
    stdin_open: &mut bool,
) -> Result<Outcome, RunError> {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: rx.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if *stdin_open {
            fds.push(libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RunError::Poll(e));
        }
        if fds[1].revents != 0 {
            if let Some(sig) = read_signal(signals) {
                return Ok(Outcome::Signal(sig));
            }
        }
        if fds.get(2).is_some_and(|f| f.revents != 0) {
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => *stdin_open = false,
                Ok(n) => vm
                    .serial()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .queue_input(&buf[..n]),
            }
        }
        if fds[0].revents != 0 {
            if let Some(e) = rx.drain().into_iter().next() {
                let panic_seen = || {
                    vm.serial()
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .writer_mut()
                        .panic_started()
                };
                match e {
                    VmEvent::Shutdown => return Ok(Outcome::Shutdown),
                    VmEvent::Reset => {
                        return Ok(match panic_seen() {
                            Some(msg) => Outcome::GuestPanic(msg),
                            None => Outcome::Reset,
                        });
                    }
                    VmEvent::GuestPanic(msg) => return Ok(Outcome::GuestPanic(msg)),
                    VmEvent::VcpuError { index, message } => {
                        return Ok(Outcome::VcpuFailed(format!("vcpu{index}: {message}")));
                    }
                }
            }
        }
    }
}

/// Builds and runs the VM until it ends; with the reboot policy a reset boots it again.
pub fn run(cfg: &VmConfig, start: Instant) -> Result<Outcome, RunError> {
    let signals = termination_signals().map_err(RunError::Poll)?;
    let (tx, rx) = events::channel().map_err(RunError::Poll)?;
    let mut stdin_open = cfg.console == ConsoleConfig::Stdio;
    loop {
        let console =
            ConsoleOutput::open(&cfg.console, Some(tx.clone())).map_err(RunError::Console)?;
        let built = builder::build(cfg, console, start)?;
        log::info!(
            "Setup-time = {} us (process start to first KVM_RUN)",
            start.elapsed().as_micros()
        );
        let vm = RunningVm::start(built, &tx)?;
        let outcome = run_until_event(&vm, &rx, &signals, &mut stdin_open);
        vm.stop();
        let _ = rx.drain();
        match outcome? {
            Outcome::Reset if cfg.on_reset == ResetPolicy::Reboot => {
                log::info!("guest reset: rebooting");
            }
            other => return Ok(other),
        }
    }
}
