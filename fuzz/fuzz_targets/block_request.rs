//! virtio-blk: a Block device serving a queue built from the input (request parsing included).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::block_queue(data));
