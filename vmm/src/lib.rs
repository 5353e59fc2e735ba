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
pub mod migration;
pub mod persist;
pub mod vm;

#[cfg(target_arch = "aarch64")]
pub mod device_manager;
#[cfg(target_arch = "aarch64")]
pub mod runner;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;

/// Stack size of every thread the VMM starts. Under 2 MiB on purpose: a stack mapping of 2 MiB
/// or more can contain an aligned 2 MiB range, which the host kernel fills with a transparent
/// huge page on first touch when THP is `always` (its default), adding 2 MiB of resident memory
/// to a thread that uses a few KiB of stack. 1 MiB is far more than any of them uses.
pub const THREAD_STACK: usize = 1 << 20;

/// The version this binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
