//! The VMM side of live migration: what the portable engine in `migration::engine` drives,
//! the connection both ends speak through, the checks a destination makes before any page
//! moves, and the send and receive threads.

pub mod control;
pub mod preflight;
pub mod wire;

#[cfg(target_arch = "aarch64")]
pub mod destination;
#[cfg(target_arch = "aarch64")]
pub mod dirty;
#[cfg(target_arch = "aarch64")]
pub mod source;
#[cfg(target_arch = "aarch64")]
pub mod throttle;
