//! Events that vCPU threads and devices send to the VMM thread: a channel plus an EventFd so
//! the VMM thread can wait for them in its epoll loop.

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
    /// The guest kernel panicked; the text is its panic message.
    GuestPanic(String),
    /// A vCPU stopped on an error.
    VcpuError {
        /// Which vCPU.
        index: usize,
        /// What went wrong.
        message: String,
    },
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
}
