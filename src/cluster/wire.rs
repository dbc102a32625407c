//! The node-to-node transport's message format (version [`PEER_VERSION`]), plain data.
//!
//! TCP on the cluster port (the same number as the UDP membership port). Each frame is a
//! 4-byte big-endian length, then the payload: kind `u8`, correlation id `u64` big-endian (0 =
//! no answer wanted), and a MessagePack body (named fields, so a capture reads as maps).
//! A frame over [`MAX_PEER_FRAME`] bytes ends the connection.
//!
//! Each side opens with `HELLO {magic, version, nodeId, generation, placement}`; a receiver that
//! speaks another version or placement (or sees garbage, or its own node id from another process) answers
//! `REFUSED {reason}` and closes. With a cluster secret the HELLOs also carry `nonce` (and the
//! listener's `proofs`), and the dialler sends `AUTH {proofs}` before anything else
//! (`secret.rs`); a peer that proves no secret or another one is refused with reason `auth`. Requests carry a fresh correlation id and are answered with
//! the same one: `WRITE_FORWARD`/`WRITE_REPLICATE` by `WRITE_DONE`, `PULL` by any number of
//! `PULL_CHUNK`s then `PULL_DONE` (the puller grants chunks with `PULL_MORE`, one-way, under
//! the pull's correlation id), `QUERY` by `QUERY_DONE`, `SYNC_READ` by `SYNC_DONE`. `TOPIC` is one-way.
//!
//! Write bodies are encoded once and sent as they are to every replica: the owner re-sends the
//! forwarded body with kind `WRITE_REPLICATE`, so the trace (`requestId`, origin node and
//! client) reaches every node the write touches unchanged.
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::protocol::{ClientOp, OpRejected};

/// Version of this format; a peer with another one is refused (and counted).
pub const PEER_VERSION: u16 = 2;
/// First field of every HELLO: anything else on the port is not a TopGun node.
pub const PEER_MAGIC: &str = "topgun-peer";
/// Largest frame accepted: a full client batch (16 MiB by default) with room for the header.
pub const MAX_PEER_FRAME: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Refused = 2,
    /// A write sent to the owner of its partitions by the node its client sent it to.
    WriteForward = 3,
    /// A write the owner copies to a backup (answer awaited) or another member.
    WriteReplicate = 4,
    WriteDone = 5,
    Topic = 6,
    Pull = 7,
    PullChunk = 8,
    PullDone = 9,
    /// One node's share of a gathered read: a query over the partitions it was asked for.
    Query = 10,
    QueryDone = 11,
    /// One node's share of a gathered Merkle or OR-Map sync step.
    SyncRead = 12,
    SyncDone = 13,
    /// The maps the sender has live subscriptions on (partitioned placement); one-way.
    Interest = 14,
    /// Changes applied by the sender, for its live subscribers' maps; one-way.
    Events = 15,
    /// The puller merged chunks of a pull: the exporter may send that many more; one-way.
    PullMore = 16,
    /// The dialler's proof of the cluster secret, the last step of an authenticated handshake.
    Auth = 17,
    /// Anti-entropy: the digests of the partitions asked, answered by `DIGESTS_DONE`.
    Digests = 18,
    DigestsDone = 19,
    /// Anti-entropy: the sender found these partitions different and merged the receiver's
    /// copy; the receiver pulls the sender's. One-way.
    Repair = 20,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Refused,
            3 => Kind::WriteForward,
            4 => Kind::WriteReplicate,
            5 => Kind::WriteDone,
            6 => Kind::Topic,
            7 => Kind::Pull,
            8 => Kind::PullChunk,
            9 => Kind::PullDone,
            10 => Kind::Query,
            11 => Kind::QueryDone,
            12 => Kind::SyncRead,
            13 => Kind::SyncDone,
            14 => Kind::Interest,
            15 => Kind::Events,
            16 => Kind::PullMore,
            17 => Kind::Auth,
            18 => Kind::Digests,
            19 => Kind::DigestsDone,
            20 => Kind::Repair,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub magic: String,
    pub version: u16,
    pub node_id: String,
    pub generation: u64,
    /// `full` or `partitioned` (absent from nodes before it: `full`). Members must agree: a
    /// full node expects every write, a partitioned one only its partitions'.
    #[serde(default = "full_placement")]
    pub placement: String,
    /// With a cluster secret: fresh random bytes the other side's proof must cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<serde_bytes::ByteBuf>,
    /// The listener's proofs of the cluster secret, one per secret it holds (`secret.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proofs: Vec<serde_bytes::ByteBuf>,
}

/// Anti-entropy: partitions to digest (`DIGESTS`) or to pull from the sender (`REPAIR`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Partitions {
    pub partitions: Vec<u16>,
}

/// The digests of the asked partitions the answering node holds (and is not still pulling).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DigestsDone {
    pub digests: Vec<crate::shard::digest::PartitionDigest>,
}

/// The dialler's proofs of the cluster secret, one per secret it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    pub proofs: Vec<serde_bytes::ByteBuf>,
}

fn full_placement() -> String {
    "full".to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

/// Where a write came from, carried to every node it touches and into their log lines.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The client's id of the batch's last op (`OP_ACK.lastId`), when it gave one.
    pub request_id: Option<String>,
    pub origin_node_id: String,
    pub client_id: String,
    /// The client's connection on the origin node, so live events of the write reach every
    /// subscriber but the writer, from whichever node sends them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Write {
    pub trace: Trace,
    pub ops: Vec<ClientOp>,
    /// On a forward with partitioned placement: the partitions of `ops` the origin applied
    /// itself. The owner replicates the others to the origin when its own table makes the
    /// origin their backup (the two tables differ while a rebalance spreads). Absent: the
    /// origin applied every op (full placement), or this is not a forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_kept: Option<Vec<u16>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteDone {
    pub rejected: Vec<OpRejected>,
    /// Why the write must not be acknowledged (not durable there, or a replica failed).
    pub failure: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    pub topic: String,
    pub data: rmpv::Value,
    pub origin_node_id: String,
}

/// Pulls `partitions`, exported in that order. The exporter sends at most `window` chunks
/// ahead of the puller's `PULL_MORE` grants, so neither side buffers more than that.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pull {
    pub partitions: Vec<u16>,
    pub window: u32,
}

/// Records of `partition` as client ops: PUT (LWW record, tombstones included), OR_ADD,
/// OR_REMOVE (a removed tag). Applying them is an LWW/OR merge, so a chunk applied twice
/// changes nothing. `last`: the partition is complete (an empty one is one such chunk).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullChunk {
    pub partition: u16,
    pub ops: Vec<ClientOp>,
    pub last: bool,
}

/// Chunks the exporter may send besides those granted before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullMore {
    pub granted: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PullDone {
    pub records: u64,
    pub failure: Option<String>,
}

/// A share of a gathered read: the client's query (as it came, compiled again by the peer)
/// over `partitions` only, which the asker's table `tableVersion` gives this peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub map: String,
    pub query: crate::protocol::Query,
    pub fields: Option<Vec<String>>,
    pub partitions: Vec<u16>,
    pub cap: u32,
    pub table_version: u32,
}

/// The answer to [`Query`]: rows (in query order, at most a page) or groups, for the
/// partitions it serves; `refused` lists the ones it does not (it keeps no role for them, or
/// is still pulling them), so the asker takes them from another holder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryDone {
    #[serde(default)]
    pub rows: Vec<(String, rmpv::Value)>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub groups: Option<crate::shard::aggregate::Groups>,
    #[serde(default)]
    pub refused: Vec<u16>,
    pub table_version: u32,
    pub error: Option<String>,
}

/// A share of a gathered sync step over `partitions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRead {
    pub map: String,
    pub ask: crate::data::sync::SyncAsk,
    pub partitions: Vec<u16>,
    pub table_version: u32,
}

/// The answer to [`SyncRead`]: the share over the partitions served, the ones refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncDone {
    pub share: crate::data::sync::SyncShare,
    #[serde(default)]
    pub refused: Vec<u16>,
    pub table_version: u32,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interest {
    pub maps: Vec<String>,
}

/// One change, as a holder sends it to a node with live subscribers on its map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub map: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lww: Option<crate::protocol::types::LwwRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_add: Option<crate::protocol::types::OrMapRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_remove: Option<String>,
    /// The write's origin node and client connection there (no echo to the writer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<(String, u64)>,
    #[serde(default)]
    pub expiry: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<Event>,
}

/// One received frame: its kind, correlation id and undecoded body.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub corr: u64,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame shorter than its 9-byte header")]
    Short,
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("undecodable body: {0}")]
    Body(String),
}

impl FrameError {
    pub fn code(&self) -> super::peer_error::PeerError {
        super::peer_error::PeerError::BadFrame
    }
}

/// Encodes a body once; [`frame`] puts it behind any kind and correlation id.
pub fn body<T: Serialize>(msg: &T) -> Bytes {
    // Plain structs of strings, numbers and MessagePack values: encoding cannot fail.
    Bytes::from(rmp_serde::to_vec_named(msg).unwrap_or_default())
}

pub fn frame(kind: Kind, corr: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + body.len());
    out.put_u8(kind as u8);
    out.put_u64(corr);
    out.put_slice(body);
    out.freeze()
}

pub fn parse(payload: Bytes) -> Result<Frame, FrameError> {
    if payload.len() < 9 {
        return Err(FrameError::Short);
    }
    let kind = Kind::from_u8(payload[0]).ok_or(FrameError::Kind(payload[0]))?;
    let corr = u64::from_be_bytes(payload[1..9].try_into().map_err(|_| FrameError::Short)?);
    Ok(Frame {
        kind,
        corr,
        body: payload.slice(9..),
    })
}

pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_body_round_trips_behind_any_header() {
        let w = Write {
            trace: Trace {
                request_id: Some("op-7".into()),
                origin_node_id: "node-a".into(),
                client_id: "c1".into(),
                writer: None,
            },
            ops: vec![
                ClientOp {
                    id: Some("op-6".into()),
                    map_name: "m".into(),
                    key: "k".into(),
                    op_type: Some("PUT".into()),
                    record: Some(Some(crate::protocol::types::LwwRecord {
                        value: rmpv::Value::from("v"),
                        timestamp: crate::protocol::types::Timestamp {
                            millis: 1,
                            counter: 2,
                            node_id: "n".into(),
                        },
                        ttl_ms: Some(500),
                    })),
                    or_record: None,
                    or_tag: None,
                    write_concern: None,
                    timeout: None,
                },
                ClientOp {
                    id: Some("op-7".into()),
                    map_name: "m".into(),
                    key: "k".into(),
                    op_type: Some("OR_REMOVE".into()),
                    record: None,
                    or_record: None,
                    or_tag: Some("t".into()),
                    write_concern: None,
                    timeout: None,
                },
            ],
            origin_kept: Some(vec![3, 7]),
        };
        let mut w = w;
        // A REMOVE sent as `record: nil` must stay distinguishable from no record at all.
        w.ops.push(ClientOp {
            record: Some(None),
            or_tag: None,
            op_type: None,
            ..w.ops[1].clone()
        });
        let b = body(&w);
        for kind in [Kind::WriteForward, Kind::WriteReplicate] {
            let f = parse(frame(kind, 42, &b)).unwrap();
            assert_eq!((f.kind, f.corr), (kind, 42));
            assert_eq!(decode::<Write>(&f.body).unwrap(), w);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(
            parse(Bytes::from_static(b"abc")).unwrap_err(),
            FrameError::Short
        );
        assert_eq!(
            parse(Bytes::from_static(&[99, 0, 0, 0, 0, 0, 0, 0, 1])).unwrap_err(),
            FrameError::Kind(99)
        );
        let f = parse(frame(Kind::Hello, 0, b"\xc1\xff")).unwrap();
        assert!(decode::<Hello>(&f.body).is_err());
    }
}
