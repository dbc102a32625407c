//! `jwks`: see `topgun_node_fuzz::jwks` (fuzz/src/lib.rs) for what it feeds and why.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| topgun_node_fuzz::jwks(data));
