//! virtio-rng serving a queue built from the input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::rng_queue(data));
