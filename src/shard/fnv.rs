//! The bit-exact hash functions of protocol.md 5.1 (FNV-1a over UTF-16 code units, the
//! MurmurHash3 finalizer `mix`, the order-independent `combine`) and the partition of a key
//! (section 7). Everything here must agree with the TS client to the bit: Merkle sync compares
//! our hashes with the client's own. Tree shape lives in `merkle.rs`.

pub use crate::protocol::PARTITION_COUNT;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// Streaming FNV-1a over UTF-16 code units. Lets a caller hash a composite string such as
/// `"key:millis:counter:nodeId"` piece by piece, without building it (a write hashes one per op).
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u32);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    pub const fn new() -> Self {
        Fnv1a(FNV_OFFSET)
    }

    /// Feeds the UTF-16 code units of `s` (JS `charCodeAt`: a non-BMP char is two surrogates).
    #[inline]
    pub fn write_str(&mut self, s: &str) {
        let mut h = self.0;
        for unit in s.encode_utf16() {
            h ^= u32::from(unit);
            h = h.wrapping_mul(FNV_PRIME);
        }
        self.0 = h;
    }

    /// Feeds one ASCII byte (separators and digits: one UTF-16 unit each).
    #[inline]
    fn write_ascii(&mut self, b: u8) {
        self.0 = (self.0 ^ u32::from(b)).wrapping_mul(FNV_PRIME);
    }

    /// Feeds the decimal form of `n`, exactly as JS `String(n)` writes an integer below 2^53
    /// (and as Rust's `Display` does for any u64).
    #[inline]
    pub fn write_u64(&mut self, mut n: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            // `n % 10 < 10`, so the cast cannot truncate.
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &b in &buf[i..] {
            self.write_ascii(b);
        }
    }

    #[inline]
    pub fn write_char_ascii(&mut self, c: u8) {
        self.write_ascii(c);
    }

    pub const fn finish(self) -> u32 {
        self.0
    }
}

/// 32-bit FNV-1a of `s` over its UTF-16 code units (protocol.md 5.1).
#[inline]
pub fn fnv1a(s: &str) -> u32 {
    let mut h = Fnv1a::new();
    h.write_str(s);
    h.finish()
}

/// MurmurHash3 `fmix32`: spreads bits so that `combine` (a plain sum) does not cancel out
/// structured inputs.
#[inline]
pub const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Wrapping sum of `mix(h)`: order-independent, so a node's hash can be updated incrementally
/// (subtract the child's old mix, add its new one). Empty input gives 0.
pub fn combine<I: IntoIterator<Item = u32>>(hashes: I) -> u32 {
    hashes
        .into_iter()
        .fold(0u32, |acc, h| acc.wrapping_add(mix(h)))
}

/// The partition owning `key`: `fnv1a(key) % 271` (protocol.md 7).
#[inline]
pub fn partition_of(key: &str) -> u16 {
    partition_of_hash(fnv1a(key))
}

/// The partition of a key whose `fnv1a` is already known (the Merkle route uses the same hash).
#[inline]
pub fn partition_of_hash(key_hash: u32) -> u16 {
    // The remainder is below 271, so it always fits a u16.
    (key_hash % u32::from(PARTITION_COUNT)) as u16
}

/// Merkle item hash of a record: `fnv1a("<key>:<millis>:<counter>:<nodeId>")` (protocol.md 5.2),
/// computed without allocating the string.
#[inline]
pub fn item_hash(key: &str, ts: &crate::protocol::types::Timestamp) -> u32 {
    let mut h = Fnv1a::new();
    h.write_str(key);
    h.write_char_ascii(b':');
    h.write_u64(ts.millis);
    h.write_char_ascii(b':');
    h.write_u64(u64::from(ts.counter));
    h.write_char_ascii(b':');
    h.write_str(&ts.node_id);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::Timestamp;

    #[test]
    fn fnv1a_spec_vectors() {
        assert_eq!(fnv1a(""), 2_166_136_261);
        assert_eq!(fnv1a("hello"), 1_335_831_723);
        assert_eq!(fnv1a("key1"), 927_623_783);
        assert_eq!(fnv1a("key1:100:0:test"), 3_988_528_110);
    }

    /// A reference implementation written straight from the spec text, hashing an explicit
    /// list of UTF-16 units, guards the non-BMP path (surrogate pairs, not UTF-8 bytes or
    /// code points).
    #[test]
    fn fnv1a_non_bmp_hashes_surrogate_pairs() {
        fn over_units(units: &[u16]) -> u32 {
            let mut h = FNV_OFFSET;
            for &u in units {
                h ^= u32::from(u);
                h = h.wrapping_mul(FNV_PRIME);
            }
            h
        }
        // U+1F600 is the surrogate pair D83D DE00 in UTF-16.
        assert_eq!(fnv1a("😀"), over_units(&[0xD83D, 0xDE00]));
        assert_eq!(fnv1a("a😀é"), over_units(&[0x61, 0xD83D, 0xDE00, 0xE9]));
        // Not the same as hashing the code point or the UTF-8 bytes.
        assert_ne!(fnv1a("😀"), over_units(&[0xF600]));
    }

    #[test]
    fn mix_and_combine_vectors() {
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x514e_28b7);
        assert_eq!(combine([]), 0);
        assert_eq!(combine([1, 2, 3]), combine([3, 1, 2]));
        assert_eq!(combine([0, 0]), 0);
    }

    #[test]
    fn item_hash_matches_formatted_string() {
        let ts = Timestamp {
            millis: 100,
            counter: 0,
            node_id: "test".into(),
        };
        assert_eq!(item_hash("key1", &ts), 3_988_528_110);
        let ts = Timestamp {
            millis: 1_700_000_000_000,
            counter: u32::MAX,
            node_id: "n😀".into(),
        };
        let s = format!("k:{ts}");
        assert_eq!(item_hash("k", &ts), fnv1a(&s));
        assert_eq!(
            item_hash(
                "alice",
                &Timestamp {
                    millis: 1_700_000_000_000,
                    counter: 0,
                    node_id: "srv".into()
                }
            ),
            3_481_118_468
        );
    }

    #[test]
    fn write_u64_extremes() {
        for n in [0u64, 9, 10, u64::from(u32::MAX), u64::MAX] {
            let mut h = Fnv1a::new();
            h.write_u64(n);
            assert_eq!(h.finish(), fnv1a(&n.to_string()));
        }
    }

    #[test]
    fn partition_is_fnv_mod_271() {
        assert_eq!(PARTITION_COUNT, 271);
        assert_eq!(partition_of("key1"), (927_623_783u32 % 271) as u16);
        // Spec 5.3: alice and bob land in partitions 205 and 135.
        assert_eq!(partition_of("alice"), 205);
        assert_eq!(partition_of("bob"), 135);
        assert!(partition_of("") < PARTITION_COUNT);
    }
}
