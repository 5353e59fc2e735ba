//! Events that vCPU threads and devices send to the VMM thread (a channel plus an EventFd so
//! the VMM thread can wait for them in its loop), and what a batch of them decides.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Something the VMM thread must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest powered off (PSCI SYSTEM_OFF).
    Shutdown,
    /// The guest asked for a reset (PSCI SYSTEM_RESET).
    Reset,
    /// A vCPU stopped on an error.
    VcpuError {
        /// Which vCPU.
        index: usize,
        /// What went wrong.
        message: String,
    },
    /// An outgoing migration passed its commit point: the guest is the destination's.
    MigratedAway {
        /// Where it went.
        destination: String,
        /// Set when the destination did not confirm that it runs the guest.
        error: Option<String>,
    },
    /// An incoming migration's guest runs here: the VMM thread takes it in.
    MigrationIn,
    /// A migration ended before its commit point (failed or cancelled).
    MigrationEnded,
}

/// The sending side, cloned into every vCPU thread and device that reports.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: Sender<VmEvent>,
    wake: Arc<EventFd>,
}

impl EventSender {
    /// Sends an event and wakes the VMM thread.
    pub fn send(&self, e: VmEvent) {
        if self.tx.send(e).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// The receiving side, owned by the VMM thread.
#[derive(Debug)]
pub struct EventReceiver {
    rx: Receiver<VmEvent>,
    wake: Arc<EventFd>,
}

impl EventReceiver {
    /// The descriptor that becomes readable when events are pending.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes every pending event.
    pub fn drain(&self) -> Vec<VmEvent> {
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

/// A connected sender and receiver.
pub fn channel() -> std::io::Result<(EventSender, EventReceiver)> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    Ok((
        EventSender {
            tx,
            wake: wake.clone(),
        },
        EventReceiver { rx, wake },
    ))
}

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
    /// The guest migrated to this destination and runs there.
    Migrated(String),
    /// The migration passed its commit point but the destination did not confirm.
    MigrationUnconfirmed(String),
    /// An incoming migration failed; nothing ran here.
    IncomingFailed(String),
}

/// What a batch of VM events calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing ends the instance.
    Continue,
    /// Build the VM again (a reset, with the reboot policy).
    Reboot,
    /// The instance ends.
    End(Outcome),
}

/// Decides what a whole batch of events calls for. Every event is weighed, not just the
/// first: two vCPUs can report at once, and a failure must not hide behind a reset that
/// happened to arrive first. A vCPU failure outranks a guest stop; a stop (reset or power
/// off) is a panic when the console's last report was one (`pending_panic`).
pub fn decide(events: &[VmEvent], pending_panic: Option<String>, reboot: bool) -> Decision {
    let failures: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            VmEvent::VcpuError { index, message } => Some(format!("vcpu{index}: {message}")),
            _ => None,
        })
        .collect();
    if !failures.is_empty() {
        return Decision::End(Outcome::VcpuFailed(failures.join("; ")));
    }
    let shutdown = events.contains(&VmEvent::Shutdown);
    let reset = events.contains(&VmEvent::Reset);
    if !(shutdown || reset) {
        return Decision::Continue;
    }
    if let Some(msg) = pending_panic {
        return Decision::End(Outcome::GuestPanic(msg));
    }
    if shutdown {
        Decision::End(Outcome::Shutdown)
    } else if reboot {
        Decision::Reboot
    } else {
        Decision::End(Outcome::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_arrive_in_order_and_wake_the_receiver() {
        let (tx, rx) = channel().unwrap();
        assert!(rx.drain().is_empty());
        tx.clone().send(VmEvent::Reset);
        tx.send(VmEvent::Shutdown);
        assert_eq!(rx.wake_fd().read().unwrap(), 2);
        assert_eq!(rx.drain(), vec![VmEvent::Reset, VmEvent::Shutdown]);
    }

    fn err(index: usize) -> VmEvent {
        VmEvent::VcpuError {
            index,
            message: "KVM_RUN failed".into(),
        }
    }

    #[test]
    fn every_event_of_a_batch_counts() {
        // Regression: only the first event of a batch was looked at, so a failure that
        // arrived with a reset was lost, and the guest was rebooted.
        assert_eq!(
            decide(&[VmEvent::Reset, err(1)], None, true),
            Decision::End(Outcome::VcpuFailed("vcpu1: KVM_RUN failed".into()))
        );
        assert_eq!(
            decide(&[err(0), err(3)], None, false),
            Decision::End(Outcome::VcpuFailed(
                "vcpu0: KVM_RUN failed; vcpu3: KVM_RUN failed".into()
            ))
        );
        assert_eq!(
            decide(&[VmEvent::Reset, VmEvent::Shutdown], None, true),
            Decision::End(Outcome::Shutdown)
        );
    }

    #[test]
    fn stops_follow_the_policy_and_the_console() {
        assert_eq!(decide(&[], None, false), Decision::Continue);
        assert_eq!(decide(&[VmEvent::Reset], None, true), Decision::Reboot);
        assert_eq!(
            decide(&[VmEvent::Reset], None, false),
            Decision::End(Outcome::Reset)
        );
        let msg = "Kernel panic - not syncing: x".to_string();
        assert_eq!(
            decide(&[VmEvent::Reset], Some(msg.clone()), true),
            Decision::End(Outcome::GuestPanic(msg.clone()))
        );
        assert_eq!(
            decide(&[VmEvent::Shutdown], Some(msg.clone()), false),
            Decision::End(Outcome::GuestPanic(msg))
        );
    }
}
