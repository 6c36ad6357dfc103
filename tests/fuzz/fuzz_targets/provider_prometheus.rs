#![no_main]

use tocsin_core::providers::ProviderKind;

libfuzzer_sys::fuzz_target!(|data: &[u8]| tocsin_fuzz::provider::provider(ProviderKind::Prometheus, data));
