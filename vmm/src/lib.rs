//! The VMM: command line, API server, VM and vCPU threads, guest memory, devices on the MMIO
//! bus, snapshots and migration glue. The only crate that owns threads and KVM descriptors.

/// The version this binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
