//! vCPU threads. Each owns its `VcpuFd` and runs KVM_RUN in a loop, dispatching MMIO exits to
//! the bus and reporting system events. Any vCPU can be paused outside KVM_RUN and resumed:
//! the pauser sets the request, then kicks the thread with a real-time signal until the
//! thread confirms, so a kick that lands just before KVM_RUN is simply repeated.
//!
//! ```text
//! VMM thread                         vCPU thread
//!   want = Pause ------------------>  (in KVM_RUN, holding the fd's lock)
//!   pthread_kill(SIGRTMIN) -------->  KVM_RUN returns EINTR, lock released
//!   wait until paused <------------   sees want = Pause: paused = true, waits
//!   lock the fd: read/write registers (save, restore)
//!   want = Run, notify ------------>  paused = false, back into KVM_RUN
//! ```
//!
//! The VMM keeps every `VcpuFd` behind a mutex that the vCPU thread holds only around one
//! KVM_RUN and the exit it handles, so while a vCPU is paused its registers can be read and
//! written from the VMM thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use devices::MmioBus;

use crate::events::{EventSender, VmEvent};
use crate::metrics::METRICS;

/// How often a pause or stop request re-sends the kick until the vCPU confirms.
const KICK_RETRY: Duration = Duration::from_millis(1);

/// Errors managing vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be started.
    #[error("cannot start vCPU thread {0}: {1}")]
    Spawn(usize, #[source] std::io::Error),
    /// The device thread could not be started.
    #[error("cannot start the virtio device thread: {0}")]
    Devices(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Run,
    Pause,
    Stop,
}

#[derive(Debug)]
struct Shared {
    want: Want,
    paused: bool,
    exited: bool,
    /// Held out of KVM_RUN by the migration throttle: separate from `want`, so lifting a
    /// hold never resumes a vCPU the user paused.
    held: bool,
}

#[derive(Debug)]
struct Control {
    state: Mutex<Shared>,
    cv: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (empty) kick handler once per process; its only job is to interrupt KVM_RUN.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal);
    });
    result
}

/// A vCPU's descriptor, shared between its thread and the VMM.
pub type SharedVcpu = Arc<Mutex<VcpuFd>>;

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: usize,
    fd: SharedVcpu,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Starts a thread running `vcpu`, or parked until `resume` when `paused` (a restored
    /// VM stays paused until asked to resume).
    pub fn spawn(
        index: usize,
        vcpu: VcpuFd,
        bus: Arc<MmioBus>,
        events: EventSender,
        paused: bool,
    ) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        let control = Arc::new(Control {
            state: Mutex::new(Shared {
                want: if paused { Want::Pause } else { Want::Run },
                paused: false,
                exited: false,
                held: false,
            }),
            cv: Condvar::new(),
        });
        let c = control.clone();
        let fd: SharedVcpu = Arc::new(Mutex::new(vcpu));
        let shared = fd.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(crate::THREAD_STACK)
            .spawn(move || run_loop(index, &shared, &bus, &events, &c))
            .map_err(|e| VcpuError::Spawn(index, e))?;
        Ok(Self {
            index,
            fd,
            control,
            thread: Some(thread),
        })
    }

    /// The vCPU's index.
    pub fn index(&self) -> usize {
        self.index
    }

    fn request_and_wait(&self, want: Want, done: fn(&Shared) -> bool) {
        let mut s = self.control.lock();
        s.want = want;
        self.control.cv.notify_all();
        while !done(&s) && !s.exited {
            if let Some(t) = &self.thread {
                let _ = t.kill(kick_signal());
            }
            s = self
                .control
                .cv
                .wait_timeout(s, KICK_RETRY)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Stops the vCPU outside KVM_RUN; returns once it is parked (or has exited).
    pub fn pause(&self) {
        self.request_and_wait(Want::Pause, |s| s.paused);
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&self) {
        let mut s = self.control.lock();
        if s.want == Want::Pause {
            s.want = Want::Run;
            self.control.cv.notify_all();
        }
    }

    /// A handle that holds this vCPU out of KVM_RUN from another thread (the migration
    /// throttle); `None` once the thread has ended.
    pub fn hold_handle(&self) -> Option<VcpuHold> {
        use std::os::unix::thread::JoinHandleExt;
        self.thread.as_ref().map(|t| VcpuHold {
            control: self.control.clone(),
            thread: t.as_pthread_t(),
        })
    }

    /// Whether the vCPU is parked by a pause.
    pub fn is_paused(&self) -> bool {
        self.control.lock().paused
    }

    /// The vCPU's descriptor, if the vCPU is paused (or its thread has ended), so that its
    /// registers can be read or written; `None` while it runs.
    pub fn fd_if_paused(&self) -> Option<MutexGuard<'_, VcpuFd>> {
        let s = self.control.lock();
        if !(s.paused || s.exited) {
            return None;
        }
        drop(s);
        Some(
            self.fd
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Stops the thread and waits for it to end.
    pub fn stop(mut self) {
        self.request_and_wait(Want::Stop, |s| s.exited);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.request_and_wait(Want::Stop, |s| s.exited);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Holds a vCPU out of KVM_RUN and lets it go again, from any thread. A hold is not a pause:
/// a vCPU the user paused stays paused when its hold is released.
#[derive(Debug, Clone)]
pub struct VcpuHold {
    control: Arc<Control>,
    thread: std::os::unix::thread::RawPthread,
}

impl VcpuHold {
    /// Takes the vCPU out of KVM_RUN; returns once it is parked (or has ended).
    pub fn hold(&self) {
        let mut s = self.control.lock();
        s.held = true;
        self.control.cv.notify_all();
        while !s.paused && !s.exited {
            // SAFETY: the lock is held, so the thread cannot pass `finish` and end: its
            // pthread_t is still valid; the signal's handler does nothing.
            unsafe { libc::pthread_kill(self.thread as libc::pthread_t, kick_signal()) };
            s = self
                .control
                .cv
                .wait_timeout(s, KICK_RETRY)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Lets the vCPU run again, unless it is paused.
    pub fn release(&self) {
        self.control.lock().held = false;
        self.control.cv.notify_all();
    }
}

/// Parks while paused; returns false when the thread must end.
fn checkpoint(c: &Control) -> bool {
    let mut s = c.lock();
    while s.want == Want::Pause || (s.held && s.want != Want::Stop) {
        if !s.paused {
            s.paused = true;
            c.cv.notify_all();
        }
        s =
            c.cv.wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    s.paused = false;
    s.want != Want::Stop
}

fn finish(c: &Control) {
    let mut s = c.lock();
    s.exited = true;
    s.paused = false;
    c.cv.notify_all();
}

fn run_loop(index: usize, fd: &Mutex<VcpuFd>, bus: &MmioBus, events: &EventSender, c: &Control) {
    while checkpoint(c) {
        // Held for one KVM_RUN and its exit only: a paused vCPU leaves its fd to the VMM.
        let mut vcpu = fd.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match vcpu.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                METRICS.vcpu.exit_mmio_read.inc();
                if !bus.read(addr, data) {
                    log::debug!("vcpu{index}: read of unmapped MMIO {addr:#x}");
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                METRICS.vcpu.exit_mmio_write.inc();
                if !bus.write(addr, data) {
                    log::debug!("vcpu{index}: write to unmapped MMIO {addr:#x}");
                }
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => events.send(VmEvent::Shutdown),
                    KVM_SYSTEM_EVENT_RESET => events.send(VmEvent::Reset),
                    other => events.send(VmEvent::VcpuError {
                        index,
                        message: format!("unexpected system event {other}"),
                    }),
                }
                break;
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                METRICS.vcpu.failures.inc();
                events.send(VmEvent::VcpuError {
                    index,
                    message: format!("unexpected exit {other:?}"),
                });
                break;
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                events.send(VmEvent::VcpuError {
                    index,
                    message: format!("KVM_RUN failed: {e}"),
                });
                break;
            }
        }
    }
    finish(c);
}
