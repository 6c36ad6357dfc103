#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tocsin_fuzz::sns::sns(data));
