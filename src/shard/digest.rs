//! Partition digests for anti-entropy: one 64-bit summary of what a partition holds, equal on
//! two nodes exactly when they hold the same live records (up to hash collisions).
//!
//! The digest is the XOR of one hash per live record, so it does not depend on the order of
//! the records nor on how a store is split into shards. A live LWW record counts with its
//! map, key and timestamp (the value belongs to the timestamp); a live OR-Map entry with its
//! map, key and tag. Tombstones do not count: a node that has a tombstone and one that never
//! saw the key agree on what is visible, and where a live record meets a newer tombstone the
//! digests differ until the merge made both tombstones. Records with a TTL do not count either:
//! they expire and are swept on each node at its own moment, and a sweep is no change a
//! holder could tell the other about. Each record hash is FNV-1a 64 over
//! length-prefixed fields, then the splitmix64 finalizer, so that XOR-ing many of them does not
//! cancel structure. Not cryptographic: peers are authenticated, this only finds divergence.

use serde::{Deserialize, Serialize};

use crate::protocol::types::Timestamp;

/// One partition's digest as a shard reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigest {
    pub partition: u16,
    pub digest: u64,
    /// Unchanged since the holder was last asked for it: only such partitions are compared,
    /// since one being written differs between holders while its writes are in flight.
    pub stable: bool,
}

const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv64(u64);

impl Fnv64 {
    fn bytes(&mut self, b: &[u8]) {
        // The length first: ("ab", "c") and ("a", "bc") must not hash alike.
        for x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(FNV64_PRIME);
        }
    }
}

fn finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a live LWW record.
pub fn lww_record(map: &str, key: &str, ts: &Timestamp) -> u64 {
    let mut h = Fnv64(FNV64_OFFSET);
    h.bytes(b"lww");
    h.bytes(map.as_bytes());
    h.bytes(key.as_bytes());
    h.bytes(&ts.millis.to_le_bytes());
    h.bytes(&ts.counter.to_le_bytes());
    h.bytes(ts.node_id.as_bytes());
    finish(h.0)
}

/// The hash of a live OR-Map entry (its tag names the add).
pub fn or_record(map: &str, key: &str, tag: &str) -> u64 {
    let mut h = Fnv64(FNV64_OFFSET);
    h.bytes(b"or");
    h.bytes(map.as_bytes());
    h.bytes(key.as_bytes());
    h.bytes(tag.as_bytes());
    finish(h.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(millis: u64, counter: u32, node: &str) -> Timestamp {
        Timestamp {
            millis,
            counter,
            node_id: node.into(),
        }
    }

    #[test]
    fn every_field_of_a_record_changes_its_hash() {
        let base = lww_record("m", "k", &ts(1, 0, "a"));
        for other in [
            lww_record("n", "k", &ts(1, 0, "a")),
            lww_record("m", "j", &ts(1, 0, "a")),
            lww_record("m", "k", &ts(2, 0, "a")),
            lww_record("m", "k", &ts(1, 1, "a")),
            lww_record("m", "k", &ts(1, 0, "b")),
            lww_record("mk", "", &ts(1, 0, "a")),
            or_record("m", "k", "1:0:a"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, lww_record("m", "k", &ts(1, 0, "a")));
        assert_ne!(or_record("m", "k", "t1"), or_record("m", "k", "t2"));
    }

    #[test]
    fn the_xor_of_records_does_not_depend_on_their_order() {
        let records: Vec<u64> = (0..100)
            .map(|i| lww_record("m", &format!("k{i}"), &ts(i, 0, "a")))
            .collect();
        let forward = records.iter().fold(0, |d, h| d ^ h);
        let backward = records.iter().rev().fold(0, |d, h| d ^ h);
        assert_eq!(forward, backward);
        // One record more, less or changed changes the digest.
        assert_ne!(forward, forward ^ lww_record("m", "k100", &ts(100, 0, "a")));
        assert_ne!(forward, forward ^ records[7]);
    }
}
