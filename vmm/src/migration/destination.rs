//! The destination's migration thread. It binds the listening address at once (so a bad
//! address is the caller's error), then waits for one source: answers its `Hello`, decodes
//! and checks the pre-flight state (every section and its version, the CPU model, the GIC,
//! the counter frequency, the memory size, each drive, tap and vsock path) and refuses with
//! every difference named, or creates the VM and its memory and says `Ready`. Pages go
//! straight into guest memory. At `State` it restores every component, says `Loaded`, and
//! waits: only `Commit` lets it start the guest, which it then hands to the VMM thread and
//! confirms with `Running`. Any failure before that ends the attempt with nothing run.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use migration::engine::DirtyBitmap;
use migration::protocol::{
    Incoming, Message, PAGE_SIZE, ProtocolError, SUPPORTED_VERSIONS, Side, answer_hello,
};
use vm_memory::{Bytes, GuestAddress};

use super::control::MigrationControl;
use super::preflight::check_devices;
use super::wire::{Conn, STALL_TIMEOUT, is_timeout};
use crate::api::migration::{MigrationInfo, MigrationState, ReceiveRequest, Role};
use crate::config::VmConfig;
use crate::console::ConsoleOutput;
use crate::events::{EventSender, VmEvent};
use crate::persist::decode::decode_all;
use crate::persist::{realtime_advance, unix_now_ns};
use crate::runner::RunningVm;
use crate::vm::restore::{Overrides, Prepared, RamSource, complete, prepare};

/// Why an incoming migration failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Accepting the connection failed.
    #[error("cannot accept the source's connection: {0}")]
    Accept(std::io::Error),
    /// This destination refused the guest (the reason went to the source too).
    #[error("refused the guest: {0}")]
    Refused(String),
    /// The conversation broke.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The source stopped sending.
    #[error("the source sent nothing for {0:?}")]
    Stalled(std::time::Duration),
    /// The source aborted, with its reason.
    #[error("the source aborted the migration: {0}")]
    Aborted(String),
    /// The source's operator cancelled.
    #[error("the source cancelled the migration")]
    Cancelled,
    /// What the source sent cannot be used (a page outside memory, state that does not
    /// restore); the reason went to the source in an `Abort`.
    #[error("{0}")]
    Bad(String),
}

/// An incoming migration: its shared state, its thread, and the guest once it runs.
#[derive(Debug)]
pub struct IncomingMigration {
    /// What the VMM thread reads.
    pub control: Arc<MigrationControl>,
    /// The guest and its configuration, taken by the VMM thread on `MigrationIn`.
    pub arrived: Arrived,
    thread: Option<JoinHandle<()>>,
}

/// The guest an incoming migration brought, once it runs.
pub type Arrived = Arc<Mutex<Option<(Arc<RunningVm>, VmConfig)>>>;

impl IncomingMigration {
    /// Takes the guest that arrived.
    pub fn take(&self) -> Option<(Arc<RunningVm>, VmConfig)> {
        self.arrived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for IncomingMigration {
    fn drop(&mut self) {
        // A thread still waiting for a source is left to end with the process.
        if self.is_finished() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Binds `req.address` and starts waiting for a source on a thread of its own. The VMM
/// thread hears `MigrationIn` when the guest runs here, `MigrationEnded` when the attempt
/// failed.
pub fn start(
    base: VmConfig,
    req: ReceiveRequest,
    events: EventSender,
    start: Instant,
) -> Result<IncomingMigration, String> {
    let listener = TcpListener::bind(&req.address)
        .map_err(|e| format!("cannot listen on {}: {e}", req.address))?;
    let local = listener
        .local_addr()
        .map_or(req.address.clone(), |a| a.to_string());
    log::info!("waiting for an incoming migration on tcp:{local}");
    let control = Arc::new(MigrationControl::new(MigrationInfo::new(
        Role::Destination,
        format!("tcp:{local}"),
    )));
    let arrived: Arrived = Arc::new(Mutex::new(None));
    let (c, a) = (control.clone(), arrived.clone());
    let thread = std::thread::Builder::new()
        .name("migration".into())
        .stack_size(crate::THREAD_STACK)
        .spawn(move || {
            let began = Instant::now();
            match receive(&listener, &base, &req, &c, &a, &events, start) {
                Ok(()) => {
                    c.update(|i| i.total_time_ms = began.elapsed().as_secs_f64() * 1e3);
                    c.end(MigrationState::Completed, None);
                    let i = c.info();
                    log::info!(
                        "incoming migration from {} complete: the guest runs here (downtime {:.1} ms here, {} bytes of pages)",
                        i.peer,
                        i.downtime_ms.unwrap_or_default(),
                        i.bytes_sent
                    );
                }
                Err(e) => {
                    let state = if matches!(e, ReceiveError::Cancelled) {
                        MigrationState::Cancelled
                    } else {
                        MigrationState::Failed
                    };
                    log::error!("incoming migration failed: {e}; nothing runs here");
                    c.end(state, Some(e.to_string()));
                    events.send(VmEvent::MigrationEnded);
                }
            }
        })
        .map_err(|e| format!("cannot start the migration thread: {e}"))?;
    Ok(IncomingMigration {
        control,
        arrived,
        thread: Some(thread),
    })
}

fn read_error(e: ProtocolError) -> ReceiveError {
    match e {
        ProtocolError::Read(io) if is_timeout(&io) => ReceiveError::Stalled(STALL_TIMEOUT),
        other => ReceiveError::Protocol(other),
    }
}

/// A message from the source, turning `Abort` and `Cancelled` into errors.
fn next(conn: &mut Conn<TcpStream>) -> Result<Message, ReceiveError> {
    match conn.recv().map_err(read_error)? {
        Message::Abort { reason } => Err(ReceiveError::Aborted(reason)),
        Message::Cancelled => Err(ReceiveError::Cancelled),
        m => Ok(m),
    }
}

#[allow(clippy::too_many_arguments)]
fn receive(
    listener: &TcpListener,
    base: &VmConfig,
    req: &ReceiveRequest,
    control: &MigrationControl,
    arrived: &Arrived,
    events: &EventSender,
    start: Instant,
) -> Result<(), ReceiveError> {
    let (stream, peer) = listener.accept().map_err(ReceiveError::Accept)?;
    log::info!("incoming migration from {peer}");
    control.update(|i| i.peer = format!("tcp:{peer}"));
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(STALL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(STALL_TIMEOUT)))
        .map_err(ReceiveError::Accept)?;
    let mut conn = Conn::new(stream, Side::Destination);
    let result = converse(&mut conn, base, req, control, arrived, events, start);
    if let Err(e) = &result {
        // Tell the source why, if the conversation still allows it.
        let m = match e {
            ReceiveError::Refused(reason) => Message::Refuse {
                reason: reason.clone(),
            },
            other => Message::Abort {
                reason: format!("the destination failed: {other}"),
            },
        };
        let _ = conn.send(&m);
        linger_closed(conn.stream());
    }
    result
}

/// Ends the connection after a failure so that the source reads the reason: the write side
/// closes (the reason is followed by an orderly end, not a reset that could discard it), and
/// what the source still sends is read and dropped until it hangs up, for a second at most.
fn linger_closed(stream: &TcpStream) {
    use std::io::Read;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    let until = Instant::now() + std::time::Duration::from_secs(1);
    let mut sink = vec![0u8; 64 * 1024];
    let mut r = stream;
    while Instant::now() < until {
        match r.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

fn converse(
    conn: &mut Conn<TcpStream>,
    base: &VmConfig,
    req: &ReceiveRequest,
    control: &MigrationControl,
    arrived: &Arrived,
    events: &EventSender,
    start: Instant,
) -> Result<(), ReceiveError> {
    let first = conn.recv().map_err(read_error)?;
    let welcome = answer_hello(&first, SUPPORTED_VERSIONS)?;
    if let Message::Refuse { reason } = welcome {
        return Err(ReceiveError::Refused(reason));
    }
    conn.send(&welcome)?;
    let Message::Preflight { sections } = next(conn)? else {
        return Err(ReceiveError::Bad("expected Preflight".into()));
    };
    let prepared = preflight(base, req, sections)?;
    conn.send(&Message::Ready)?;
    control.update(|i| i.state = MigrationState::Precopy);

    let pages = prepared.ram().size().div_ceil(PAGE_SIZE as u64);
    let mut written = DirtyBitmap::new(pages);
    let zero = vec![0u8; PAGE_SIZE];
    let (state, state_at) = loop {
        let incoming = conn.recv_incoming().map_err(read_error)?;
        match incoming {
            Incoming::Pages(p) => {
                let (mut bytes, mut zeros) = (0u64, 0u64);
                for (index, data) in p.iter() {
                    if index >= pages {
                        return Err(ReceiveError::Bad(format!(
                            "the source sent page {index}, beyond the guest's {pages} pages"
                        )));
                    }
                    let at = GuestAddress(prepared.ram().base() + index * PAGE_SIZE as u64);
                    let bytes_of = match data {
                        Some(d) => {
                            written.set(index);
                            bytes += PAGE_SIZE as u64;
                            d
                        }
                        // Fresh memory is zero: only a page written before needs clearing,
                        // so the zero pages of round 1 allocate nothing.
                        None if written.get(index) => {
                            zeros += 1;
                            &zero[..]
                        }
                        None => {
                            zeros += 1;
                            continue;
                        }
                    };
                    prepared
                        .ram()
                        .guest()
                        .write_slice(bytes_of, at)
                        .map_err(|e| {
                            ReceiveError::Bad(format!("cannot write page {index}: {e}"))
                        })?;
                }
                let n = p.len() as u64;
                control.update(|i| {
                    i.bytes_sent += bytes;
                    i.pages += n;
                    i.zero_pages += zeros;
                });
            }
            Incoming::Message(Message::RoundEnd { round }) => {
                control.update(|i| i.round = round);
            }
            Incoming::Message(Message::State { sections }) => break (sections, Instant::now()),
            Incoming::Message(Message::Abort { reason }) => {
                return Err(ReceiveError::Aborted(reason));
            }
            Incoming::Message(Message::Cancelled) => return Err(ReceiveError::Cancelled),
            Incoming::Message(m) => {
                return Err(ReceiveError::Bad(format!("unexpected {}", m.name())));
            }
        }
    };
    control.update(|i| i.state = MigrationState::Switchover);
    // What the writes above marked in the devices' bitmap is not the guest's doing.
    let _ = prepared.ram().take_device_dirty();
    let console = ConsoleOutput::open(&base.console)
        .map_err(|e| ReceiveError::Bad(format!("cannot open the console: {e}")))?;
    let (built, cfg) = complete(
        prepared,
        state,
        // The counter goes on from the source's value plus the time since it was read.
        |s| realtime_advance(s.saved_at_unix_ns, unix_now_ns(), s.counter_frequency),
        console,
        start,
    )
    .map_err(|e| ReceiveError::Bad(format!("cannot restore the guest: {e}")))?;
    let vm = RunningVm::start(built, events, true)
        .map_err(|e| ReceiveError::Bad(format!("cannot start the guest's threads: {e}")))?;
    conn.send(&Message::Loaded)?;
    // Only the source's Commit lets the guest run here; anything else ends the attempt
    // and the paused VM is dropped unrun.
    match next(conn)? {
        Message::Commit => {}
        m => return Err(ReceiveError::Bad(format!("unexpected {}", m.name()))),
    }
    vm.resume();
    let downtime = state_at.elapsed();
    announce(&vm);
    control.update(|i| i.downtime_ms = Some(downtime.as_secs_f64() * 1e3));
    *arrived.lock().unwrap_or_else(PoisonError::into_inner) = Some((Arc::new(vm), cfg));
    events.send(VmEvent::MigrationIn);
    // The guest is ours now whatever happens to the connection.
    if let Err(e) = conn.send(&Message::Running) {
        log::warn!("the guest runs here, but the source did not hear it: {e}");
    }
    Ok(())
}

/// Tells the network where the guest is now: each interface with a known MAC sends a RARP
/// broadcast from it through its tap.
fn announce(vm: &RunningVm) {
    for (id, t) in &vm.built.virtio {
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        match t.device_mut().announce() {
            Ok(true) => log::info!("{id}: announced the guest's MAC with a RARP broadcast"),
            Ok(false) => {}
            Err(e) => log::warn!("{id}: cannot announce the guest's MAC: {e}"),
        }
    }
}

/// Decodes and checks the pre-flight state, and creates the VM and its memory.
fn preflight(
    base: &VmConfig,
    req: &ReceiveRequest,
    sections: migration::SectionSet,
) -> Result<Prepared, ReceiveError> {
    let refuse = |e: String| ReceiveError::Refused(e);
    let guest = decode_all(sections).map_err(|e| refuse(format!("the guest's state: {e}")))?;
    let overrides = Overrides {
        net: req.net.clone(),
        vsock_uds_path: req.vsock_uds_path.clone(),
        drives: req.drives.clone(),
        track_dirty_pages: false,
    };
    let mut cfg = guest.vm.config.to_config(base, false);
    crate::persist::replace_devices(
        &mut cfg,
        &overrides.net,
        overrides.vsock_uds_path.as_deref(),
        &overrides.drives,
    )
    .map_err(refuse)?;
    // Every device problem at once; then the configuration's own rules.
    check_devices(&cfg, &guest).map_err(refuse)?;
    crate::config::validate_devices(&cfg).map_err(refuse)?;
    prepare(
        base,
        &guest.vm,
        guest.vcpus.first(),
        &overrides,
        RamSource::Fresh,
    )
    .map_err(|e| refuse(e.to_string()))
}
