//! The snapshot state file decoder: decode, re-encode, decode again.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migration::fuzzing::snapshot_file(data));
