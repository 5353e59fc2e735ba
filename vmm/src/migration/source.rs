//! The source's migration thread. It connects, agrees on a protocol version, sends the
//! guest's state for the destination's pre-flight checks (collected in a pause of a few
//! milliseconds), runs the pre-copy engine over the guest's memory while it runs, pauses it,
//! sends the last pages and all device, vCPU and vGIC state, waits until the destination has
//! loaded it, commits, and waits for the destination's word that it runs the guest.
//!
//! Before the commit point every failure (an error of either side, a refusal, a cut or
//! stalled connection, cancel, timeout) ends with the guest running here as before: dirty
//! logging off, the throttle lifted, the vCPUs resumed if this thread paused them. From the
//! commit point on, the guest never runs here again. The sequence is in vmm/DESIGN.md.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use migration::engine::{self, Clock, EngineError};
use migration::protocol::{Message, SUPPORTED_VERSIONS, Side, accept_welcome, hello};

use super::control::MigrationControl;
use super::dirty::GuestDirtySource;
use super::throttle::VcpuThrottle;
use super::wire::{Conn, PageSender, STALL_TIMEOUT, is_timeout};
use crate::api::migration::{MigrationInfo, MigrationState, Role, SendRequest};
use crate::config::VmConfig;
use crate::events::{EventSender, VmEvent};
use crate::runner::RunningVm;

/// How long connecting to the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a migration failed; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The destination could not be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The destination refused the guest, with its reason.
    #[error("the destination refused the guest: {0}")]
    Refused(String),
    /// The destination aborted, with its reason.
    #[error("the destination aborted the migration: {0}")]
    Aborted(String),
    /// The conversation broke.
    #[error("{0}")]
    Protocol(#[from] migration::protocol::ProtocolError),
    /// The destination took too long.
    #[error("the destination did not answer within {0:?} ({1})")]
    Stalled(Duration, &'static str),
    /// The engine stopped (transport, guest memory, timeout, cancel).
    #[error("{0}")]
    Engine(String),
    /// The guest's state could not be collected.
    #[error("cannot collect the guest's state: {0}")]
    State(String),
    /// The throttle thread could not start.
    #[error("cannot start the vCPU throttle: {0}")]
    Throttle(std::io::Error),
    /// Cancelled by the operator.
    #[error("cancelled")]
    Cancelled,
    /// Committed, but the destination did not confirm that it runs the guest.
    #[error(
        "the migration was committed but the destination did not confirm that it runs the guest ({0}); the guest does not run here any more"
    )]
    Unconfirmed(String),
}

/// The monotonic clock of the engine.
#[derive(Debug)]
struct RealClock(Instant);

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// An outgoing migration: its shared state and its thread.
#[derive(Debug)]
pub struct Outgoing {
    /// What the VMM thread reads and cancels through.
    pub control: Arc<MigrationControl>,
    thread: Option<JoinHandle<()>>,
}

impl Outgoing {
    /// Cancels it (if it has not committed) and waits for the thread to end.
    pub fn stop(&mut self) {
        let _ = self.control.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts migrating `vm` (built from `cfg`) on a thread of its own. When it ends, the VMM
/// thread hears of it through `events`: `MigratedAway` after the commit point,
/// `MigrationEnded` otherwise (the guest runs on here).
pub fn start(
    vm: Arc<RunningVm>,
    cfg: VmConfig,
    req: SendRequest,
    events: EventSender,
) -> Result<Outgoing, String> {
    let control = Arc::new(MigrationControl::new(MigrationInfo::new(
        Role::Source,
        req.destination.clone(),
    )));
    let c = control.clone();
    let thread = std::thread::Builder::new()
        .name("migration".into())
        .stack_size(crate::THREAD_STACK)
        .spawn(move || {
            let started = Instant::now();
            let outcome = run(&vm, &cfg, &req, &c, started);
            c.update(|i| i.total_time_ms = started.elapsed().as_secs_f64() * 1e3);
            match outcome {
                Ok(()) => {
                    c.end(MigrationState::Completed, None);
                    let i = c.info();
                    log::info!(
                        "migration to {} complete: the guest runs there now (downtime {:.1} ms, total {:.0} ms, {} bytes of pages in {} rounds)",
                        req.destination,
                        i.downtime_ms.unwrap_or_default(),
                        i.total_time_ms,
                        i.bytes_sent,
                        i.round
                    );
                    events.send(VmEvent::MigratedAway {
                        destination: req.destination.clone(),
                        error: None,
                    });
                }
                Err(e) if c.committed() => {
                    c.end(MigrationState::Failed, Some(e.to_string()));
                    log::error!("migration to {}: {e}", req.destination);
                    events.send(VmEvent::MigratedAway {
                        destination: req.destination.clone(),
                        error: Some(e.to_string()),
                    });
                }
                Err(e) => {
                    let state = if matches!(e, SendError::Cancelled) || c.cancelled() {
                        MigrationState::Cancelled
                    } else {
                        MigrationState::Failed
                    };
                    let message = if state == MigrationState::Cancelled {
                        "cancelled".to_string()
                    } else {
                        e.to_string()
                    };
                    log::warn!(
                        "migration to {} {}: {message}; the guest keeps running here",
                        req.destination,
                        state.name()
                    );
                    c.end(state, Some(message));
                    events.send(VmEvent::MigrationEnded);
                }
            }
        })
        .map_err(|e| format!("cannot start the migration thread: {e}"))?;
    Ok(Outgoing {
        control,
        thread: Some(thread),
    })
}

fn connect(address: &str) -> Result<TcpStream, SendError> {
    let fail = |e: String| SendError::Connect(address.to_string(), e);
    let addrs: Vec<_> = address
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .collect();
    let mut last = "the name resolves to no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(fail(last))
}

/// What a protocol error means, with the destination's reason when it sent one.
fn read_error(e: migration::protocol::ProtocolError, waiting_for: &'static str) -> SendError {
    use migration::protocol::ProtocolError as P;
    match e {
        P::Read(io) if is_timeout(&io) => SendError::Stalled(STALL_TIMEOUT, waiting_for),
        other => SendError::Protocol(other),
    }
}

/// Reads the destination's answer, turning `Refuse` and `Abort` into errors.
fn answer(conn: &mut Conn<TcpStream>, waiting_for: &'static str) -> Result<Message, SendError> {
    match conn.recv().map_err(|e| read_error(e, waiting_for))? {
        Message::Refuse { reason } => Err(SendError::Refused(reason)),
        Message::Abort { reason } => Err(SendError::Aborted(reason)),
        m => Ok(m),
    }
}

/// After a failed write, the reason the destination gave, if it gave one.
fn why_closed(conn: &mut Conn<TcpStream>) -> Option<String> {
    let _ = conn
        .stream()
        .set_read_timeout(Some(Duration::from_millis(500)));
    match conn.recv() {
        Ok(Message::Abort { reason } | Message::Refuse { reason }) => Some(reason),
        _ => None,
    }
}

fn run(
    vm: &RunningVm,
    cfg: &VmConfig,
    req: &SendRequest,
    control: &MigrationControl,
    started: Instant,
) -> Result<(), SendError> {
    let stream = connect(&req.address)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(STALL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(STALL_TIMEOUT)))
        .map_err(|e| SendError::Connect(req.address.clone(), e.to_string()))?;
    if let Ok(s) = stream.try_clone() {
        control.set_stream(s);
    }
    let mut conn = Conn::new(stream, Side::Source);
    let result = converse(vm, cfg, req, control, &mut conn, started);
    if let Err(e) = &result {
        if !control.committed() {
            // Tell the destination, if it still listens, so it ends at once.
            let m = if control.cancelled() {
                Message::Cancelled
            } else {
                Message::Abort {
                    reason: format!("the source failed: {e}"),
                }
            };
            let _ = conn.send(&m);
        }
    }
    result
}

fn converse(
    vm: &RunningVm,
    cfg: &VmConfig,
    req: &SendRequest,
    control: &MigrationControl,
    conn: &mut Conn<TcpStream>,
    started: Instant,
) -> Result<(), SendError> {
    conn.send(&hello(crate::VERSION))?;
    match answer(conn, "Welcome")? {
        Message::Welcome { protocol_version } => {
            accept_welcome(protocol_version, SUPPORTED_VERSIONS)?;
        }
        m => return Err(SendError::Protocol(unexpected(m, "Welcome"))),
    }
    // The pre-flight: every section, which the destination decodes and checks before any
    // page moves, collected while the guest runs (each vCPU is held only to read its ID
    // registers).
    let sections = crate::persist::create::collect_preflight(vm, cfg)
        .map_err(|e| SendError::State(e.to_string()))?;
    conn.send(&Message::Preflight { sections })?;
    match answer(conn, "Ready")? {
        Message::Ready => {}
        m => return Err(SendError::Protocol(unexpected(m, "Ready"))),
    }
    if control.cancelled() {
        return Err(SendError::Cancelled);
    }

    let built = &vm.built;
    let mut source = GuestDirtySource::new(&built.vm, &built.ram, built.track_dirty_pages);
    let holds = vm
        .vcpus
        .iter()
        .filter_map(crate::vcpu::VcpuHandle::hold_handle)
        .collect();
    let mut throttle = VcpuThrottle::start(holds).map_err(SendError::Throttle)?;
    let clock = RealClock(started);
    let mut report = |p: &engine::Progress| control.update(|i| i.update(p));
    let switchover = {
        let mut transport = PageSender { conn: &mut *conn };
        engine::precopy(
            &req.params,
            &mut source,
            &mut transport,
            &clock,
            &mut throttle,
            control.cancel_flag(),
            &mut report,
        )
    };
    let switchover = match switchover {
        Ok(s) => s,
        Err(e) => return Err(engine_error(e, conn)),
    };

    // The switchover: from here until the commit or a failure, the guest is paused.
    let paused_at = Instant::now();
    vm.pause();
    let result = switch_over(
        vm,
        cfg,
        control,
        conn,
        switchover,
        &mut source,
        &mut throttle,
        &clock,
        &mut report,
        paused_at,
    );
    drop(throttle);
    if result.is_err() && !control.committed() {
        vm.resume();
    }
    result
}

/// The pause: the last pages, the state, `Loaded`, the commit, `Running`.
#[allow(clippy::too_many_arguments)]
fn switch_over(
    vm: &RunningVm,
    cfg: &VmConfig,
    control: &MigrationControl,
    conn: &mut Conn<TcpStream>,
    switchover: engine::Switchover,
    source: &mut GuestDirtySource<'_>,
    throttle: &mut VcpuThrottle,
    clock: &RealClock,
    report: &mut impl FnMut(&engine::Progress),
    paused_at: Instant,
) -> Result<(), SendError> {
    let finished = {
        let mut transport = PageSender { conn: &mut *conn };
        engine::finish(
            switchover,
            source,
            &mut transport,
            clock,
            throttle,
            control.cancel_flag(),
            report,
        )
    };
    if let Err(e) = finished {
        return Err(engine_error(e, conn));
    }
    let sections =
        crate::persist::create::collect(vm, cfg).map_err(|e| SendError::State(e.to_string()))?;
    conn.send(&Message::State { sections })?;
    match answer(conn, "Loaded") {
        Ok(Message::Loaded) => {}
        Ok(m) => return Err(SendError::Protocol(unexpected(m, "Loaded"))),
        Err(_) if control.cancelled() => return Err(SendError::Cancelled),
        Err(e) => return Err(e),
    }
    if !control.commit() {
        return Err(SendError::Cancelled);
    }
    // The commit point: whatever happens next, the guest never runs here again.
    conn.send(&Message::Commit)
        .map_err(|e| SendError::Unconfirmed(e.to_string()))?;
    match conn.recv() {
        Ok(Message::Running) => {}
        Ok(m) => return Err(SendError::Unconfirmed(format!("it sent {}", m.name()))),
        Err(e) => return Err(SendError::Unconfirmed(e.to_string())),
    }
    let downtime = paused_at.elapsed();
    control.update(|i| {
        i.downtime_ms = Some(downtime.as_secs_f64() * 1e3);
        i.bytes_remaining = 0;
    });
    Ok(())
}

fn unexpected(m: Message, wanted: &str) -> migration::protocol::ProtocolError {
    migration::protocol::ProtocolError::Unexpected {
        expected: format!("waiting for {wanted} from the destination"),
        got: m.name().to_string(),
    }
}

/// An engine error in words, with the destination's reason when a write failed because it
/// gave up.
fn engine_error(e: EngineError<super::dirty::DirtyError>, conn: &mut Conn<TcpStream>) -> SendError {
    match e {
        EngineError::Cancelled => SendError::Cancelled,
        EngineError::Transport(engine::TransportError::Refused(reason)) => {
            SendError::Aborted(reason)
        }
        EngineError::Transport(t) => match why_closed(conn) {
            Some(reason) => SendError::Aborted(reason),
            None => SendError::Engine(t.to_string()),
        },
        other => SendError::Engine(other.to_string()),
    }
}
