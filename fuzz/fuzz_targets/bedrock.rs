//! libFuzzer entry of the `bedrock` target; the checks are in `tollgate_fuzz::bedrock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::bedrock::run(data));
