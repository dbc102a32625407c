//! One Rust type per message of protocol.md section 2, both directions.
//!
//! Owns the wire *shapes*: field names (camelCase), flat versus `payload`-wrapped layout, which
//! optional fields are omitted and which are written as nil. It does not own framing, the
//! depth limit, dispatch on `type` or semantic validation (map names, node ids): those live in
//! `codec.rs`, which is the only sanctioned way to turn bytes into a [`ClientMessage`] and a
//! [`ServerMessage`] into bytes.
//!
//! Client messages derive `Deserialize` per payload struct; the codec picks the struct from the
//! `type` tag it found while scanning, so no message goes through serde's buffered
//! internally-tagged path. Server messages are one internally tagged enum: serializing that
//! form is direct (no buffering) and writes `type` first.
use std::collections::BTreeMap;
use std::fmt;

use rmpv::Value;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::types::{opt_whole_u32, opt_whole_u64, whole_u32, whole_u64};
use super::types::{LwwRecord, OrMapRecord, Timestamp};

// ------------------------------------------------------------------------------------------
// Shared shapes (2.1)

/// Requested / achieved durability of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WriteConcern {
    FireAndForget,
    Memory,
    Applied,
    Replicated,
    Persisted,
}

/// One write from a client (2.1 `ClientOp`). Which operation it is follows from several
/// fields at once (4.3); [`ClientOp::kind`] applies that rule so callers need not repeat it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientOp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub map_name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_type: Option<String>,
    /// `None`: key absent. `Some(None)`: `record: nil`, which means REMOVE (4.3 rule 1), so
    /// the two must not collapse the way a plain `Option` would.
    #[serde(
        default,
        deserialize_with = "present_or_nil",
        skip_serializing_if = "Option::is_none"
    )]
    pub record: Option<Option<LwwRecord>>,
    /// Absent and nil are the same here: 4.3 only asks whether it is a non-nil map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_record: Option<OrMapRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_concern: Option<WriteConcern>,
    #[serde(
        default,
        deserialize_with = "opt_whole_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<u64>,
}

/// What a [`ClientOp`] asks for, decided in the reference's order (protocol.md 4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Remove,
    OrAdd,
    OrRemove,
    Put,
}

impl ClientOp {
    /// The 4.3 rule: REMOVE (opType or explicit nil record) beats OR_ADD beats OR_REMOVE
    /// beats PUT. A PUT may still carry no record at all (stores nothing, still acked).
    pub fn kind(&self) -> OpKind {
        if self.op_type.as_deref() == Some("REMOVE") || matches!(self.record, Some(None)) {
            OpKind::Remove
        } else if self.or_record.is_some() {
            OpKind::OrAdd
        } else if self.or_tag.is_some() {
            OpKind::OrRemove
        } else {
            OpKind::Put
        }
    }

    /// The LWW record of a PUT, if one was sent.
    pub fn lww_record(&self) -> Option<&LwwRecord> {
        self.record.as_ref().and_then(Option::as_ref)
    }
}

/// A standing query (2.1 `Query`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<PredicateNode>,
    /// Always the ordered array form after decoding; see [`deserialize_sort`].
    #[serde(
        default,
        deserialize_with = "deserialize_sort",
        skip_serializing_if = "Option::is_none"
    )]
    pub sort: Option<Vec<SortField>>,
    #[serde(
        default,
        deserialize_with = "opt_whole_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Vec<Aggregation>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortField {
    pub field: String,
    pub direction: SortDirection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortDirection {
    Asc,
    Desc,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregation {
    pub func: AggregateFunc,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFunc {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// A node of a predicate tree. Recursive, which is safe only because the codec bounds the
/// nesting of the whole frame before serde sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PredicateNode {
    pub op: PredicateOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// `None`: absent. `Some(Value::Nil)`: an explicit nil, a legitimate operand of `eq`.
    #[serde(
        default,
        deserialize_with = "present_value",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<PredicateNode>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_ref: Option<String>,
}

/// Predicate operators, spelled exactly as on the wire (case-sensitive). Deserialized by hand
/// so an unknown name yields [`UNKNOWN_OPERATOR`], which the codec reports as its own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PredicateOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Regex,
    And,
    Or,
    Not,
    In,
    Between,
    IsNull,
    IsNotNull,
    ContainsAll,
    ContainsAny,
    StartsWith,
    EndsWith,
}

/// Error text for an operator name outside [`PredicateOp`]; see [`super::types::FRACTIONAL_NUMBER`]
/// for why a fixed string is the channel.
pub const UNKNOWN_OPERATOR: &str = "unknown predicate operator";

impl PredicateOp {
    pub fn from_wire(s: &str) -> Option<Self> {
        use PredicateOp::*;
        Some(match s {
            "eq" => Eq,
            "neq" => Neq,
            "gt" => Gt,
            "gte" => Gte,
            "lt" => Lt,
            "lte" => Lte,
            "like" => Like,
            "regex" => Regex,
            "and" => And,
            "or" => Or,
            "not" => Not,
            "in" => In,
            "between" => Between,
            "isNull" => IsNull,
            "isNotNull" => IsNotNull,
            "containsAll" => ContainsAll,
            "containsAny" => ContainsAny,
            "startsWith" => StartsWith,
            "endsWith" => EndsWith,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for PredicateOp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OpVisitor;
        impl Visitor<'_> for OpVisitor {
            type Value = PredicateOp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a predicate operator name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PredicateOp, E> {
                PredicateOp::from_wire(s).ok_or_else(|| E::custom(UNKNOWN_OPERATOR))
            }
        }
        d.deserialize_str(OpVisitor)
    }
}

/// `record: nil` must stay distinguishable from an absent `record`: serde calls this only when
/// the key is present, and `#[serde(default)]` supplies `None` when it is not.
fn present_or_nil<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Like [`present_or_nil`] for `any` fields: a present nil becomes `Some(Value::Nil)`.
fn present_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `sort` as the ordered array `[{field, direction}]` the client sends, or as the object
/// `{field: direction}` of the TS schema type (protocol.md 11.9: accepting both is safer).
/// Object entries keep their wire order, which is the sort-key priority.
fn deserialize_sort<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SortField>>, D::Error> {
    struct SortVisitor;
    impl<'de> Visitor<'de> for SortVisitor {
        type Value = Option<Vec<SortField>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of {field, direction} or a map of field to direction")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(f) = seq.next_element::<SortField>()? {
                out.push(f);
            }
            Ok(Some(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((field, direction)) = map.next_entry::<String, SortDirection>()? {
                out.push(SortField { field, direction });
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(SortVisitor)
}

/// The OR-Map state of one key, as exchanged by the ORMAP_* sync messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrMapEntry {
    pub key: String,
    pub records: Vec<OrMapRecord>,
    pub tombstones: Vec<String>,
}

// ------------------------------------------------------------------------------------------
// Client → server (2.2-2.9)

/// Every message a client may send that the codec understands. Flat and wrapped layouts
/// decode into the same kind of payload struct; the layout is the codec's concern.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// `AUTH`, flat.
    Auth(Auth),
    /// `DEVICE_HELLO`, flat.
    DeviceHello(DeviceHello),
    /// `PING`, flat.
    Ping(Ping),
    /// `CLIENT_OP`, wrapped.
    ClientOp(ClientOp),
    /// `OP_BATCH`, wrapped.
    OpBatch(OpBatch),
    /// `BATCH`, flat. Items are not decoded here: see `codec::batch_items`.
    Batch(Batch),
    /// `SYNC_INIT`, flat.
    SyncInit(SyncInit),
    /// `MERKLE_REQ_BUCKET`, wrapped.
    MerkleReqBucket(MerkleReqBucket),
    /// `QUERY_SUB`, wrapped.
    QuerySub(QuerySub),
    /// `QUERY_UNSUB`, wrapped.
    QueryUnsub(QueryUnsub),
    /// `QUERY_SYNC_INIT`, wrapped.
    QuerySyncInit(QuerySyncInit),
    /// `TOPIC_SUB`, wrapped.
    TopicSub(TopicSub),
    /// `TOPIC_UNSUB`, wrapped.
    TopicUnsub(TopicUnsub),
    /// `TOPIC_PUB`, wrapped.
    TopicPub(TopicPub),
    /// `CLIENT_APPLY_ACK`, flat.
    ClientApplyAck(ClientApplyAck),
    /// `ORMAP_SYNC_INIT`, flat.
    OrmapSyncInit(OrmapSyncInit),
    /// `ORMAP_MERKLE_REQ_BUCKET`, wrapped.
    OrmapMerkleReqBucket(MerkleReqBucket),
    /// `ORMAP_DIFF_REQUEST`, wrapped.
    OrmapDiffRequest(OrmapDiffRequest),
    /// `ORMAP_PUSH_DIFF`, wrapped.
    OrmapPushDiff(OrmapPushDiff),
    /// `PARTITION_MAP_REQUEST`, wrapped, the payload itself optional.
    PartitionMapRequest(PartitionMapRequest),
    /// A real TopGun client message we do not implement (2.9), e.g. `LOCK_REQUEST`. The tag
    /// is one of a fixed list, so it is safe as a metric label; the body is not decoded.
    Unsupported(&'static str),
}

impl ClientMessage {
    /// The wire tag, for logs and metric labels.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::Auth(_) => "AUTH",
            Self::DeviceHello(_) => "DEVICE_HELLO",
            Self::Ping(_) => "PING",
            Self::ClientOp(_) => "CLIENT_OP",
            Self::OpBatch(_) => "OP_BATCH",
            Self::Batch(_) => "BATCH",
            Self::SyncInit(_) => "SYNC_INIT",
            Self::MerkleReqBucket(_) => "MERKLE_REQ_BUCKET",
            Self::QuerySub(_) => "QUERY_SUB",
            Self::QueryUnsub(_) => "QUERY_UNSUB",
            Self::QuerySyncInit(_) => "QUERY_SYNC_INIT",
            Self::TopicSub(_) => "TOPIC_SUB",
            Self::TopicUnsub(_) => "TOPIC_UNSUB",
            Self::TopicPub(_) => "TOPIC_PUB",
            Self::ClientApplyAck(_) => "CLIENT_APPLY_ACK",
            Self::OrmapSyncInit(_) => "ORMAP_SYNC_INIT",
            Self::OrmapMerkleReqBucket(_) => "ORMAP_MERKLE_REQ_BUCKET",
            Self::OrmapDiffRequest(_) => "ORMAP_DIFF_REQUEST",
            Self::OrmapPushDiff(_) => "ORMAP_PUSH_DIFF",
            Self::PartitionMapRequest(_) => "PARTITION_MAP_REQUEST",
            Self::Unsupported(tag) => tag,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    pub token: String,
    #[serde(
        default,
        deserialize_with = "opt_whole_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub protocol_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHello {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Client milliseconds; float64 on the wire from JS.
    #[serde(deserialize_with = "whole_u64")]
    pub timestamp: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpBatch {
    pub ops: Vec<ClientOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_concern: Option<WriteConcern>,
    #[serde(
        default,
        deserialize_with = "opt_whole_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Sender's claim; never trusted (1.5, 1.6): the item walk decides.
    #[serde(deserialize_with = "whole_u32")]
    pub count: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncInit {
    pub map_name: String,
    /// Ignored by the reference; kept so a caller could use it.
    #[serde(
        default,
        deserialize_with = "opt_whole_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_sync_timestamp: Option<u64>,
}

/// The payload of `MERKLE_REQ_BUCKET` and of `ORMAP_MERKLE_REQ_BUCKET`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MerkleReqBucket {
    pub map_name: String,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuerySub {
    pub query_id: String,
    pub map_name: String,
    pub query: Query,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryUnsub {
    pub query_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuerySyncInit {
    pub query_id: String,
    #[serde(deserialize_with = "whole_u32")]
    pub root_hash: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicSub {
    pub topic: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicUnsub {
    pub topic: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPub {
    pub topic: String,
    /// Passed through untouched; a missing key (JS `undefined`) is nil.
    #[serde(default = "super::types::nil")]
    pub data: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientApplyAck {
    #[serde(deserialize_with = "whole_u64")]
    pub cursor: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrmapSyncInit {
    pub map_name: String,
    #[serde(deserialize_with = "whole_u32")]
    pub root_hash: u32,
    #[serde(default)]
    pub bucket_hashes: BTreeMap<String, u32>,
    #[serde(
        default,
        deserialize_with = "opt_whole_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_sync_timestamp: Option<u64>,
    /// Device-epoch bookkeeping we do not implement (11.11); kept opaque so an unexpected
    /// shape cannot make the whole message undecodable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_epoch: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrmapDiffRequest {
    pub map_name: String,
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrmapPushDiff {
    pub map_name: String,
    pub entries: Vec<OrMapEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMapRequest {
    #[serde(
        default,
        deserialize_with = "opt_whole_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub current_version: Option<u32>,
}

// ------------------------------------------------------------------------------------------
// Server → client

/// Every message the node sends. Flat messages are newtype variants (their fields sit next to
/// `type`); wrapped ones are `{ payload }` struct variants. Encode with `codec::encode`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    AuthRequired,
    AuthAck(AuthAck),
    AuthFail(AuthFail),
    DeviceAck(DeviceAck),
    Pong(Pong),
    OpAck { payload: OpAck },
    OpRejected { payload: OpRejected },
    Error { payload: ErrorPayload },
    ServerEvent { payload: ServerEvent },
    ServerBatchEvent { payload: ServerBatchEvent },
    SyncRespRoot { payload: SyncRespRoot },
    SyncRespBuckets { payload: SyncRespBuckets },
    SyncRespLeaf { payload: SyncRespLeaf },
    SyncResetRequired { payload: SyncResetRequired },
    QueryResp { payload: QueryResp },
    QueryUpdate { payload: QueryUpdate },
    TopicMessage { payload: TopicMessage },
    GcPrune { payload: GcPrune },
    OrmapSyncRespRoot { payload: OrmapSyncRespRoot },
    OrmapSyncRespBuckets { payload: SyncRespBuckets },
    OrmapSyncRespLeaf { payload: OrmapSyncRespLeaf },
    OrmapDiffResponse { payload: OrmapDiffResponse },
    PartitionMap { payload: PartitionMap },
}

impl ServerMessage {
    /// `PONG` echoing the client's timestamp.
    pub fn pong(timestamp: u64, server_time: u64) -> Self {
        Self::Pong(Pong {
            timestamp,
            server_time,
        })
    }

    /// The `OP_ACK` the reference sends for CLIENT_OP and OP_BATCH: `lastId` is the op id,
    /// or `"unknown"` when the op had none (the client then marks everything synced).
    pub fn op_ack_applied(last_id: Option<&str>) -> Self {
        Self::OpAck {
            payload: OpAck {
                last_id: last_id.unwrap_or("unknown").to_owned(),
                achieved_level: Some(WriteConcern::Applied),
                results: None,
            },
        }
    }

    /// `ERROR {code, message}` without details.
    pub fn error(code: u32, message: impl Into<String>) -> Self {
        Self::Error {
            payload: ErrorPayload {
                code,
                message: message.into(),
                details: None,
            },
        }
    }

    /// The wire tag, for logs and metric labels.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::AuthRequired => "AUTH_REQUIRED",
            Self::AuthAck(_) => "AUTH_ACK",
            Self::AuthFail(_) => "AUTH_FAIL",
            Self::DeviceAck(_) => "DEVICE_ACK",
            Self::Pong(_) => "PONG",
            Self::OpAck { .. } => "OP_ACK",
            Self::OpRejected { .. } => "OP_REJECTED",
            Self::Error { .. } => "ERROR",
            Self::ServerEvent { .. } => "SERVER_EVENT",
            Self::ServerBatchEvent { .. } => "SERVER_BATCH_EVENT",
            Self::SyncRespRoot { .. } => "SYNC_RESP_ROOT",
            Self::SyncRespBuckets { .. } => "SYNC_RESP_BUCKETS",
            Self::SyncRespLeaf { .. } => "SYNC_RESP_LEAF",
            Self::SyncResetRequired { .. } => "SYNC_RESET_REQUIRED",
            Self::QueryResp { .. } => "QUERY_RESP",
            Self::QueryUpdate { .. } => "QUERY_UPDATE",
            Self::TopicMessage { .. } => "TOPIC_MESSAGE",
            Self::GcPrune { .. } => "GC_PRUNE",
            Self::OrmapSyncRespRoot { .. } => "ORMAP_SYNC_RESP_ROOT",
            Self::OrmapSyncRespBuckets { .. } => "ORMAP_SYNC_RESP_BUCKETS",
            Self::OrmapSyncRespLeaf { .. } => "ORMAP_SYNC_RESP_LEAF",
            Self::OrmapDiffResponse { .. } => "ORMAP_DIFF_RESPONSE",
            Self::PartitionMap { .. } => "PARTITION_MAP",
        }
    }

    /// Live broadcasts may be dropped under backpressure (1.4); direct replies may not.
    pub fn is_broadcast(&self) -> bool {
        matches!(
            self,
            Self::ServerEvent { .. }
                | Self::ServerBatchEvent { .. }
                | Self::QueryUpdate { .. }
                | Self::TopicMessage { .. }
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthFail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    pub timestamp: u64,
    pub server_time: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpAck {
    pub last_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_level: Option<WriteConcern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<OpResult>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpResult {
    pub op_id: String,
    pub success: bool,
    pub achieved_level: WriteConcern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpRejected {
    pub op_id: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Put,
    Remove,
    OrAdd,
    OrRemove,
}

/// The payload of `SERVER_EVENT`, also the element of `SERVER_BATCH_EVENT.events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerEvent {
    pub map_name: String,
    pub event_type: EventType,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<LwwRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_record: Option<OrMapRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerBatchEvent {
    pub events: Vec<ServerEvent>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRespRoot {
    pub map_name: String,
    /// Unsigned: the client compares with `===` against its own unsigned hash.
    pub root_hash: u32,
    pub timestamp: Timestamp,
}

/// The payload of `SYNC_RESP_BUCKETS` and `ORMAP_SYNC_RESP_BUCKETS`. Keys are the child's
/// single hex character, not the full path (2.6); a `char` key makes that unrepresentable to
/// get wrong, and the map keeps the output order deterministic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRespBuckets {
    pub map_name: String,
    pub path: String,
    pub buckets: BTreeMap<char, u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRespLeaf {
    pub map_name: String,
    pub path: String,
    pub records: Vec<LeafRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeafRecord {
    pub key: String,
    pub record: LwwRecord,
}

/// `reason` is not in protocol.md 2.6 but the TS client's schema requires it; an extra key
/// costs nothing with readers that ignore it, a missing one could fail validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResetRequired {
    pub map_name: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CursorStatus {
    Valid,
    Expired,
    Invalid,
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResp {
    pub query_id: String,
    pub results: Vec<QueryResultItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_status: Option<CursorStatus>,
    /// Must stay omitted unless known: the client checks for `undefined`, and nil is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root_hash: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A row of a query result: the stored *value*, not the LWW record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryResultItem {
    pub key: String,
    pub value: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeType {
    Enter,
    Update,
    Leave,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryUpdate {
    pub query_id: String,
    pub key: String,
    /// nil for `LEAVE`; always written.
    pub value: Value,
    pub change_type: ChangeType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicMessage {
    pub topic: String,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_id: Option<String>,
    /// Server milliseconds.
    pub timestamp: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcPrune {
    pub older_than: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrmapSyncRespRoot {
    pub map_name: String,
    pub root_hash: u32,
    pub timestamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covering_epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_resync: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrmapSyncRespLeaf {
    pub map_name: String,
    pub path: String,
    pub entries: Vec<OrMapEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covering_epoch: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrmapDiffResponse {
    pub map_name: String,
    pub entries: Vec<OrMapEntry>,
}

/// Cluster clients only (7); shapes follow the TS cluster schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMap {
    pub version: u32,
    pub partition_count: u32,
    pub nodes: Vec<PartitionMapNode>,
    pub partitions: Vec<PartitionOwner>,
    pub generated_at: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionMapNode {
    pub node_id: String,
    pub endpoints: NodeEndpoints,
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEndpoints {
    pub websocket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOwner {
    pub partition_id: u32,
    pub owner_node_id: String,
    pub backup_node_ids: Vec<String>,
}
