//! libFuzzer entry of the `config` target; the checks are in `tollgate_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::config::run(data));
