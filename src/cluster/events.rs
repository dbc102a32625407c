//! The cluster's notable events: membership, links between nodes, partition moves, repairs.
//! Declared once here (see `telemetry::event`); the actors and tasks only fill them in.
use crate::events;
use crate::telemetry::event::{ErrField, Shown};

events! {
    // Membership (the cluster actor).
    Info MembershipStarted<'a> = "cluster_membership_started", "cluster membership started" {
        addr: Shown<'a> => "addr",
        generation: u64 => "generation",
        seeds: String => "seeds",
        probe_ms: u64 => "probeMs",
    }
    Warning JoinTimedOut = "cluster_join_timed_out",
        "cluster join timed out: serving with this node's data" {
        waited_ms: u64 => "waitedMs",
        seeds: String => "seeds",
        members: usize => "members",
        err: ErrField => "err",
    }
    Info Announcing = "cluster_announcing",
        "no cluster member known; announcing to seeds and former members" {
        seeds: String => "seeds",
        former_members: usize => "formerMembers",
        suppressed: u64 => "suppressed",
    }
    Warning SeedUnresolved<'a> = "seed_unresolved", "seed does not resolve" {
        seed: &'a str => "seed",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning AnnounceFailed<'a> = "announce_failed", "announce failed" {
        addr: Shown<'a> => "addr",
        err: ErrField => "err",
    }
    Info DataReady = "cluster_ready", "cluster joined and data pulled: ready" {
        members: usize => "members",
    }
    Warning NodeIdClash<'a> = "node_id_clash", "node id clash" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        own_addr: Shown<'a> => "ownAddr",
        err: ErrField => "err",
    }
    Info MemberJoined<'a> = "member_joined", "member joined" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        generation: u64 => "generation",
        members: usize => "members",
    }
    /// Declared down by the failure detector (not a graceful leave).
    Warning MemberDown<'a> = "member_down", "member down" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        generation: u64 => "generation",
        members: usize => "members",
        err: ErrField => "err",
    }
    Info MemberLeft<'a> = "member_left", "member left" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        generation: u64 => "generation",
        members: usize => "members",
    }
    Info MemberRejoined<'a> = "member_rejoined", "member rejoined" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        generation: u64 => "generation",
        previous_peer: &'a str => "previousPeer",
        previous_generation: u64 => "previousGeneration",
        members: usize => "members",
    }
    Warning MemberSuspected<'a> = "member_suspected", "member suspected" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        generation: u64 => "generation",
    }
    Warning RejoinedAsNewGeneration = "cluster_rejoined",
        "cluster rejoined as a new generation" {
        generation: u64 => "generation",
        previous_generation: u64 => "previousGeneration",
        members: usize => "members",
        err: ErrField => "err",
    }
    /// `side`: `rejoined` on the node that had been declared down, `stayed` on the others.
    Info SplitHealed<'a> = "cluster_split_healed", "cluster split healed" {
        side: &'static str => "side",
        peer: Option<&'a str> => "peer",
        generation: Option<u64> => "generation",
        apart_ms: Option<u64> => "apartMs",
        members: usize => "members",
    }
    Info ClusterActive = "cluster_active", "cluster active" {
        members: usize => "members",
    }
    Info ClusterIdle = "cluster_idle", "cluster idle" {
        members: usize => "members",
    }
    Warning MembershipDefunct = "cluster_membership_defunct",
        "cluster membership defunct: declared down by the others" {
        err: ErrField => "err",
    }
    Info LiveQueriesResynced = "live_queries_resynced",
        "live queries told to resubscribe: changes of other nodes may have been missed" {
        reason: &'static str => "reason",
        members: usize => "members",
    }
    Warning DatagramUnsealed<'a> = "cluster_datagram_unsealed",
        "cluster datagram refused: the sender does not share this node's cluster secret" {
        from: Shown<'a> => "from",
        reason: &'static str => "reason",
        bytes: usize => "bytes",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning DatagramInvalid = "cluster_datagram_invalid", "invalid cluster datagram" {
        from: Option<String> => "from",
        reason: &'static str => "reason",
        bytes: usize => "bytes",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning SocketReadFailed = "cluster_socket_read_failed", "cluster socket read failed" {
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning LeaveFailed = "cluster_leave_failed", "leaving the cluster failed" {
        err: ErrField => "err",
    }
    Info ClusterLeft = "cluster_left", "cluster left" {
        members: usize => "members",
        told: usize => "told",
    }

    // Partition table and data moves.
    Info PartitionsRebalanced = "partitions_rebalanced", "partitions rebalanced" {
        version: u32 => "version",
        previous_version: u32 => "previousVersion",
        members: usize => "members",
        owned: usize => "owned",
        backup: usize => "backup",
        moved_owners: usize => "movedOwners",
        member_ids: String => "memberIds",
    }
    Info MigrationStarted = "migration_started", "migration started" {
        round: u64 => "round",
        partitions: usize => "partitions",
        sources: String => "sources",
        initial: bool => "initial",
    }
    Info MigrationFinished = "migration_finished", "migration finished" {
        round: u64 => "round",
        partitions: usize => "partitions",
        records: u64 => "records",
        failed_sources: usize => "failedSources",
        took_ms: u64 => "tookMs",
    }
    Warning PullFailed<'a> = "partition_pull_failed", "partition pull failed; retrying" {
        peer: &'a str => "peer",
        partitions: usize => "partitions",
        attempt: u32 => "attempt",
        err: ErrField => "err",
    }
    Warning PullGivenUp<'a> = "partition_pull_given_up", "partition pull given up" {
        peer: &'a str => "peer",
        partitions: usize => "partitions",
        err: ErrField => "err",
    }
    Info CatchUpStarted<'a> = "catch_up_started", "catch-up started" {
        peer: &'a str => "peer",
        partitions: usize => "partitions",
        covered_by_pull: usize => "coveredByPull",
    }
    Info CatchUpFinished<'a> = "catch_up_finished", "catch-up finished" {
        peer: &'a str => "peer",
        records: u64 => "records",
        took_ms: u64 => "tookMs",
    }
    Warning CatchUpFailed<'a> = "catch_up_failed", "catch-up failed; retrying" {
        peer: &'a str => "peer",
        attempt: u32 => "attempt",
        took_ms: u64 => "tookMs",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Info PartitionsHandedOver = "partitions_handed_over", "partitions handed over" {
        partitions: usize => "partitions",
        records: u64 => "records",
        kept_back: usize => "keptBack",
    }
    Warning HandoverIncomplete = "partition_handover_incomplete",
        "partition handover incomplete; retrying" {
        kept_back: usize => "keptBack",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Info PartitionsSent = "partitions_sent", "partitions sent to peer" {
        partitions: usize => "partitions",
        records: u64 => "records",
        took_ms: u64 => "tookMs",
    }
    Warning PartitionsNotSent = "partitions_not_sent", "partitions not sent to peer" {
        partitions: usize => "partitions",
        records: u64 => "records",
        err: ErrField => "err",
    }
    /// `direction`: `pulled` (this node found the difference) or `pulled on request`.
    Info Repaired<'a> = "anti_entropy_repaired", "anti-entropy repair" {
        partition: u16 => "partition",
        peer: &'a str => "peer",
        records: u64 => "records",
        direction: &'static str => "direction",
    }
    Warning RepairFailed<'a> = "anti_entropy_repair_failed", "anti-entropy repair failed" {
        partition: u16 => "partition",
        peer: &'a str => "peer",
        err: ErrField => "err",
    }
    Warning HandoffDropped = "write_handoff_dropped", "write handoff dropped: too many waiting" {
        pending: i64 => "pending",
        pending_bytes: i64 => "pendingBytes",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning HandoffGivenUp = "write_handoff_given_up", "write handoff given up" {
        partitions: usize => "partitions",
        tried_for_ms: u64 => "triedForMs",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }

    // Links between nodes (peer connections and the cluster listener).
    Info LinkUp<'a> = "peer_link_up", "peer link up" {
        peer: &'a str => "peer",
        generation: u64 => "generation",
    }
    Info LinkRestored<'a> = "peer_link_restored", "peer link restored" {
        peer: &'a str => "peer",
        down_for_ms: u64 => "downForMs",
    }
    Info LinkLost<'a> = "peer_link_lost", "peer link lost; redialling" {
        peer: &'a str => "peer",
    }
    Warning LinkMissing<'a> = "peer_link_missing", "peer link missing while the member is alive" {
        peer: &'a str => "peer",
        down_for_ms: u64 => "downForMs",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning DialTlsFailed<'a> = "peer_dial_tls_failed",
        "peer link refused: the TLS handshake failed" {
        peer: &'a str => "peer",
        addr: Shown<'a> => "addr",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning AcceptTlsFailed<'a> = "peer_accept_tls_failed", "peer refused: its TLS handshake failed" {
        from: Shown<'a> => "from",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning LinkBacklogCut = "peer_link_backlog_cut",
        "peer link cut: the peer does not read what it is sent" {
        unsent_bytes: u64 => "unsentBytes",
        bound_bytes: usize => "boundBytes",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning PeerRefused<'a> = "peer_refused", "peer refused" {
        reason: &'static str => "reason",
        detail: &'a str => "detail",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Error SeedSecretDiffers<'a> = "seed_secret_differs",
        "the seed does not share this node's cluster secret: this node cannot join" {
        seed: &'a str => "seed",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Error RefusedForSecret<'a> = "refused_by_peer_secret",
        "peer refused this node: the cluster secrets differ" {
        reason: &'a str => "reason",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning RefusedByPeer<'a> = "refused_by_peer", "peer refused this node" {
        reason: &'a str => "reason",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning UndecodableWrite = "peer_write_undecodable", "undecodable write from peer" {
        err: ErrField => "err",
    }
    Warning TooManyConnections<'a> = "cluster_connections_refused",
        "cluster connection refused: too many" {
        from: Shown<'a> => "from",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    Warning AcceptFailed = "cluster_accept_failed", "cluster accept failed" {
        suppressed: u64 => "suppressed",
        retry_in_ms: u64 => "retryInMs",
        err: ErrField => "err",
    }
}
