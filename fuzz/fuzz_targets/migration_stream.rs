//! The migration stream decoder: read frames until an error, re-encode and decode each message.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| migration::fuzzing::migration_stream(data));
