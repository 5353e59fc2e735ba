//! The API router: METHOD PATH, newline, body.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzzing::api_request(data));
