//! See `stptf::fuzzing::text_table` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = stptf::fuzzing::text_table(data);
});
