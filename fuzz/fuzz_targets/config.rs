#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate_fuzz::config(data));
