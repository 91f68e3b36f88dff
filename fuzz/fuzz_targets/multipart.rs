//! libFuzzer entry of the `multipart` target; the checks are in `tollgate_fuzz::multipart`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::multipart::run(data));
