//! libFuzzer entry of the `request` target; the checks are in `tollgate_fuzz::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::request::run(data));
