//! libFuzzer entry of the `gemini` target; the checks are in `tollgate_fuzz::gemini`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::gemini::run(data));
