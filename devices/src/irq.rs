//! Interrupt lines: an EventFd that KVM turns into a guest interrupt through irqfd.

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// One edge-triggered interrupt line.
#[derive(Debug)]
pub struct IrqLine {
    evt: EventFd,
}

impl IrqLine {
    /// A new line, not yet connected to the guest.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The EventFd to register with KVM as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Another handle on the same line (a restored device raises it too).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            evt: self.evt.try_clone()?,
        })
    }

    /// Raises the interrupt.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
