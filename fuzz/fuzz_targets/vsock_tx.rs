//! The vsock device's transmit path, then its receive queue.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::vsock_tx(data));
