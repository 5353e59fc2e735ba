//! virtio-net serving a receive or transmit queue built from the input, with a datagram
//! socket standing in for the tap.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::net_queue(data));
