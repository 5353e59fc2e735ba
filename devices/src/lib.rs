//! Device models with no KVM dependency: the MMIO bus they sit on, interrupt lines, and the
//! legacy devices (16550 serial, PL031 RTC, boot timer), and the virtio devices.

pub mod bus;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod irq;
pub mod legacy;
pub mod rate_limiter;
mod state;
pub mod unix_socket;
pub mod virtio;

pub use bus::{MmioBus, MmioDevice};
pub use irq::IrqLine;

/// Guest RAM as the devices see it: every write through it is recorded in a dirty bitmap, so
/// that snapshots and migration also carry the pages the VMM wrote.
pub type GuestRam = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
