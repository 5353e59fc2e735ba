//! Kernel Image header parsing, placement arithmetic and loading into guest memory.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::kernel_image(data));
