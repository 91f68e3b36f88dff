//! libFuzzer entry of the `jwt` target; the checks are in `tollgate_fuzz::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::jwt::run(data));
