//! `http_sync`: see `topgun_node_fuzz::http_sync` (fuzz/src/lib.rs) for what it feeds and why.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| topgun_node_fuzz::http_sync(data));
