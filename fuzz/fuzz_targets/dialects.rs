//! libFuzzer entry of the `dialects` target; the checks are in `tollgate_fuzz::dialects`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::dialects::run(data));
