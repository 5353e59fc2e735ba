//! The CONNECT line a host process sends to the vsock socket.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::vsock_connect_line(data));
