#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certfleet_fuzz::run_envelope(data));
