//! The vsock packet header and payload split of a guest's packet.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::vsock_packet(data));
