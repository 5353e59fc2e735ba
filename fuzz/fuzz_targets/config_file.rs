//! The Firecracker-style config file.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::config_file(data));
