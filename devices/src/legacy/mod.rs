//! Legacy MMIO devices: the 16550 serial port, the PL031 RTC and the boot timer.

pub mod boot_timer;
pub mod rtc;
pub mod serial;
pub mod state;

pub use boot_timer::BootTimer;
pub use rtc::RtcDevice;
pub use serial::SerialDevice;
