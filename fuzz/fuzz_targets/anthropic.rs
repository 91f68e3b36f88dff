//! libFuzzer entry of the `anthropic` target; the checks are in `tollgate_fuzz::anthropic`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::anthropic::run(data));
