//! The VMM: command line, VM and vCPU threads, guest memory, devices on the MMIO bus; later
//! the API server, snapshots and migration. The only crate that owns threads and KVM
//! descriptors.

pub mod api;
pub mod config;
pub mod console;
pub mod controller;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod loader;
pub mod logger;
pub mod metrics;

#[cfg(target_arch = "aarch64")]
pub mod builder;
#[cfg(target_arch = "aarch64")]
pub mod device_manager;
#[cfg(target_arch = "aarch64")]
pub mod runner;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;

/// The version this binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
