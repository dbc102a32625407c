//! Pulling partitions from a peer (after a rebalance, and to catch up). One `PULL` names the
//! partitions; the peer exports them in that order in chunks of about 1 MiB
//! (`cluster::export`), each marked with its partition and the last one of a partition as
//! such, and sends at most [`WINDOW`] chunks ahead of this node's grants (`PULL_MORE`, one per
//! chunk merged). Each chunk is merged into the local shards like a write, durably, before its
//! grant goes out. So neither side holds more than a few chunks of the pull in memory,
//! whatever the size of a partition, and a pull that fails part way resumes at the first
//! partition not complete. Merging is LWW/OR, so pulling data this node already has, or racing
//! live writes, changes nothing that should not change.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::stream::{FuturesOrdered, StreamExt};

use super::error::{ClusterError, Peer};
use super::peer::{CallStream, Grant};
use super::plane::DataPlane;
use super::table::PartitionTable;
use super::wire::{self, Kind, Pull, PullChunk, PullDone};
use crate::data::writes::{apply_writes, merge_quietly};
use crate::shard::fnv::partition_of;

/// How long a pull waits for the link to its source to come up (it was just dialled).
const LINK_WAIT: Duration = Duration::from_secs(5);

/// How a pull ended: the records merged and the partitions completed (a prefix of the ones
/// asked for), and why it stopped early, if it did.
#[derive(Debug, Default)]
pub struct Pulled {
    pub records: u64,
    pub partitions_done: usize,
    pub failure: Option<ClusterError>,
}

/// How pulled records are merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Like writes, live events included (a catch-up brings changes subscribers missed).
    Announced,
    /// Without live events: a partition moved here with partitioned placement, whose holders
    /// sent its changes to every subscriber as they happened.
    Quiet,
}

/// Chunks the exporter may send ahead of the merges: enough to keep the link busy while one
/// merges, few enough that a pull costs a few MiB in flight.
pub const WINDOW: u32 = 4;

/// What the table `new` asks node `me` to pull, by source: the partitions it gains a role for
/// ([`PartitionTable::gains`]), or on its first table with others (`initial`) every partition
/// it `keeps`, since it may hold nothing of them yet. Each is pulled from the first that is
/// not `me` and still a member of the old owner, the old backups, the new owner and the new
/// backups: the old holders have every acknowledged write. A partition no one else holds is
/// not pulled.
pub fn plan(
    old: &PartitionTable,
    new: &PartitionTable,
    me: &str,
    initial: bool,
    keeps: impl Fn(u16) -> bool,
) -> BTreeMap<String, Vec<u16>> {
    let mut plan: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for p in 0..crate::shard::fnv::PARTITION_COUNT {
        let wanted = if initial {
            keeps(p)
        } else {
            new.gains(old, p, me)
        };
        if !wanted {
            continue;
        }
        let source = old
            .holders(p)
            .chain(new.holders(p))
            .find(|m| m.node_id != me && new.member(&m.node_id).is_some());
        if let Some(source) = source {
            plan.entry(source.node_id.clone()).or_default().push(p);
        }
    }
    plan
}

/// A pull that failed is retried this many times (after the link is back).
pub const PULL_ATTEMPTS: u32 = 5;

/// Whether a pull that failed on attempt `attempt` is tried again: not past
/// [`PULL_ATTEMPTS`], and not from a source that left (its partitions have other holders,
/// and the table that dropped it planned their pulls).
pub fn retries(attempt: u32, source_is_member: bool) -> bool {
    attempt < PULL_ATTEMPTS && source_is_member
}

/// A migration round: the pulls started by one new table, one per source.
#[derive(Debug)]
pub struct Round {
    pub started: Instant,
    /// Sources whose pull has not ended.
    pub pending: usize,
    pub partitions: usize,
    pub records: u64,
    /// Sources given up on.
    pub failed: usize,
    /// The first pull after joining: `/ready` waits for it.
    pub initial: bool,
}

impl Round {
    /// The node holds what it keeps: the first round after joining ended with every source
    /// pulled whole.
    pub fn makes_ready(&self) -> bool {
        self.initial && self.failed == 0
    }
}

/// The rounds under way, by number.
#[derive(Debug)]
pub struct Rounds {
    rounds: HashMap<u64, Round>,
    next: u64,
}

impl Default for Rounds {
    fn default() -> Self {
        Rounds {
            rounds: HashMap::new(),
            next: 1,
        }
    }
}

impl Rounds {
    /// A round of pulls from `sources` sources: its number.
    pub fn start(&mut self, sources: usize, partitions: usize, initial: bool, now: Instant) -> u64 {
        let id = self.next;
        self.next += 1;
        self.rounds.insert(
            id,
            Round {
                started: now,
                pending: sources,
                partitions,
                records: 0,
                failed: 0,
                initial,
            },
        );
        id
    }

    /// Records merged by a pull of `round` (one that ended, or stopped to be retried).
    pub fn merged(&mut self, round: u64, records: u64) {
        if let Some(r) = self.rounds.get_mut(&round) {
            r.records += records;
        }
    }

    /// The pull of one source of `round` ended for good, `given_up` or whole: the round, once
    /// it was the last.
    pub fn source_ended(&mut self, round: u64, given_up: bool) -> Option<Round> {
        let r = self.rounds.get_mut(&round)?;
        r.pending = r.pending.saturating_sub(1);
        if given_up {
            r.failed += 1;
        }
        if r.pending > 0 {
            return None;
        }
        self.rounds.remove(&round)
    }

    /// No round runs: partitions are not moving here.
    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }
}

/// Pulls `partitions` from `source` in order, calling `done` after each one is merged.
pub async fn pull(
    node: &Arc<DataPlane>,
    source: &str,
    partitions: &[u16],
    merge: Merge,
    done: impl FnMut(u16),
) -> Pulled {
    if partitions.is_empty() {
        return Pulled::default();
    }
    let pulled = pull_in_order(node, source, partitions, merge, done).await;
    if pulled.failure.is_some() {
        // What was asked and not merged must not count as covering a catch-up.
        let left = &partitions[pulled.partitions_done.min(partitions.len())..];
        node.cluster.pull_incomplete(source, left);
    }
    pulled
}

async fn pull_in_order(
    node: &Arc<DataPlane>,
    source: &str,
    partitions: &[u16],
    merge: Merge,
    mut done: impl FnMut(u16),
) -> Pulled {
    let mut pulled = Pulled::default();
    let peer = || Peer::node(source);
    // Asked once the source's own connection to this node is up (and settled), this pull
    // covers the catch-up that connection triggers (`catchup::PullLog`): the data comes once.
    node.cluster.pull_planned(source, partitions);
    let Some(link) = node.cluster.wait_link(source, LINK_WAIT).await else {
        pulled.failure = Some(ClusterError::NoLink { peer: peer() });
        return pulled;
    };
    node.cluster.wait_connected(source, LINK_WAIT).await;
    node.cluster.pull_asked(source, partitions);
    let body = wire::body(&Pull {
        partitions: partitions.to_vec(),
        window: WINDOW,
    });
    let Ok((corr, mut answers)) = link
        .send(CallStream {
            kind: Kind::Pull,
            body,
        })
        .await
    else {
        pulled.failure = Some(ClusterError::LinkClosed { peer: peer() });
        return pulled;
    };
    // Chunks are merged as they come, up to [`WINDOW`] at a time (consecutive partitions
    // live on different shards, so their merges run side by side); they complete in order,
    // and each completion grants the exporter one more chunk. The peer's connection fails the
    // stream (closes it) after a silence of the cluster timeout, so this cannot wait forever.
    let mut merging = FuturesOrdered::new();
    // Index in `partitions` of the partition the next chunk must belong to.
    let mut arriving = 0usize;
    let mut ended: Option<Option<ClusterError>> = None;
    let failure = loop {
        if ended.is_some() && merging.is_empty() {
            break ended.flatten();
        }
        tokio::select! {
            biased;
            Some(merged) = merging.next(), if !merging.is_empty() => match merged {
                Ok(Merged { records, completed }) => {
                    link.do_send(Grant { corr, granted: 1 });
                    pulled.records += records;
                    node.cluster
                        .counters
                        .migration_records
                        .fetch_add(records, Ordering::Relaxed);
                    if let Some(p) = completed {
                        pulled.partitions_done += 1;
                        done(p);
                    }
                }
                Err(failure) => break Some(failure),
            },
            reply = answers.recv(), if ended.is_none() && merging.len() < WINDOW as usize => {
                // The link closes the stream when the connection is lost or falls silent.
                let Some(reply) = reply else {
                    break Some(ClusterError::Unanswered { peer: peer() });
                };
                match reply.kind {
                    Kind::PullChunk => {
                        let chunk = match wire::decode::<PullChunk>(&reply.body) {
                            Ok(chunk) => chunk,
                            Err(e) => break Some(ClusterError::Undecodable {
                                peer: peer(),
                                detail: e.to_string(),
                            }),
                        };
                        let expected = partitions.get(arriving).copied();
                        if let Err(detail) = check_chunk(&chunk, expected) {
                            break Some(ClusterError::Invalid { peer: peer(), detail });
                        }
                        if chunk.last {
                            arriving += 1;
                        }
                        merging.push_back(merge_chunk(node, chunk, merge));
                    }
                    Kind::PullDone => {
                        ended = Some(match wire::decode::<PullDone>(&reply.body) {
                            Ok(PullDone { failure: None, .. }) if arriving == partitions.len() => {
                                None
                            }
                            Ok(PullDone { failure: None, .. }) => {
                                Some(ClusterError::PullIncomplete {
                                    peer: peer(),
                                    done: arriving,
                                    asked: partitions.len(),
                                })
                            }
                            Ok(PullDone {
                                failure: Some(message),
                                ..
                            }) => Some(ClusterError::Remote {
                                peer: peer(),
                                message,
                            }),
                            Err(e) => Some(ClusterError::Undecodable {
                                peer: peer(),
                                detail: e.to_string(),
                            }),
                        });
                    }
                    other => {
                        break Some(ClusterError::UnexpectedAnswer {
                            peer: peer(),
                            asked: Kind::Pull,
                            answer: other,
                        })
                    }
                }
            }
        }
    };
    pulled.failure = failure;
    pulled
}

struct Merged {
    records: u64,
    /// The partition this chunk completed.
    completed: Option<u16>,
}

/// A chunk is of the partition due and holds only keys of it.
fn check_chunk(chunk: &PullChunk, expected: Option<u16>) -> Result<(), String> {
    if expected != Some(chunk.partition) {
        return Err(format!(
            "a chunk of partition {} where {expected:?} was due",
            chunk.partition
        ));
    }
    match chunk
        .ops
        .iter()
        .find(|op| partition_of(&op.key) != chunk.partition)
    {
        Some(stray) => Err(format!(
            "a chunk of partition {} holds key {:?} of partition {}",
            chunk.partition,
            stray.key,
            partition_of(&stray.key)
        )),
        None => Ok(()),
    }
}

/// Merges one chunk durably; a chunk of a partition this node no longer keeps (the table
/// moved it away since the pull began) is dropped: its holders have it, and merging it would
/// leave a stray copy and, for a catch-up, announce records nobody changed.
fn merge_chunk(
    node: &Arc<DataPlane>,
    mut chunk: PullChunk,
    merge: Merge,
) -> impl std::future::Future<Output = Result<Merged, ClusterError>> + 'static {
    if !node.cluster.keeps(&node.cluster.table(), chunk.partition) {
        chunk.ops.clear();
    }
    let records = chunk.ops.len() as u64;
    let completed = chunk.last.then_some(chunk.partition);
    let applied = match merge {
        Merge::Announced => Either::Left(apply_writes(&node.shards, 0, chunk.ops)),
        Merge::Quiet => Either::Right(merge_quietly(&node.shards, chunk.ops)),
    };
    async move {
        match applied.await.failure {
            Some(reason) => Err(ClusterError::MergeFailed { reason }),
            None => Ok(Merged { records, completed }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{of_ids, Role};
    use crate::shard::fnv::PARTITION_COUNT;

    fn all(plan: &BTreeMap<String, Vec<u16>>) -> Vec<u16> {
        let mut out: Vec<u16> = plan.values().flatten().copied().collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn a_joining_node_pulls_what_it_keeps_from_the_old_holders() {
        let old = of_ids(&["a", "b", "c"]);
        let new = of_ids(&["a", "b", "c", "d"]);
        let keeps = |p| new.role(p, "d") != Role::Replica;
        let plan = plan(&old, &new, "d", true, keeps);
        let kept: Vec<u16> = (0..PARTITION_COUNT).filter(|&p| keeps(p)).collect();
        assert_eq!(all(&plan), kept);
        assert!(!plan.contains_key("d"));
        for (source, parts) in &plan {
            for &p in parts {
                // The old owner: it has every acknowledged write of the partition.
                assert_eq!(
                    old.owner(p).map(|m| m.node_id.as_str()),
                    Some(source.as_str())
                );
            }
        }
        // With full placement it keeps every partition, so it pulls every one.
        let full = plan_of(&old, &new, "d", true);
        assert_eq!(all(&full), (0..PARTITION_COUNT).collect::<Vec<_>>());
    }

    fn plan_of(
        old: &PartitionTable,
        new: &PartitionTable,
        me: &str,
        initial: bool,
    ) -> BTreeMap<String, Vec<u16>> {
        plan(old, new, me, initial, |_| true)
    }

    #[test]
    fn after_the_first_table_only_gained_roles_are_pulled() {
        let old = of_ids(&["a", "b", "c"]);
        let new = of_ids(&["a", "b", "c", "d"]);
        // a loses partitions to d and gains none: nothing to pull.
        assert!(plan_of(&old, &new, "a", false).is_empty());
        let gained: Vec<u16> = (0..PARTITION_COUNT)
            .filter(|&p| new.gains(&old, p, "d"))
            .collect();
        assert_eq!(all(&plan_of(&old, &new, "d", false)), gained);
    }

    #[test]
    fn a_promoted_backup_pulls_from_a_holder_that_is_still_a_member() {
        let old = of_ids(&["a", "b", "c"]);
        let new = of_ids(&["a", "c"]);
        let plan = plan_of(&old, &new, "a", false);
        assert!(!plan.is_empty(), "a gains what b owned or backed up");
        // b is gone: whatever a gained comes from c.
        assert_eq!(plan.keys().collect::<Vec<_>>(), ["c"]);
        // Left alone, nobody else holds anything: nothing to pull.
        let alone = of_ids(&["a"]);
        assert!(plan_of(&old, &alone, "a", false).is_empty());
        assert!(plan_of(&old, &alone, "a", true).is_empty());
    }

    #[test]
    fn a_round_ends_with_its_last_source_and_makes_the_node_ready_only_whole() {
        let now = Instant::now();
        let mut rounds = Rounds::default();
        let first = rounds.start(2, 10, true, now);
        let second = rounds.start(1, 3, false, now);
        assert_ne!(first, second);
        rounds.merged(first, 5);
        assert!(
            rounds.source_ended(first, false).is_none(),
            "one source left"
        );
        rounds.merged(first, 7);
        let ended = rounds.source_ended(first, false).expect("the last source");
        assert_eq!((ended.records, ended.partitions, ended.failed), (12, 10, 0));
        assert!(ended.makes_ready());
        assert!(!rounds.is_empty(), "the second round still runs");
        let ended = rounds.source_ended(second, true).expect("its only source");
        assert_eq!(ended.failed, 1);
        assert!(!ended.makes_ready(), "not initial, and a source given up");
        assert!(rounds.is_empty());
        // A late or unknown report changes nothing.
        rounds.merged(first, 1);
        assert!(rounds.source_ended(first, false).is_none());
        let initial = rounds.start(1, 1, true, now);
        let given_up = rounds.source_ended(initial, true).expect("ended");
        assert!(
            !given_up.makes_ready(),
            "a first pull with a source given up"
        );
    }

    #[test]
    fn a_failed_pull_is_retried_a_few_times_while_its_source_is_a_member() {
        assert!(retries(1, true));
        assert!(retries(PULL_ATTEMPTS - 1, true));
        assert!(!retries(PULL_ATTEMPTS, true));
        assert!(!retries(1, false), "the source left");
    }

    #[test]
    fn a_chunk_must_be_of_the_partition_due_and_hold_only_its_keys() {
        let key_of = |p: u16| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|k| partition_of(k) == p)
                .expect("some key hashes to every partition")
        };
        let chunk = |partition: u16, keys: &[String]| PullChunk {
            partition,
            ops: keys
                .iter()
                .map(|k| crate::protocol::ClientOp {
                    id: None,
                    map_name: "m".into(),
                    key: k.clone(),
                    op_type: None,
                    record: None,
                    or_record: None,
                    or_tag: None,
                    write_concern: None,
                    timeout: None,
                })
                .collect(),
            last: true,
        };
        assert!(check_chunk(&chunk(3, &[key_of(3)]), Some(3)).is_ok());
        assert!(check_chunk(&chunk(3, &[]), Some(3)).is_ok());
        assert!(check_chunk(&chunk(4, &[key_of(4)]), Some(3)).is_err());
        assert!(check_chunk(&chunk(3, &[key_of(3)]), None).is_err());
        let stray = check_chunk(&chunk(3, &[key_of(3), key_of(5)]), Some(3));
        assert!(stray.is_err_and(|e| e.contains("of partition 5")));
    }
}
