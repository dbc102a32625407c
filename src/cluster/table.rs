//! The partition table: for each of the 271 partitions, its owner and backups among the live
//! members. Plain data, no actix.
//!
//! Placement is rendezvous (highest-random-weight) hashing: every member gets a score per
//! partition from `(node id, partition)` alone, and the partition's replicas are the members
//! with the highest scores, best first (owner, then backups). Every node that sees the same
//! member list computes the same table, with no coordination; a member joining or leaving
//! moves only the partitions it wins or held (about 1/n of them), and when an owner goes its
//! first backup becomes owner, because the order of the others does not change.
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::MAX_BACKUPS;
use crate::protocol::{NodeEndpoints, PartitionMap, PartitionMapNode, PartitionOwner};
use crate::shard::fnv::PARTITION_COUNT;

/// A live member as the table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMember {
    pub node_id: String,
    /// Where its node-to-node transport listens (TCP, the cluster port).
    pub peer_addr: SocketAddr,
    pub generation: u64,
    pub ws_url: String,
}

/// What a node is for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Backup,
    /// Neither: with full placement the node still holds a copy, written asynchronously and
    /// never waited for; with partitioned placement it holds nothing of the partition.
    Replica,
}

#[derive(Clone, Debug)]
pub struct PartitionTable {
    pub version: u32,
    /// Sorted by node id, one entry per node id.
    members: Vec<TableMember>,
    /// Per partition, indexes into `members`: owner first, then backups.
    replicas: Vec<Vec<usize>>,
}

/// Table versions count seconds from this instant (2024-01-01T00:00:00Z), so they fit a u32
/// until 2160.
const VERSION_EPOCH_SECS: u64 = 1_704_067_200;

/// The version of the table that follows one of version `previous`, decided at `now_secs`
/// (Unix time): the seconds since [`VERSION_EPOCH_SECS`], or one more than `previous` if that
/// is not more. Every node decides a change within the failure-detection spread of the others,
/// so the versions of one table differ by seconds between nodes while a later table always
/// gets a higher one: a cluster client that takes a map only when its version is higher
/// (TopGun's `PartitionRouter`) never goes back to an older table when it moves between nodes.
pub fn next_version(previous: u32, now_secs: u64) -> u32 {
    let clock = u32::try_from(now_secs.saturating_sub(VERSION_EPOCH_SECS)).unwrap_or(u32::MAX);
    clock.max(previous.saturating_add(1))
}

impl PartitionTable {
    /// The table for `members` (this node included). Two entries with one node id (a clash, or
    /// a restarted node not yet declared down) are one member: the newest generation, then the
    /// highest address, so every node picks the same one.
    pub fn compute(members: Vec<TableMember>, backups: usize, version: u32) -> Self {
        let members = normalize(members);
        let copies = (1 + backups.min(MAX_BACKUPS)).min(members.len());
        let id_hashes: Vec<u64> = members.iter().map(|m| fnv64(&m.node_id)).collect();
        let replicas = (0..PARTITION_COUNT)
            .map(|p| {
                let mut ranked: Vec<(u64, usize)> = id_hashes
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (score(*h, p), i))
                    .collect();
                ranked.sort_unstable_by(|a, b| b.cmp(a));
                ranked.into_iter().take(copies).map(|(_, i)| i).collect()
            })
            .collect();
        PartitionTable {
            version,
            members,
            replicas,
        }
    }

    pub fn members(&self) -> &[TableMember] {
        &self.members
    }

    pub fn member(&self, node_id: &str) -> Option<&TableMember> {
        self.members
            .binary_search_by(|m| m.node_id.as_str().cmp(node_id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// The owner of `partition`; `None` only for an empty table.
    pub fn owner(&self, partition: u16) -> Option<&TableMember> {
        self.replicas
            .get(usize::from(partition))?
            .first()
            .map(|&i| &self.members[i])
    }

    pub fn backups(&self, partition: u16) -> impl Iterator<Item = &TableMember> + '_ {
        self.replicas
            .get(usize::from(partition))
            .into_iter()
            .flat_map(|r| r.iter().skip(1))
            .map(|&i| &self.members[i])
    }

    /// The owner of `partition`, then its backups.
    pub fn holders(&self, partition: u16) -> impl Iterator<Item = &TableMember> + '_ {
        self.replicas
            .get(usize::from(partition))
            .into_iter()
            .flatten()
            .map(|&i| &self.members[i])
    }

    pub fn role(&self, partition: u16, node_id: &str) -> Role {
        match self.owner(partition) {
            Some(o) if o.node_id == node_id => Role::Owner,
            _ if self.backups(partition).any(|b| b.node_id == node_id) => Role::Backup,
            _ => Role::Replica,
        }
    }

    /// (owned, backup) partition counts of `node_id`.
    pub fn counts(&self, node_id: &str) -> (usize, usize) {
        (0..PARTITION_COUNT).fold((0, 0), |(o, b), p| match self.role(p, node_id) {
            Role::Owner => (o + 1, b),
            Role::Backup => (o, b + 1),
            Role::Replica => (o, b),
        })
    }

    /// Partitions whose owner differs from `before` (all of them against an empty table).
    pub fn moved_owners(&self, before: &PartitionTable) -> usize {
        (0..PARTITION_COUNT)
            .filter(|&p| self.owner(p).map(|m| &m.node_id) != before.owner(p).map(|m| &m.node_id))
            .count()
    }

    /// Whether `node_id` gains a role for `partition` from the table `before` to this one: it
    /// holds the partition now and did not, or owns it now and only backed it up. What it
    /// gains it must pull: it may lack writes the others acknowledged without it.
    pub fn gains(&self, before: &PartitionTable, partition: u16, node_id: &str) -> bool {
        let (was, is) = (
            before.role(partition, node_id),
            self.role(partition, node_id),
        );
        (is != Role::Replica && was == Role::Replica) || (is == Role::Owner && was != Role::Owner)
    }

    /// The partitions `node_id` owns, by backup (each backup's in ascending order), leaving
    /// out those `skip` names: what an owner compares with each of its backups.
    pub fn owned_by_backup(
        &self,
        node_id: &str,
        skip: impl Fn(u16) -> bool,
    ) -> BTreeMap<String, Vec<u16>> {
        let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for p in 0..PARTITION_COUNT {
            if self.owner(p).is_none_or(|o| o.node_id != node_id) || skip(p) {
                continue;
            }
            for b in self.backups(p) {
                out.entry(b.node_id.clone()).or_default().push(p);
            }
        }
        out
    }

    /// Whether `members` (as membership reports them) would place partitions exactly as this
    /// table does: the same ids and generations. Cheap, so the caller need not compute a table
    /// on every membership message to find out nothing changed.
    pub fn has_members(&self, members: Vec<TableMember>) -> bool {
        let members = normalize(members);
        self.members.len() == members.len()
            && self
                .members
                .iter()
                .zip(&members)
                .all(|(a, b)| a.node_id == b.node_id && a.generation == b.generation)
    }

    /// `PARTITION_MAP` (protocol.md section 7).
    pub fn to_wire(&self, generated_at: u64) -> PartitionMap {
        PartitionMap {
            version: self.version,
            partition_count: u32::from(PARTITION_COUNT),
            nodes: self
                .members
                .iter()
                .map(|m| PartitionMapNode {
                    node_id: m.node_id.clone(),
                    endpoints: NodeEndpoints {
                        websocket: m.ws_url.clone(),
                        http: None,
                    },
                    status: "ACTIVE".into(),
                })
                .collect(),
            partitions: (0..PARTITION_COUNT)
                .map(|p| PartitionOwner {
                    partition_id: u32::from(p),
                    owner_node_id: self.owner(p).map(|m| m.node_id.clone()).unwrap_or_default(),
                    backup_node_ids: self.backups(p).map(|m| m.node_id.clone()).collect(),
                })
                .collect(),
            generated_at,
        }
    }
}

/// Sorted by node id, one entry per id: the newest generation, then the highest address.
fn normalize(mut members: Vec<TableMember>) -> Vec<TableMember> {
    members.sort_by(|a, b| {
        a.node_id
            .cmp(&b.node_id)
            .then(b.generation.cmp(&a.generation))
            .then(b.peer_addr.cmp(&a.peer_addr))
    });
    members.dedup_by(|later, first| later.node_id == first.node_id);
    members
}

/// 64-bit FNV-1a of the node id: spreads similar ids (`node-a`, `node-b`) apart before `score`.
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A member's weight for a partition: splitmix64's finalizer over the id hash and partition.
fn score(id_hash: u64, partition: u16) -> u64 {
    let mut z = id_hash ^ u64::from(partition).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A table of members `ids` with one backup, for the unit tests of the modules that read one.
#[cfg(test)]
pub(crate) fn of_ids(ids: &[&str]) -> PartitionTable {
    let members = ids
        .iter()
        .enumerate()
        .map(|(i, id)| TableMember {
            node_id: (*id).to_owned(),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
            generation: 1,
            ws_url: String::new(),
        })
        .collect();
    PartitionTable::compute(members, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, port: u16) -> TableMember {
        TableMember {
            node_id: id.into(),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            generation: 1,
            ws_url: format!("ws://127.0.0.1:{}/ws", port + 1000),
        }
    }

    fn three() -> Vec<TableMember> {
        vec![member("a", 1), member("b", 2), member("c", 3)]
    }

    #[test]
    fn versions_follow_the_clock_and_never_go_back() {
        let t = VERSION_EPOCH_SECS + 100;
        assert_eq!(
            next_version(1, t),
            100,
            "the clock, from the first change on"
        );
        assert_eq!(next_version(100, t), 101, "two changes in one second");
        assert_eq!(
            next_version(500, t),
            501,
            "a clock behind the previous decision"
        );
        assert_eq!(next_version(u32::MAX, t), u32::MAX);
        // Two nodes deciding the same change a second apart, then a later change on the
        // slower one: the later table is higher than the first one's version of the earlier.
        let (a, b) = (next_version(7, t), next_version(7, t + 1));
        assert!(next_version(b, t + 5) > a.max(b));
    }

    #[test]
    fn every_node_computes_the_same_table_whatever_the_order() {
        let one = PartitionTable::compute(three(), 1, 1);
        let mut shuffled = three();
        shuffled.reverse();
        let two = PartitionTable::compute(shuffled, 1, 7);
        for p in 0..PARTITION_COUNT {
            assert_eq!(one.owner(p), two.owner(p));
            assert_eq!(
                one.backups(p).collect::<Vec<_>>(),
                two.backups(p).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn owners_and_backups_are_distinct_and_spread() {
        let t = PartitionTable::compute(three(), 1, 1);
        for p in 0..PARTITION_COUNT {
            let owner = t.owner(p).unwrap();
            let backups: Vec<_> = t.backups(p).collect();
            assert_eq!(backups.len(), 1);
            assert_ne!(backups[0].node_id, owner.node_id);
        }
        let (mut owned, mut backed) = (0, 0);
        for id in ["a", "b", "c"] {
            let (o, b) = t.counts(id);
            // 271 / 3 ≈ 90: rendezvous hashing keeps each within a loose band.
            assert!((60..=120).contains(&o), "{id} owns {o}");
            owned += o;
            backed += b;
        }
        assert_eq!((owned, backed), (271, 271));
    }

    #[test]
    fn a_leaving_owner_is_replaced_by_its_backup_and_nothing_else_moves() {
        let before = PartitionTable::compute(three(), 1, 1);
        let after = PartitionTable::compute(vec![member("a", 1), member("c", 3)], 1, 2);
        for p in 0..PARTITION_COUNT {
            let was = before.owner(p).unwrap();
            let now = after.owner(p).unwrap();
            if was.node_id == "b" {
                assert_eq!(Some(now), before.backups(p).next(), "partition {p}");
            } else {
                assert_eq!(now.node_id, was.node_id, "partition {p} moved needlessly");
            }
        }
        assert_eq!(after.moved_owners(&before), before.counts("b").0);
    }

    #[test]
    fn a_joining_member_takes_about_a_quarter_of_the_partitions() {
        let before = PartitionTable::compute(three(), 1, 1);
        let mut four = three();
        four.push(member("d", 4));
        let after = PartitionTable::compute(four, 1, 2);
        let moved = after.moved_owners(&before);
        assert_eq!(moved, after.counts("d").0, "only partitions d wins move");
        assert!((40..=100).contains(&moved), "moved {moved}");
    }

    #[test]
    fn a_member_gains_what_it_now_holds_or_now_owns_and_nothing_else() {
        let before = PartitionTable::compute(three(), 1, 1);
        let mut four = three();
        four.push(member("d", 4));
        let after = PartitionTable::compute(four, 1, 2);
        for p in 0..PARTITION_COUNT {
            // d held nothing: it gains exactly what it holds now.
            assert_eq!(
                after.gains(&before, p, "d"),
                after.role(p, "d") != Role::Replica,
                "partition {p}"
            );
            for id in ["a", "b", "c"] {
                let (was, is) = (before.role(p, id), after.role(p, id));
                let gained = after.gains(&before, p, id);
                match (was, is) {
                    (Role::Replica, Role::Owner | Role::Backup) => assert!(gained),
                    (Role::Backup, Role::Owner) => assert!(gained, "promoted on {p}"),
                    // Demoted or dropped, or unchanged: nothing to pull.
                    _ => assert!(!gained, "{id} on {p}: {was:?} -> {is:?}"),
                }
            }
        }
        // A backup promoted when its owner leaves gains the ownership.
        let two = PartitionTable::compute(vec![member("a", 1), member("c", 3)], 1, 3);
        let promoted = (0..PARTITION_COUNT)
            .find(|&p| {
                before.owner(p).is_some_and(|m| m.node_id == "b")
                    && before.role(p, "a") == Role::Backup
            })
            .expect("a backs up some partition b owns");
        assert!(two.gains(&before, promoted, "a"));
        // The same table gains nothing.
        assert!((0..PARTITION_COUNT).all(|p| !before.gains(&before, p, "a")));
    }

    #[test]
    fn an_owner_compares_each_owned_partition_with_each_of_its_backups() {
        let t = PartitionTable::compute(three(), 2, 1);
        let by_backup = t.owned_by_backup("a", |_| false);
        assert!(!by_backup.contains_key("a"));
        let owned: Vec<u16> = (0..PARTITION_COUNT)
            .filter(|&p| t.role(p, "a") == Role::Owner)
            .collect();
        // Two backups of three members: b and c back up every partition a owns.
        assert_eq!(by_backup.get("b"), Some(&owned));
        assert_eq!(by_backup.get("c"), Some(&owned));
        let skipped = owned[0];
        let fewer = t.owned_by_backup("a", |p| p == skipped);
        assert_eq!(fewer.get("b").map(Vec::len), Some(owned.len() - 1));
        assert!(!fewer["b"].contains(&skipped));
        // A member alone owns everything and has no backup to compare with.
        let alone = PartitionTable::compute(vec![member("a", 1)], 1, 1);
        assert!(alone.owned_by_backup("a", |_| false).is_empty());
    }

    #[test]
    fn backups_are_capped_by_the_member_count_and_a_clash_is_one_member() {
        let alone = PartitionTable::compute(vec![member("a", 1)], 1, 1);
        assert_eq!(alone.counts("a"), (271, 0));
        let mut clash = three();
        let mut newer = member("b", 9);
        newer.generation = 5;
        clash.push(newer.clone());
        let t = PartitionTable::compute(clash, 3, 1);
        assert_eq!(t.members().len(), 3);
        assert_eq!(t.member("b"), Some(&newer));
        assert_eq!(t.backups(0).count(), 2);
        let wire = t.to_wire(42);
        assert_eq!(wire.partitions.len(), 271);
        assert_eq!(wire.nodes.len(), 3);
    }
}
