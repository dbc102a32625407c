//! The TS client's depth-3 Merkle tree (protocol.md 5.2), kept incrementally: a write touches
//! one leaf and its three ancestors, whatever the number of keys. Also the arithmetic to merge
//! the trees of several stores holding disjoint keys into the exact single tree of their union
//! (`MerkleUnion`). What goes into the tree (tombstones yes, swept entries no) is decided by the
//! maps in `lww.rs`; this file only hashes what it is given.
//!
//! Why the union works at the leaf level only: a leaf's hash is `combine(items)`, a plain
//! wrapping sum of `mix(item)`, so the leaf of a union of disjoint key sets is the wrapping sum
//! of the stores' leaf hashes at that path. Internal hashes are `combine(children)`, i.e. sums
//! of `mix(child)`, and `mix` is not linear: the union's internal nodes must be recomputed from
//! the summed leaves, never summed themselves.
use std::collections::BTreeMap;

use crate::protocol::types::Timestamp;
use crate::shard::fnv::{fnv1a, item_hash, mix};

/// Depth of the tree: paths have at most this many hex chars; nodes at this depth are leaves.
pub const DEPTH: usize = 3;

/// A leaf address: the first three hex digits (nibbles, each 0..=15) of `fnv1a(key)`.
pub type LeafPath = [u8; DEPTH];

/// The leaf a key routes to: the first 3 of the 8 zero-padded hex digits of `fnv1a(key)`.
#[inline]
pub fn leaf_path_of(key: &str) -> LeafPath {
    leaf_path_of_hash(fnv1a(key))
}

#[inline]
pub fn leaf_path_of_hash(key_hash: u32) -> LeafPath {
    // Each value is masked to 4 bits, so the casts cannot truncate.
    [
        ((key_hash >> 28) & 0xf) as u8,
        ((key_hash >> 24) & 0xf) as u8,
        ((key_hash >> 20) & 0xf) as u8,
    ]
}

/// The lowercase hex char of a nibble, as the client writes paths and bucket keys.
#[inline]
pub fn hex_char(nibble: u8) -> char {
    char::from_digit(u32::from(nibble & 0xf), 16).unwrap_or('0')
}

/// The wire path string (`"8a3"`) of a leaf path.
pub fn path_string(path: &LeafPath) -> String {
    path.iter().map(|&n| hex_char(n)).collect()
}

/// Parses a client path: at most 3 lowercase hex chars. Anything else names no node (the client
/// only ever builds paths from bucket keys we sent, which are lowercase).
fn parse_path(path: &str) -> Option<([u8; DEPTH], usize)> {
    let mut out = [0u8; DEPTH];
    let mut len = 0;
    for c in path.chars() {
        if len == DEPTH || c.is_ascii_uppercase() {
            return None;
        }
        // `to_digit(16)` is below 16, so the cast cannot truncate.
        out[len] = c.to_digit(16)? as u8;
        len += 1;
    }
    Some((out, len))
}

/// Anything that carries a hash: leaves and internal nodes.
trait Hashed {
    fn hash(&self) -> u32;
}

/// An internal node: `hash = combine(children)`, cached. A child, once created, is never
/// dropped (the TS tree keeps emptied children, hash 0, and lists them in buckets).
#[derive(Debug, Clone)]
struct Inner<C> {
    hash: u32,
    children: [Option<Box<C>>; 16],
}

impl<C> Default for Inner<C> {
    fn default() -> Self {
        Inner {
            hash: 0,
            children: Default::default(),
        }
    }
}

impl<C> Hashed for Inner<C> {
    fn hash(&self) -> u32 {
        self.hash
    }
}

impl<C: Hashed> Inner<C> {
    fn buckets(&self) -> BTreeMap<char, u32> {
        self.children
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                // `i < 16`, so the cast cannot truncate.
                c.as_ref().map(|c| (hex_char(i as u8), c.hash()))
            })
            .collect()
    }
}

type Root<L> = Inner<Inner<Inner<L>>>;

/// Runs `f` on the leaf at `path`, creating missing nodes if `create`, then moves each
/// ancestor's cached hash from `mix(old child)` to `mix(new child)`: O(depth).
fn with_leaf<L: Hashed + Default, R>(
    root: &mut Root<L>,
    path: LeafPath,
    create: bool,
    f: impl FnOnce(&mut L) -> R,
) -> Option<R> {
    let [a, b, c] = path.map(usize::from);
    let n1 = slot(&mut root.children[a & 0xf], create)?;
    let n2 = slot(&mut n1.children[b & 0xf], create)?;
    let leaf = slot(&mut n2.children[c & 0xf], create)?;
    let old_leaf = leaf.hash();
    let r = f(leaf);
    let new_leaf = leaf.hash();
    if old_leaf != new_leaf {
        let old2 = n2.hash;
        n2.hash = n2
            .hash
            .wrapping_sub(mix(old_leaf))
            .wrapping_add(mix(new_leaf));
        let old1 = n1.hash;
        n1.hash = n1.hash.wrapping_sub(mix(old2)).wrapping_add(mix(n2.hash));
        root.hash = root.hash.wrapping_sub(mix(old1)).wrapping_add(mix(n1.hash));
    }
    Some(r)
}

fn slot<C: Default>(s: &mut Option<Box<C>>, create: bool) -> Option<&mut C> {
    if create {
        Some(s.get_or_insert_with(Default::default))
    } else {
        s.as_deref_mut()
    }
}

fn leaf_at<L>(root: &Root<L>, path: LeafPath) -> Option<&L> {
    let [a, b, c] = path.map(usize::from);
    root.children[a & 0xf].as_deref()?.children[b & 0xf]
        .as_deref()?
        .children[c & 0xf]
        .as_deref()
}

fn buckets_at<L: Hashed>(root: &Root<L>, path: &str) -> Option<BTreeMap<char, u32>> {
    let (p, len) = parse_path(path)?;
    let [a, b, _] = p.map(usize::from);
    match len {
        0 => Some(root.buckets()),
        1 => Some(root.children[a].as_deref()?.buckets()),
        2 => Some(
            root.children[a].as_deref()?.children[b]
                .as_deref()?
                .buckets(),
        ),
        _ => None,
    }
}

/// Visits every existing leaf (including emptied ones, hash 0) in path order.
fn for_each_leaf<L>(root: &Root<L>, mut f: impl FnMut(LeafPath, &L)) {
    for (a, n1) in root.children.iter().enumerate() {
        let Some(n1) = n1 else { continue };
        for (b, n2) in n1.children.iter().enumerate() {
            let Some(n2) = n2 else { continue };
            for (c, leaf) in n2.children.iter().enumerate() {
                if let Some(leaf) = leaf {
                    // Indices are below 16, so the casts cannot truncate.
                    f([a as u8, b as u8, c as u8], leaf);
                }
            }
        }
    }
}

/// A leaf of the keyed tree: `key → item hash` and their cached `combine`.
#[derive(Debug, Clone, Default)]
struct KeyLeaf {
    hash: u32,
    /// Ordered so leaf listings are deterministic.
    items: BTreeMap<Box<str>, u32>,
}

impl Hashed for KeyLeaf {
    fn hash(&self) -> u32 {
        self.hash
    }
}

/// The client's tree over one map's keys (protocol.md 5.2).
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    root: Root<KeyLeaf>,
    len: usize,
}

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or re-hashes `key` with its record's timestamp. O(depth + log(leaf size)); the
    /// key is copied only when new.
    pub fn update(&mut self, key: &str, ts: &Timestamp) {
        self.update_item(key, item_hash(key, ts));
    }

    /// Inserts or re-hashes `key` with an item hash computed by the caller (OR-Map keys, whose
    /// item is a set of tags rather than one timestamp).
    pub fn update_item(&mut self, key: &str, item: u32) {
        let inserted = with_leaf(&mut self.root, leaf_path_of(key), true, |leaf| {
            let (old, inserted) = match leaf.items.get_mut(key) {
                Some(h) => (Some(std::mem::replace(h, item)), false),
                None => {
                    leaf.items.insert(key.into(), item);
                    (None, true)
                }
            };
            if let Some(old) = old {
                leaf.hash = leaf.hash.wrapping_sub(mix(old));
            }
            leaf.hash = leaf.hash.wrapping_add(mix(item));
            inserted
        });
        if inserted == Some(true) {
            self.len += 1;
        }
    }

    /// Drops `key`; its (possibly now empty) nodes stay, as in the TS tree. Returns whether
    /// the key was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let removed = with_leaf(&mut self.root, leaf_path_of(key), false, |leaf| {
            let old = leaf.items.remove(key)?;
            leaf.hash = leaf.hash.wrapping_sub(mix(old));
            Some(())
        })
        .flatten()
        .is_some();
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Root hash; 0 for a tree that never held a key or whose keys are all removed.
    pub fn root(&self) -> u32 {
        self.root.hash
    }

    /// Number of keys in the tree.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Children of the internal node at `path` (length 0..=2), keyed by their last hex char,
    /// as `SYNC_RESP_BUCKETS` sends them. `None` for a node that does not exist or a leaf path.
    pub fn buckets(&self, path: &str) -> Option<BTreeMap<char, u32>> {
        buckets_at(&self.root, path)
    }

    /// Keys of the leaf at a 3-char `path`, in key order. `None` for a path that is not an
    /// existing leaf; shorter paths are internal nodes (use `buckets`), never key listings, as
    /// the client asks for leaves only at depth 3.
    pub fn leaf_keys(&self, path: &str) -> Option<Vec<&str>> {
        let (p, len) = parse_path(path)?;
        if len != DEPTH {
            return None;
        }
        let leaf = leaf_at(&self.root, p)?;
        Some(leaf.items.keys().map(|k| &**k).collect())
    }

    /// Leaf hash at `path`, if that leaf exists.
    pub fn leaf_hash(&self, path: LeafPath) -> Option<u32> {
        leaf_at(&self.root, path).map(|l| l.hash)
    }

    /// The leaves of the keys `keep` selects, hashed from their items: the tree those keys
    /// alone would make (only leaves holding one of them), in path order.
    pub fn leaf_hashes_where(&self, keep: impl Fn(&str) -> bool) -> Vec<(LeafPath, u32)> {
        let mut out = Vec::new();
        for_each_leaf(&self.root, |p, l| {
            let mut hash = 0u32;
            let mut any = false;
            for (key, item) in &l.items {
                if keep(key) {
                    hash = hash.wrapping_add(mix(*item));
                    any = true;
                }
            }
            if any {
                out.push((p, hash));
            }
        });
        out
    }

    /// Every existing leaf with its hash (emptied leaves too, with 0), in path order. Feed
    /// these from several stores into a [`MerkleUnion`] to get the tree of their union.
    pub fn leaf_hashes(&self) -> Vec<(LeafPath, u32)> {
        let mut out = Vec::new();
        for_each_leaf(&self.root, |p, l| out.push((p, l.hash)));
        out
    }
}

/// A leaf of the union tree: only the summed hash.
#[derive(Debug, Clone, Copy, Default)]
struct SumLeaf(u32);

impl Hashed for SumLeaf {
    fn hash(&self) -> u32 {
        self.0
    }
}

/// The single client-shaped tree of the union of several disjoint key sets, built from each
/// set's leaf hashes (see the module header for why leaves are the only level that adds up).
/// Holds no keys: leaf listings are the union of each store's `leaf_keys`.
#[derive(Debug, Clone, Default)]
pub struct MerkleUnion {
    root: Root<SumLeaf>,
}

impl MerkleUnion {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one store's leaf at `path`. Adding a leaf of hash 0 still creates the path, so
    /// emptied leaves show up in buckets exactly as in a single tree.
    pub fn add_leaf(&mut self, path: LeafPath, leaf_hash: u32) {
        with_leaf(&mut self.root, path, true, |l| {
            l.0 = l.0.wrapping_add(leaf_hash);
        });
    }

    /// Adds every leaf of a tree.
    pub fn add_tree(&mut self, tree: &MerkleTree) {
        for_each_leaf(&tree.root, |p, l| self.add_leaf(p, l.hash));
    }

    pub fn root(&self) -> u32 {
        self.root.hash
    }

    /// Same contract as [`MerkleTree::buckets`].
    pub fn buckets(&self, path: &str) -> Option<BTreeMap<char, u32>> {
        buckets_at(&self.root, path)
    }

    /// Whether the leaf at a 3-char path exists in any added tree.
    pub fn has_leaf(&self, path: &str) -> bool {
        match parse_path(path) {
            Some((p, DEPTH)) => leaf_at(&self.root, p).is_some(),
            _ => false,
        }
    }
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

    fn alice_bob() -> MerkleTree {
        let mut t = MerkleTree::new();
        t.update("alice", &ts(1_700_000_000_000, 0, "srv"));
        t.update("bob", &ts(1_700_000_000_001, 0, "srv"));
        t
    }

    #[test]
    fn worked_vector_of_5_2() {
        assert_eq!(path_string(&leaf_path_of("alice")), "872");
        assert_eq!(path_string(&leaf_path_of("bob")), "86c");
        assert_eq!(
            item_hash("bob", &ts(1_700_000_000_001, 0, "srv")),
            2_368_672_400
        );
        let t = alice_bob();
        assert_eq!(t.root(), 18_126_308);
        assert_eq!(t.buckets(""), Some(BTreeMap::from([('8', 2_370_988_415)])));
        assert_eq!(
            t.buckets("8"),
            Some(BTreeMap::from([('6', 650_017_920), ('7', 239_843_490)]))
        );
        assert_eq!(t.leaf_keys("872"), Some(vec!["alice"]));
        assert_eq!(t.leaf_keys("86c"), Some(vec!["bob"]));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn empty_tree_and_unknown_paths() {
        let t = MerkleTree::new();
        assert_eq!(t.root(), 0);
        assert_eq!(t.buckets(""), Some(BTreeMap::new()));
        assert_eq!(t.buckets("8"), None);
        let t = alice_bob();
        assert_eq!(t.buckets("9"), None);
        assert_eq!(
            t.buckets("87"),
            Some(BTreeMap::from([('2', t.leaf_hash([8, 7, 2]).unwrap())]))
        );
        assert_eq!(t.buckets("872"), None, "leaves have no buckets");
        assert_eq!(t.leaf_keys("87"), None, "only depth-3 paths list keys");
        assert_eq!(t.leaf_keys("873"), None);
        assert_eq!(t.leaf_keys("8720"), None);
        assert_eq!(t.buckets("G"), None);
        assert_eq!(t.buckets("8A"), None, "the client sends lowercase only");
        assert_eq!(t.buckets("é"), None);
    }

    #[test]
    fn update_is_incremental_and_matches_rebuild() {
        let mut t = alice_bob();
        t.update("alice", &ts(1_700_000_000_005, 2, "srv"));
        let mut fresh = MerkleTree::new();
        fresh.update("bob", &ts(1_700_000_000_001, 0, "srv"));
        fresh.update("alice", &ts(1_700_000_000_005, 2, "srv"));
        assert_eq!(t.root(), fresh.root());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn removed_keys_leave_zero_children_behind() {
        let mut t = alice_bob();
        assert!(t.remove("alice"));
        assert!(!t.remove("alice"));
        assert!(!t.remove("nobody"));
        let mut only_bob = MerkleTree::new();
        only_bob.update("bob", &ts(1_700_000_000_001, 0, "srv"));
        assert_eq!(t.root(), only_bob.root());
        // The emptied leaf "872" stays, with hash 0, like the TS tree.
        assert_eq!(t.buckets("87"), Some(BTreeMap::from([('2', 0)])));
        assert_eq!(t.leaf_keys("872"), Some(vec![]));
        assert!(t.remove("bob"));
        assert_eq!(t.root(), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn union_of_disjoint_trees_equals_single_tree() {
        let mut all = MerkleTree::new();
        let mut parts = [MerkleTree::new(), MerkleTree::new(), MerkleTree::new()];
        for i in 0..2_000u32 {
            let key = format!("k{i}");
            let t = ts(1_000 + u64::from(i), i % 7, "n");
            all.update(&key, &t);
            parts[(i % 3) as usize].update(&key, &t);
        }
        // Remove a few so emptied nodes are exercised too.
        for i in (0..2_000u32).step_by(97) {
            let key = format!("k{i}");
            all.remove(&key);
            parts[(i % 3) as usize].remove(&key);
        }
        let mut u = MerkleUnion::new();
        for p in &parts {
            u.add_tree(p);
        }
        assert_eq!(u.root(), all.root());
        for path in ["", "0", "a", "f", "3c", "e1"] {
            assert_eq!(u.buckets(path), all.buckets(path), "path {path:?}");
        }
        assert!(u.has_leaf(&path_string(&leaf_path_of("k1"))));
        // Same via the exported leaf list.
        let mut u2 = MerkleUnion::new();
        for p in &parts {
            for (path, h) in p.leaf_hashes() {
                u2.add_leaf(path, h);
            }
        }
        assert_eq!(u2.root(), all.root());
        // Naively summing per-store roots is wrong, which is why the union exists.
        let naive = parts.iter().fold(0u32, |a, p| a.wrapping_add(p.root()));
        assert_ne!(naive, all.root());
    }
}
