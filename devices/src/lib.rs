//! Device models with no KVM dependency.
//!
//! Empty for now: the 16550 serial, PL031 RTC and boot timer arrive with guest boot, and the
//! virtio-mmio devices after that (see ../shared/ARCHITECTURE.md).
