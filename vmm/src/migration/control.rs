//! What the VMM thread and a migration thread share: the report `GET /migration` answers,
//! the cancel flag, and the gate at the commit point. Cancel and commit take the same lock,
//! so exactly one of them wins: a cancel that comes first stops the migration before
//! `Commit` is sent; one that comes after is refused, because the destination owns the
//! guest from then on. Portable.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::api::migration::{MigrationInfo, MigrationState};

#[derive(Debug, Default)]
struct Gate {
    committed: bool,
    /// The connection, so that a cancel can wake a thread blocked reading it.
    stream: Option<TcpStream>,
}

/// One migration's shared state.
#[derive(Debug)]
pub struct MigrationControl {
    info: Mutex<MigrationInfo>,
    cancel: AtomicBool,
    gate: Mutex<Gate>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MigrationControl {
    /// A migration that has just begun.
    pub fn new(info: MigrationInfo) -> Self {
        Self {
            info: Mutex::new(info),
            cancel: AtomicBool::new(false),
            gate: Mutex::new(Gate::default()),
        }
    }

    /// The report now.
    pub fn info(&self) -> MigrationInfo {
        lock(&self.info).clone()
    }

    /// Changes the report.
    pub fn update(&self, f: impl FnOnce(&mut MigrationInfo)) {
        f(&mut lock(&self.info));
    }

    /// The flag the engine checks between batches.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    /// Whether a cancel was asked for.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Keeps a handle of the connection, for `cancel`.
    pub fn set_stream(&self, stream: TcpStream) {
        lock(&self.gate).stream = Some(stream);
    }

    /// Asks the migration to stop. Refused when none is going on, and once it has passed the
    /// commit point.
    pub fn cancel(&self) -> Result<(), String> {
        let gate = lock(&self.gate);
        let state = lock(&self.info).state;
        if !state.is_active() {
            return Err(format!(
                "no migration is in progress (the last one is {})",
                state.name()
            ));
        }
        if gate.committed {
            return Err(
                "too late to cancel: the migration has passed its commit point, and the destination runs the guest"
                    .into(),
            );
        }
        self.cancel.store(true, Ordering::Release);
        // A thread blocked reading the destination's answer sees the end of the stream at
        // once; its writes still work, so it can tell the destination it was cancelled.
        if let Some(s) = &gate.stream {
            let _ = s.shutdown(Shutdown::Read);
        }
        Ok(())
    }

    /// Passes the commit point, unless a cancel came first: true when committed.
    pub fn commit(&self) -> bool {
        let mut gate = lock(&self.gate);
        if self.cancelled() {
            return false;
        }
        gate.committed = true;
        lock(&self.info).committed = true;
        true
    }

    /// Whether the commit point has been passed.
    pub fn committed(&self) -> bool {
        lock(&self.gate).committed
    }

    /// Ends the report: the final state, and the error if there is one.
    pub fn end(&self, state: MigrationState, error: Option<String>) {
        self.update(|i| {
            i.state = state;
            i.error = error;
            i.throttle_percent = 0;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::migration::Role;

    fn control() -> MigrationControl {
        MigrationControl::new(MigrationInfo::new(Role::Source, "tcp:h:1".into()))
    }

    #[test]
    fn a_cancel_before_the_commit_point_wins() {
        let c = control();
        c.cancel().unwrap();
        assert!(c.cancelled());
        assert!(!c.commit(), "a cancelled migration must not commit");
        assert!(!c.committed());
    }

    #[test]
    fn a_cancel_after_the_commit_point_is_refused() {
        let c = control();
        assert!(c.commit());
        let e = c.cancel().unwrap_err();
        assert!(e.contains("too late"), "{e}");
        assert!(!c.cancelled());
    }

    #[test]
    fn a_cancel_with_nothing_going_on_is_refused() {
        let c = control();
        c.end(MigrationState::Failed, Some("x".into()));
        let e = c.cancel().unwrap_err();
        assert!(
            e.contains("no migration is in progress (the last one is failed)"),
            "{e}"
        );
        assert_eq!(c.info().error.as_deref(), Some("x"));
    }

    #[test]
    fn a_cancel_wakes_a_reader_of_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let c = std::sync::Arc::new(control());
        c.set_stream(client.try_clone().unwrap());
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 1];
            (&client).read(&mut b)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        c.cancel().unwrap();
        // The blocked read ends (with end of stream), instead of waiting for the peer.
        assert_eq!(reader.join().unwrap().unwrap(), 0);
    }
}
