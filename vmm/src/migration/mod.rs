//! The VMM side of live migration: what the portable engine in `migration::engine` drives.
//! So far the dirty-page source over a running VM's memory and the vCPU throttle; the send and
//! receive threads come with the rest of the migration work.

#[cfg(target_arch = "aarch64")]
pub mod dirty;
#[cfg(target_arch = "aarch64")]
pub mod throttle;
