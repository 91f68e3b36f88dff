//! libFuzzer entry of the `keys` target; the checks are in `tollgate_fuzz::keys`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_fuzz::keys::run(data));
