//! `cluster_wire`: see `topgun_node_fuzz::cluster_wire` (fuzz/src/lib.rs) for what it feeds and why.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| topgun_node_fuzz::cluster_wire(data));
