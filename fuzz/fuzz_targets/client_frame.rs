//! `client_frame`: see `topgun_node_fuzz::client_frame` (fuzz/src/lib.rs) for what it feeds and why.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| topgun_node_fuzz::client_frame(data));
