//! Support code for the scenario tests: a tiny A64 instruction encoder for hand-assembled
//! guests and a fault-injecting relay for the migration stream (both portable, unit-tested on
//! any host) and, on aarch64, a minimal KVM VM fixture.

// Test support: a failed expectation must fail the test loudly.
#![allow(clippy::panic)]

pub mod a64;
pub mod api;
pub mod guest;
pub mod migrate;
pub mod relay;
pub mod snap;

#[cfg(target_arch = "aarch64")]
pub mod kvm_fixture;
