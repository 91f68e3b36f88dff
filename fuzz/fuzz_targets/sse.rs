//! libFuzzer entry of the `sse` target; the checks are in `tollgate_fuzz::sse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::sse::run(data));
