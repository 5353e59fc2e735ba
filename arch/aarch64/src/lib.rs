//! Arm64 architecture support for the VMM.
//!
//! Everything outside [`kvm`] is portable: it compiles and is unit-tested on any host.
//! The [`kvm`] module talks to `/dev/kvm` and exists only on aarch64.

pub mod cpu;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod state;
pub mod sysreg;

#[cfg(target_arch = "aarch64")]
pub mod kvm;
