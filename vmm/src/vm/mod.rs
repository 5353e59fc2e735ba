//! A VM's pieces: guest memory, and the boot path built from them (the restore path shares
//! its steps).

#[cfg(target_arch = "aarch64")]
pub mod builder;
pub mod memory;
#[cfg(target_arch = "aarch64")]
pub mod restore;
