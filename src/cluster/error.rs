//! Why a request to a peer, a gathered read or a move of partitions between nodes failed.
//!
//! One enum for the cluster's data paths (requests over a link, gathered reads, pulls,
//! handovers, repairs, write forwards): its `code()` is the `err.type` of their log lines and
//! stays the same while the wording of a message may improve. The `Display` texts are the ones
//! clients already read (a QUERY_RESP's `error`, `ERROR 500 write not acknowledged: ...`), so
//! they keep their words. What crosses to another node (`wire.rs`: `failure`, `error`) stays a
//! string and is converted at that edge: the other node may run another version.
//!
//! Link-level reasons (a refused handshake, a cut link) are [`super::peer_error::PeerError`]:
//! they are a metric label, counted per connection, not per request.
use std::fmt;

use super::wire::Kind;

/// The peer a request went to, as a message names it: its node id, and for a write what it
/// is to the write (`owner`, `backup`, `holder`), which must confirm it durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    pub role: Option<&'static str>,
}

impl Peer {
    pub fn node(node_id: &str) -> Peer {
        Peer {
            node_id: node_id.to_owned(),
            role: None,
        }
    }

    /// A peer asked to confirm a write in `role`.
    pub fn confirming(role: &'static str, node_id: &str) -> Peer {
        Peer {
            node_id: node_id.to_owned(),
            role: Some(role),
        }
    }

    /// What the request waited for: a write is confirmed (durable there), a read answered.
    fn awaited(&self) -> &'static str {
        match self.role {
            Some(_) => "confirm",
            None => "answer",
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Some(role) => write!(f, "{role} {}", self.node_id),
            None => f.write_str(&self.node_id),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No link to the peer: not a member, or its link not up (within the wait, if any).
    #[error("no connection to {peer}")]
    NoLink { peer: Peer },
    /// The link stopped before it took the request.
    #[error("{peer}: connection closed")]
    LinkClosed { peer: Peer },
    /// The link dropped the request unanswered: the connection was lost, or the request
    /// waited there for the cluster timeout (the link ends silent requests itself).
    #[error("{peer}: peer {} did not answer (connection lost or timed out)", .peer.node_id)]
    Unanswered { peer: Peer },
    /// No answer within the cluster timeout (twice it for a write forward).
    #[error("{peer} did not {} within {ms} ms", .peer.awaited())]
    Timeout { peer: Peer, ms: u128 },
    /// An answer of another kind than the request asks for.
    #[error("{peer} answered {answer:?} to {asked:?}")]
    UnexpectedAnswer {
        peer: Peer,
        asked: Kind,
        answer: Kind,
    },
    /// An answer whose body does not decode.
    #[error("{peer} answered garbage: {detail}")]
    Undecodable { peer: Peer, detail: String },
    /// An answer that decodes but contradicts the request (records of partitions not asked
    /// for, a chunk of another partition, groups of another shape).
    #[error("{peer} answered garbage: {detail}")]
    Invalid { peer: Peer, detail: String },
    /// The peer's own failure, in its words as its answer carried them.
    #[error("{peer}: {message}")]
    Remote { peer: Peer, message: String },
    /// The peer does not serve the partitions it was asked for now (the table moved them, or
    /// it is still pulling them).
    #[error("{peer} does not serve them now")]
    NotServed { peer: Peer },
    /// A gathered read found no holder left to ask for some partitions; `why` holds what
    /// each holder passed over answered.
    #[error(
        "{partitions} partition(s) of {what} could not be read from any holder (first: {first}): {}",
        joined(.why)
    )]
    Unreadable {
        what: String,
        partitions: usize,
        first: u16,
        why: Vec<ClusterError>,
    },
    /// A pull the source ended (without a failure of its own) before every partition came.
    #[error("{peer} ended the pull after {done} of {asked} partitions")]
    PullIncomplete {
        peer: Peer,
        done: usize,
        asked: usize,
    },
    /// Pulled records could not be merged here durably.
    #[error("merging pulled records failed: {reason}")]
    MergeFailed { reason: String },
    /// An export this node serves: the puller granted no chunk for the cluster timeout.
    #[error("the puller granted no chunk for {ms} ms")]
    PullerStalled { ms: u128 },
    /// An export this node serves: its reading task ended without a word.
    #[error("the export stopped")]
    ExportStopped,
    /// A shard's mailbox is gone (the node is stopping).
    #[error("a shard did not answer")]
    ShardUnavailable,
    /// A shard's listing of an export lacked a partition it was asked for.
    #[error("no shard listed partition {partition}")]
    NotListed { partition: u16 },
    /// A handover read a partition's export to its end without its last piece.
    #[error("partition {partition} was not exported whole")]
    NotExportedWhole { partition: u16 },
    /// A partition to hand over has no holder but this node (the table is of one member).
    #[error("partition {partition} has no other holder")]
    NoOtherHolder { partition: u16 },
    /// A holder did not confirm a piece of a partition handed over.
    #[error("partition {partition} not handed over: {cause}")]
    NotHandedOver {
        partition: u16,
        cause: Box<ClusterError>,
    },
    /// A partition handed over was not dropped here: written to meanwhile, or storage failed.
    #[error("partition {partition} kept: {reason}")]
    Kept { partition: u16, reason: String },
    /// The handover before leaving ran out of its share of the shutdown budget.
    #[error("not finished within {ms} ms")]
    NotFinished { ms: u128 },
    /// A write forward's task ended without its answer (the runtime is stopping).
    #[error("the forward was abandoned")]
    Abandoned,
}

fn joined(why: &[ClusterError]) -> String {
    let texts: Vec<String> = why.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl ClusterError {
    /// The `err.type` of a log line about it: stable, snake_case, one per variant.
    pub fn code(&self) -> &'static str {
        match self {
            ClusterError::NoLink { .. } => "no_link",
            ClusterError::LinkClosed { .. } => "link_closed",
            ClusterError::Unanswered { .. } => "unanswered",
            ClusterError::Timeout { .. } => "timeout",
            ClusterError::UnexpectedAnswer { .. } => "unexpected_answer",
            ClusterError::Undecodable { .. } => "undecodable_answer",
            ClusterError::Invalid { .. } => "invalid_answer",
            ClusterError::Remote { .. } => "peer_failed",
            ClusterError::NotServed { .. } => "not_served",
            ClusterError::Unreadable { .. } => "unavailable",
            ClusterError::PullIncomplete { .. } => "pull_incomplete",
            ClusterError::MergeFailed { .. } => "merge_failed",
            ClusterError::PullerStalled { .. } => "puller_stalled",
            ClusterError::ExportStopped => "export_stopped",
            ClusterError::ShardUnavailable => "shard_unavailable",
            ClusterError::NotListed { .. } => "partition_not_listed",
            ClusterError::NotExportedWhole { .. } => "export_incomplete",
            ClusterError::NoOtherHolder { .. } => "no_other_holder",
            ClusterError::NotHandedOver { .. } => "not_handed_over",
            ClusterError::Kept { .. } => "partition_kept",
            ClusterError::NotFinished { .. } => "not_finished",
            ClusterError::Abandoned => "abandoned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Peer {
        Peer::node("node-b")
    }

    /// One of each variant. The match below has no wildcard: a new variant does not compile
    /// until it is listed here, so the uniqueness test covers every code.
    fn every_variant() -> Vec<ClusterError> {
        use ClusterError::*;
        let all = vec![
            NoLink { peer: b() },
            LinkClosed { peer: b() },
            Unanswered { peer: b() },
            Timeout { peer: b(), ms: 5 },
            UnexpectedAnswer {
                peer: b(),
                asked: Kind::Query,
                answer: Kind::SyncDone,
            },
            Undecodable {
                peer: b(),
                detail: "x".into(),
            },
            Invalid {
                peer: b(),
                detail: "x".into(),
            },
            Remote {
                peer: b(),
                message: "x".into(),
            },
            NotServed { peer: b() },
            Unreadable {
                what: "map m".into(),
                partitions: 1,
                first: 0,
                why: Vec::new(),
            },
            PullIncomplete {
                peer: b(),
                done: 1,
                asked: 2,
            },
            MergeFailed { reason: "x".into() },
            PullerStalled { ms: 5 },
            ExportStopped,
            ShardUnavailable,
            NotListed { partition: 1 },
            NotExportedWhole { partition: 1 },
            NoOtherHolder { partition: 1 },
            NotHandedOver {
                partition: 1,
                cause: Box::new(ShardUnavailable),
            },
            Kept {
                partition: 1,
                reason: "x".into(),
            },
            NotFinished { ms: 5 },
            Abandoned,
        ];
        let mut seen = [false; 22];
        for e in &all {
            let i = match e {
                NoLink { .. } => 0,
                LinkClosed { .. } => 1,
                Unanswered { .. } => 2,
                Timeout { .. } => 3,
                UnexpectedAnswer { .. } => 4,
                Undecodable { .. } => 5,
                Invalid { .. } => 6,
                Remote { .. } => 7,
                NotServed { .. } => 8,
                Unreadable { .. } => 9,
                PullIncomplete { .. } => 10,
                MergeFailed { .. } => 11,
                PullerStalled { .. } => 12,
                ExportStopped => 13,
                ShardUnavailable => 14,
                NotListed { .. } => 15,
                NotExportedWhole { .. } => 16,
                NoOtherHolder { .. } => 17,
                NotHandedOver { .. } => 18,
                Kept { .. } => 19,
                NotFinished { .. } => 20,
                Abandoned => 21,
            };
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "every variant has a sample");
        all
    }

    #[test]
    fn every_variant_has_its_own_snake_case_code() {
        let all = every_variant();
        let mut codes: Vec<&str> = all.iter().map(ClusterError::code).collect();
        for code in &codes {
            assert!(
                !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "a code used twice");
    }

    #[test]
    fn codes_are_stable() {
        // Log queries and alerts filter on these: renaming one breaks them.
        let codes: Vec<&str> = every_variant().iter().map(ClusterError::code).collect();
        assert_eq!(
            codes,
            [
                "no_link",
                "link_closed",
                "unanswered",
                "timeout",
                "unexpected_answer",
                "undecodable_answer",
                "invalid_answer",
                "peer_failed",
                "not_served",
                "unavailable",
                "pull_incomplete",
                "merge_failed",
                "puller_stalled",
                "export_stopped",
                "shard_unavailable",
                "partition_not_listed",
                "export_incomplete",
                "no_other_holder",
                "not_handed_over",
                "partition_kept",
                "not_finished",
                "abandoned",
            ]
        );
    }

    #[test]
    fn messages_clients_read_keep_their_words() {
        // A gathered read's failure is the QUERY_RESP's error, a write's the ERROR's message.
        let write = |e: ClusterError| e.to_string();
        let owner = || Peer::confirming("owner", "node-b");
        assert_eq!(
            write(ClusterError::NoLink { peer: owner() }),
            "no connection to owner node-b"
        );
        assert_eq!(
            write(ClusterError::Timeout {
                peer: Peer::confirming("backup", "node-c"),
                ms: 5000
            }),
            "backup node-c did not confirm within 5000 ms"
        );
        assert_eq!(
            write(ClusterError::Unanswered { peer: owner() }),
            "owner node-b: peer node-b did not answer (connection lost or timed out)"
        );
        assert_eq!(
            write(ClusterError::Remote {
                peer: owner(),
                message: "not durable".into()
            }),
            "owner node-b: not durable"
        );
        let read = ClusterError::Unreadable {
            what: "map users".into(),
            partitions: 3,
            first: 17,
            why: vec![
                ClusterError::Timeout { peer: b(), ms: 250 },
                ClusterError::NotServed {
                    peer: Peer::node("node-c"),
                },
                ClusterError::UnexpectedAnswer {
                    peer: b(),
                    asked: Kind::Query,
                    answer: Kind::SyncDone,
                },
            ],
        };
        assert_eq!(
            read.to_string(),
            "3 partition(s) of map users could not be read from any holder (first: 17): \
             node-b did not answer within 250 ms; node-c does not serve them now; \
             node-b answered SyncDone to Query"
        );
        assert_eq!(
            ClusterError::LinkClosed { peer: b() }.to_string(),
            "node-b: connection closed"
        );
        assert_eq!(
            ClusterError::Undecodable {
                peer: b(),
                detail: "undecodable body: eof".into()
            }
            .to_string(),
            "node-b answered garbage: undecodable body: eof"
        );
    }
}
