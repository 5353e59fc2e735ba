//! The VMM thread: the KVM backend of the controller, and the loop that serves API requests,
//! feeds console input, and acts on vCPU events (shutdown, reset, panic, errors) and on
//! termination signals. A reset either ends the run or rebuilds the VM, per the configuration.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use crate::api::server::ApiReceiver;
use crate::config::{ResetPolicy, VmConfig};
use crate::console::ConsoleOutput;
use crate::controller::{Backend, Controller};
use crate::device_manager::DeviceThread;
pub use crate::events::Outcome;
use crate::events::{Decision, EventReceiver, EventSender, VmEvent, decide};
use crate::metrics::METRICS;
use crate::vcpu::{VcpuError, VcpuHandle};
use crate::vm::builder::{self, BuildError, BuiltVm, Serial};

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
    /// A reboot could not build the VM again.
    #[error("cannot reboot the guest: {0}")]
    Restart(String),
}

/// A VM whose vCPU threads have started (running, or paused).
#[derive(Debug)]
pub struct RunningVm {
    pub(crate) built: BuiltVm,
    pub(crate) vcpus: Vec<VcpuHandle>,
    devices: DeviceThread,
}

impl RunningVm {
    /// Starts every vCPU of a built VM, and its device thread; all of them parked when
    /// `paused`.
    pub fn start(
        mut built: BuiltVm,
        events: &EventSender,
        paused: bool,
    ) -> Result<Self, VcpuError> {
        let devices = DeviceThread::start(&built.virtio, paused).map_err(VcpuError::Devices)?;
        let mut vcpus = Vec::new();
        for (i, fd) in built.vcpus.drain(..).enumerate() {
            vcpus.push(VcpuHandle::spawn(
                i,
                fd,
                built.bus.clone(),
                events.clone(),
                paused,
            )?);
        }
        Ok(Self {
            built,
            vcpus,
            devices,
        })
    }

    /// Makes the VM quiescent: every vCPU out of KVM_RUN, then the device thread parked with
    /// no request in flight, so nothing writes guest memory until `resume`.
    pub fn pause(&self) {
        for v in &self.vcpus {
            v.pause();
        }
        self.devices.park();
    }

    /// Lets the devices serve again, then the vCPUs run.
    pub fn resume(&self) {
        self.devices.unpark();
        for v in &self.vcpus {
            v.resume();
        }
    }

    /// The serial port.
    pub fn serial(&self) -> &Serial {
        &self.built.serial
    }

    /// Each virtio device's metrics group, named by its transport id: `block_<id>`,
    /// `net_<id>`, `entropy`.
    pub fn device_metrics(&self) -> Vec<crate::metrics::DeviceGroup> {
        self.built
            .virtio
            .iter()
            .map(|(id, t)| {
                let t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (id.clone(), t.device_metrics())
            })
            .collect()
    }

    /// Points drive `id` at another image and tells the guest.
    pub fn update_device(
        &self,
        device: &str,
        change: crate::controller::DeviceChange,
    ) -> Result<(), String> {
        use crate::controller::DeviceChange;
        let (_, t) = self
            .built
            .virtio
            .iter()
            .find(|(d, _)| *d == device)
            .ok_or(format!("no device {device}"))?;
        let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match change {
            DeviceChange::Backing(path) => t.swap_backing(std::path::Path::new(&path)),
            DeviceChange::RateLimiter(slot, cfg) => t.device_mut().set_rate_limiter(
                slot,
                cfg.as_ref()
                    .map(crate::api::model::RateLimiterConfig::build),
            ),
        }
    }

    /// Stops every vCPU thread, then the device thread, and releases the VM.
    pub fn stop(self) {
        for v in self.vcpus {
            v.stop();
        }
        drop(self.devices);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP (threads started later inherit this) and returns a
/// signalfd that reports them to the event loop. Call before starting any thread.
pub fn termination_signals() -> std::io::Result<OwnedFd> {
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

/// The KVM backend of the controller.
#[derive(Debug)]
pub struct KvmBackend {
    events: EventSender,
    start: Instant,
    outgoing: Option<crate::migration::source::Outgoing>,
    incoming: Option<crate::migration::destination::IncomingMigration>,
}

impl KvmBackend {
    /// A backend reporting to `events`; `start` is the process start, for boot figures.
    pub fn new(events: EventSender, start: Instant) -> Self {
        Self {
            events,
            start,
            outgoing: None,
            incoming: None,
        }
    }

    /// The guest an incoming migration brought, once it runs.
    pub fn take_arrived(&mut self) -> Option<(Arc<RunningVm>, VmConfig)> {
        self.incoming
            .as_ref()
            .and_then(crate::migration::destination::IncomingMigration::take)
    }

    /// Stops an outgoing migration (cancels it unless committed) and waits for its thread,
    /// so that nothing else holds the VM.
    pub fn stop_migration(&mut self) {
        if let Some(o) = self.outgoing.as_mut() {
            o.stop();
        }
    }
}

/// Stops a VM that may still be shared with a migration thread that has ended.
pub fn stop_vm(vm: Arc<RunningVm>) {
    if let Ok(vm) = Arc::try_unwrap(vm) {
        vm.stop();
    }
}

impl Backend for KvmBackend {
    type Vm = Arc<RunningVm>;

    fn start(&mut self, cfg: &VmConfig) -> Result<Arc<RunningVm>, String> {
        let console = ConsoleOutput::open(&cfg.console)
            .map_err(|e| format!("cannot open the console: {e}"))?;
        let built = builder::build(cfg, console, self.start).map_err(|e| e.to_string())?;
        let setup = self.start.elapsed().as_micros();
        METRICS.vmm.setup_time_us.set(setup as u64);
        log::info!("Setup-time = {setup} us (process start to first KVM_RUN)");
        RunningVm::start(built, &self.events, false)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    }

    fn pause(&mut self, vm: &Arc<RunningVm>) {
        vm.pause();
    }

    fn resume(&mut self, vm: &Arc<RunningVm>) {
        vm.resume();
    }

    fn update_device(
        &mut self,
        vm: &Arc<RunningVm>,
        device: &str,
        change: crate::controller::DeviceChange,
    ) -> Result<(), String> {
        vm.update_device(device, change)
    }

    fn device_metrics(&mut self, vm: &Arc<RunningVm>) -> Vec<crate::metrics::DeviceGroup> {
        vm.device_metrics()
    }

    fn snapshot(
        &mut self,
        vm: &Arc<RunningVm>,
        cfg: &VmConfig,
        params: &crate::api::snapshot::SnapshotCreateParams,
    ) -> Result<(), String> {
        let stats = crate::persist::create::create(vm, cfg, params).map_err(|e| e.to_string())?;
        log::info!(
            "snapshot {} written; memory file {}: {} pages ({} bytes)",
            params.snapshot_path,
            params.mem_file_path,
            stats.memory.pages,
            stats.memory.bytes
        );
        Ok(())
    }

    fn load(
        &mut self,
        base: &VmConfig,
        req: &crate::api::snapshot::LoadRequest,
    ) -> Result<(Arc<RunningVm>, VmConfig), String> {
        let console = ConsoleOutput::open(&base.console)
            .map_err(|e| format!("cannot open the console: {e}"))?;
        let (built, cfg) = crate::vm::restore::restore(base, req, console, self.start)
            .map_err(|e| e.to_string())?;
        let vm =
            RunningVm::start(built, &self.events, !req.resume_vm).map_err(|e| e.to_string())?;
        log::info!("snapshot {} loaded", req.snapshot_path);
        Ok((Arc::new(vm), cfg))
    }

    fn migrate_send(
        &mut self,
        vm: &Arc<RunningVm>,
        cfg: &VmConfig,
        req: crate::api::migration::SendRequest,
    ) -> Result<(), String> {
        // The last attempt's thread has ended (the controller checked that none is going
        // on); join it before the next starts.
        self.stop_migration();
        log::info!("migrating the guest to {}", req.destination);
        self.outgoing = Some(crate::migration::source::start(
            vm.clone(),
            cfg.clone(),
            req,
            self.events.clone(),
        )?);
        Ok(())
    }

    fn migrate_receive(
        &mut self,
        base: &VmConfig,
        req: crate::api::migration::ReceiveRequest,
    ) -> Result<(), String> {
        self.incoming = Some(crate::migration::destination::start(
            base.clone(),
            req,
            self.events.clone(),
            self.start,
        )?);
        Ok(())
    }

    fn migration(&self) -> Option<crate::api::migration::MigrationInfo> {
        // The latest of the two: a guest that arrived here may be sent on.
        self.outgoing
            .as_ref()
            .map(|o| o.control.info())
            .or_else(|| self.incoming.as_ref().map(|i| i.control.info()))
    }

    fn migration_cancel(&mut self) -> Result<(), String> {
        match &self.outgoing {
            Some(o) => o.control.cancel(),
            None if self.incoming.is_some() => Err(
                "an incoming migration is cancelled on its source (PUT /migration/cancel there)"
                    .into(),
            ),
            None => Err("no migration is in progress".into()),
        }
    }
}

/// The VMM thread's inputs besides the controller.
#[derive(Debug)]
pub struct LoopInputs<'a> {
    /// vCPU and device events.
    pub events: &'a EventReceiver,
    /// API requests, when serving the API.
    pub api: Option<&'a ApiReceiver>,
    /// Termination signals.
    pub signals: &'a OwnedFd,
    /// Whether stdin feeds the serial console.
    pub stdin_console: bool,
}

const METRICS_PERIOD_MS: i32 = 60_000;

/// Runs the VMM thread's loop until the instance ends: answers API requests, feeds console
/// input, acts on VM events and signals, and flushes metrics every minute.
pub fn run(ctl: &mut Controller<KvmBackend>, io: &LoopInputs<'_>) -> Result<Outcome, RunError> {
    let mut stdin_open = io.stdin_console;
    let mut buf = [0u8; 4096];
    let outcome = loop {
        let mut fds = vec![
            libc::pollfd {
                fd: io.events.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: io.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: io.api.map_or(-1, |a| a.wake_fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let console_input = stdin_open && ctl.vm().is_some();
        if console_input {
            fds.push(libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                METRICS_PERIOD_MS,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RunError::Poll(e));
        }
        if n == 0 {
            if ctl.metrics_sink().is_some() {
                if let Err(e) = ctl.flush_metrics() {
                    log::warn!("metrics: {e}");
                }
            }
            continue;
        }
        if fds[1].revents != 0 {
            if let Some(sig) = read_signal(io.signals) {
                break Outcome::Signal(sig);
            }
        }
        if fds[2].revents != 0 {
            if let Some(api) = io.api {
                for call in api.drain() {
                    let resp = ctl.handle(call.request);
                    let _ = call.reply.send(resp);
                }
            }
        }
        if fds.get(3).is_some_and(|f| f.revents != 0) {
            match std::io::stdin().lock().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    if let Some(vm) = ctl.vm() {
                        vm.serial()
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .queue_input(&buf[..n]);
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            if let Some(o) = on_vm_events(ctl, io.events)? {
                break o;
            }
        }
    };
    if matches!(
        outcome,
        Outcome::Migrated(_) | Outcome::MigrationUnconfirmed(_)
    ) {
        if let Some(api) = io.api {
            linger(ctl, api);
        }
    }
    // The last line, with the devices' final counters, before they go.
    if ctl.metrics_sink().is_some() {
        let _ = ctl.flush_metrics();
    }
    ctl.backend_mut().stop_migration();
    if let Some(vm) = ctl.take_vm() {
        stop_vm(vm);
    }
    Ok(outcome)
}

/// Acts on VM events; returns the outcome when the instance ends.
fn on_vm_events(
    ctl: &mut Controller<KvmBackend>,
    rx: &EventReceiver,
) -> Result<Option<Outcome>, RunError> {
    let events = rx.drain();
    if events.is_empty() {
        return Ok(None);
    }
    for e in &events {
        match e {
            VmEvent::MigratedAway {
                destination,
                error: None,
            } => return Ok(Some(Outcome::Migrated(destination.clone()))),
            VmEvent::MigratedAway { error: Some(e), .. } => {
                return Ok(Some(Outcome::MigrationUnconfirmed(e.clone())));
            }
            VmEvent::MigrationIn => {
                if let Some((vm, cfg)) = ctl.backend_mut().take_arrived() {
                    ctl.adopt(vm, cfg);
                }
            }
            // A destination that received nothing ends; a source runs on.
            VmEvent::MigrationEnded if ctl.vm().is_none() => {
                let why = ctl
                    .backend_mut()
                    .migration()
                    .and_then(|m| m.error)
                    .unwrap_or_else(|| "the incoming migration failed".into());
                return Ok(Some(Outcome::IncomingFailed(why)));
            }
            _ => {}
        }
    }
    let pending_panic = ctl.vm().and_then(|vm| {
        vm.serial()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .writer_mut()
            .pending_panic()
    });
    let reboot = ctl
        .vm_config()
        .is_ok_and(|c| c.on_reset == ResetPolicy::Reboot);
    match decide(&events, pending_panic, reboot) {
        Decision::Continue => Ok(None),
        Decision::End(o) => Ok(Some(o)),
        Decision::Reboot => {
            log::info!("guest reset: rebooting");
            ctl.backend_mut().stop_migration();
            if let Some(vm) = ctl.take_vm() {
                stop_vm(vm);
            }
            // Reports from the old VM's vCPUs, sent while it stopped, are about it.
            let _ = rx.drain();
            ctl.start().map_err(RunError::Restart)?;
            Ok(None)
        }
    }
}

/// After the guest has migrated away, keeps answering the API for a moment, so that a
/// client following the migration (`vmm send`) reads its end before the process exits:
/// until 300 ms after the first `GET /migration` that reports it, or 5 s at most.
fn linger(ctl: &mut Controller<KvmBackend>, api: &ApiReceiver) {
    let until = Instant::now() + std::time::Duration::from_secs(5);
    let mut answered: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let end = match answered {
            Some(t) => until.min(t + std::time::Duration::from_millis(300)),
            None => until,
        };
        if now >= end {
            return;
        }
        let mut fds = [libc::pollfd {
            fd: api.wake_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let wait = (end - now).as_millis().min(1000) as i32;
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, wait.max(1)) };
        if n <= 0 {
            continue;
        }
        for call in api.drain() {
            let migration = call.request == crate::api::router::ApiRequest::GetMigration;
            let resp = ctl.handle(call.request);
            let _ = call.reply.send(resp);
            if migration && answered.is_none() {
                answered = Some(Instant::now());
            }
        }
    }
}
