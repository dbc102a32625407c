//! MessagePack framing of the client protocol: bytes in, [`ClientMessage`] out, and
//! [`ServerMessage`] back to bytes (protocol.md 1.3, 1.5, 1.6).
//!
//! Owns: the iterative pre-scan (one complete value, nesting limit, the `type` tag), dispatch
//! on the tag straight into the payload struct, decode-time validation (map names, node ids),
//! the inbound `BATCH` walk and the rate-limit cost of a frame. Leaves to the caller: what to
//! do with an error (the reference drops the frame silently), authentication, rate limiting
//! itself, and all semantics.
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::messages::*;
use super::types::{LwwRecord, OrMapRecord, Timestamp, FRACTIONAL_NUMBER};

/// Most non-empty containers that may be open at once, the outer message map counting as 1
/// (1.3). rmp-serde and rmpv recurse once per level, so this is also what bounds stack use;
/// the reference uses the same number, and its own telemetry saw legitimate frames at ~43.
pub const MAX_DEPTH: usize = 256;

/// Most items an inbound `BATCH` may carry before the whole frame is refused with ERROR 413.
pub const MAX_BATCH_ITEMS: usize = 8_192;

/// Map names longer than this are refused: they become storage keys and metric-free log
/// fields, and no legitimate client needs more.
pub const MAX_MAP_NAME_BYTES: usize = 256;

/// Why a frame was not turned into a [`ClientMessage`].
///
/// [`DecodeError::code`] gives a label from this fixed set, safe for metrics:
///
/// | code | meaning |
/// |---|---|
/// | `not_a_map` | the top-level value is not a map (or the frame is empty) |
/// | `truncated` | the frame ends inside a value |
/// | `trailing_bytes` | bytes follow the first complete value |
/// | `too_deep` | more than [`MAX_DEPTH`] non-empty containers open at once |
/// | `invalid_msgpack` | the reserved marker `0xc1` |
/// | `missing_type` | no top-level `type` key holding a string |
/// | `unknown_type` | a `type` that is not a TopGun client message |
/// | `malformed` | a missing field, a field of the wrong type or out of range |
/// | `fractional_integer` | an integer field holding a float with a fractional part |
/// | `unknown_operator` | a predicate `op` outside the known, case-sensitive set |
/// | `bad_node_id` | a timestamp `nodeId` containing `:` |
/// | `bad_map_name` | a map name empty, over 256 bytes, or with control characters |
/// | `reserved_map_name` | a map name starting with `_topgun_` or `__topgun_` |
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a MessagePack map")]
    NotAMap,
    #[error("frame ends inside a value")]
    Truncated,
    #[error("bytes after the message")]
    TrailingBytes,
    #[error("nesting deeper than {MAX_DEPTH} containers")]
    TooDeep,
    #[error("reserved MessagePack marker 0xc1")]
    InvalidMsgpack,
    #[error("no string `type` key")]
    MissingType,
    #[error("unknown message type")]
    UnknownType,
    #[error("malformed message: {0}")]
    Malformed(#[source] rmp_serde::decode::Error),
    #[error("fractional number in an integer field")]
    FractionalInteger,
    #[error("unknown predicate operator")]
    UnknownOperator,
    #[error("timestamp nodeId contains ':'")]
    BadNodeId,
    #[error("invalid map name")]
    BadMapName,
    #[error("reserved map name")]
    ReservedMapName,
}

impl DecodeError {
    /// A bounded label for logs (`err.type`) and metrics; see the table on the type.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAMap => "not_a_map",
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::TooDeep => "too_deep",
            Self::InvalidMsgpack => "invalid_msgpack",
            Self::MissingType => "missing_type",
            Self::UnknownType => "unknown_type",
            Self::Malformed(_) => "malformed",
            Self::FractionalInteger => "fractional_integer",
            Self::UnknownOperator => "unknown_operator",
            Self::BadNodeId => "bad_node_id",
            Self::BadMapName => "bad_map_name",
            Self::ReservedMapName => "reserved_map_name",
        }
    }

    pub(crate) fn from_serde(e: rmp_serde::decode::Error) -> Self {
        use rmp_serde::decode::Error as E;
        match &e {
            // Our own field deserializers report through fixed texts (see their docs).
            E::Syntax(msg) if msg == FRACTIONAL_NUMBER => Self::FractionalInteger,
            E::Syntax(msg) if msg == UNKNOWN_OPERATOR => Self::UnknownOperator,
            _ => Self::Malformed(e),
        }
    }
}

/// An inbound `BATCH` with more than [`MAX_BATCH_ITEMS`] items; the caller answers
/// `ERROR {code: 413, message: "batch exceeds maximum inner item count"}`.
#[derive(Debug, thiserror::Error)]
#[error("batch exceeds maximum inner item count")]
pub struct BatchTooLarge;

// ------------------------------------------------------------------------------------------
// Decoding

/// Decodes one client frame (a top-level frame or one `BATCH` item).
///
/// The frame is first scanned without recursion or allocation; only a frame that is exactly
/// one well-formed, shallow enough map with a known `type` reaches serde, which then
/// deserializes straight into that message's struct.
pub fn decode(frame: &[u8]) -> Result<ClientMessage, DecodeError> {
    let tag = scan(frame)?.ok_or(DecodeError::MissingType)?;
    let msg = decode_tagged(tag, frame)?;
    validate(&msg)?;
    Ok(msg)
}

/// The body of a wrapped message: everything sits under `payload`; `type` and any other
/// top-level key is ignored.
#[derive(Deserialize)]
struct Wrapped<T> {
    payload: T,
}

/// `PARTITION_MAP_REQUEST` may come without a payload at all (7).
#[derive(Deserialize)]
struct OptWrapped<T> {
    #[serde(default)]
    payload: Option<T>,
}

fn flat<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(frame).map_err(DecodeError::from_serde)
}

fn wrapped<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    flat::<Wrapped<T>>(frame).map(|w| w.payload)
}

/// Client-sent TopGun messages (2.9) we recognise but do not implement. A fixed list rather
/// than prefix patterns so that [`ClientMessage::Unsupported`] carries a `'static` label.
const UNSUPPORTED: &[&str] = &[
    "LOCK_REQUEST",
    "LOCK_RELEASE",
    "COUNTER_REQUEST",
    "COUNTER_SYNC",
    "ENTRY_PROCESS",
    "ENTRY_PROCESS_BATCH",
    "JOURNAL_SUBSCRIBE",
    "JOURNAL_UNSUBSCRIBE",
    "JOURNAL_READ",
    "REGISTER_RESOLVER",
    "UNREGISTER_RESOLVER",
    "LIST_RESOLVERS",
    "SEARCH",
    "SEARCH_SUB",
    "SEARCH_UNSUB",
    "HYBRID_SEARCH",
    "HYBRID_SEARCH_SUB",
    "HYBRID_SEARCH_UNSUB",
    "HYBRID_QUERY_SUBSCRIBE",
    "HYBRID_QUERY_UNSUBSCRIBE",
    "SQL_QUERY",
    "VECTOR_SEARCH",
];

fn decode_tagged(tag: &[u8], frame: &[u8]) -> Result<ClientMessage, DecodeError> {
    use ClientMessage as M;
    Ok(match tag {
        // Hot messages first; the match is on bytes, so no UTF-8 check or allocation.
        b"CLIENT_OP" => M::ClientOp(wrapped(frame)?),
        b"OP_BATCH" => M::OpBatch(wrapped(frame)?),
        b"PING" => M::Ping(flat(frame)?),
        b"AUTH" => M::Auth(flat(frame)?),
        b"DEVICE_HELLO" => M::DeviceHello(flat(frame)?),
        b"BATCH" => M::Batch(flat(frame)?),
        b"SYNC_INIT" => M::SyncInit(flat(frame)?),
        b"MERKLE_REQ_BUCKET" => M::MerkleReqBucket(wrapped(frame)?),
        b"QUERY_SUB" => M::QuerySub(wrapped(frame)?),
        b"QUERY_UNSUB" => M::QueryUnsub(wrapped(frame)?),
        b"QUERY_SYNC_INIT" => M::QuerySyncInit(wrapped(frame)?),
        b"TOPIC_SUB" => M::TopicSub(wrapped(frame)?),
        b"TOPIC_UNSUB" => M::TopicUnsub(wrapped(frame)?),
        b"TOPIC_PUB" => M::TopicPub(wrapped(frame)?),
        b"CLIENT_APPLY_ACK" => M::ClientApplyAck(flat(frame)?),
        b"ORMAP_SYNC_INIT" => M::OrmapSyncInit(flat(frame)?),
        b"ORMAP_MERKLE_REQ_BUCKET" => M::OrmapMerkleReqBucket(wrapped(frame)?),
        b"ORMAP_DIFF_REQUEST" => M::OrmapDiffRequest(wrapped(frame)?),
        b"ORMAP_PUSH_DIFF" => M::OrmapPushDiff(wrapped(frame)?),
        b"PARTITION_MAP_REQUEST" => M::PartitionMapRequest(
            flat::<OptWrapped<PartitionMapRequest>>(frame)?
                .payload
                .unwrap_or_default(),
        ),
        other => {
            let known = UNSUPPORTED.iter().find(|t| t.as_bytes() == other);
            M::Unsupported(known.ok_or(DecodeError::UnknownType)?)
        }
    })
}

/// Checks that serde cannot express: map names and node ids (protocol.md 2.4, 4.1).
fn validate(msg: &ClientMessage) -> Result<(), DecodeError> {
    use ClientMessage as M;
    match msg {
        M::ClientOp(op) => validate_op(op),
        M::OpBatch(batch) => batch.ops.iter().try_for_each(validate_op),
        M::SyncInit(m) => validate_map_name(&m.map_name),
        M::MerkleReqBucket(m) | M::OrmapMerkleReqBucket(m) => validate_map_name(&m.map_name),
        M::QuerySub(m) => validate_map_name(&m.map_name),
        M::OrmapSyncInit(m) => validate_map_name(&m.map_name),
        M::OrmapDiffRequest(m) => validate_map_name(&m.map_name),
        M::OrmapPushDiff(m) => {
            validate_map_name(&m.map_name)?;
            m.entries
                .iter()
                .flat_map(|e| &e.records)
                .try_for_each(|r| validate_timestamp(&r.timestamp))
        }
        M::Auth(_)
        | M::DeviceHello(_)
        | M::Ping(_)
        | M::Batch(_)
        | M::QueryUnsub(_)
        | M::QuerySyncInit(_)
        | M::TopicSub(_)
        | M::TopicUnsub(_)
        | M::TopicPub(_)
        | M::ClientApplyAck(_)
        | M::PartitionMapRequest(_)
        | M::Unsupported(_) => Ok(()),
    }
}

pub(crate) fn validate_op(op: &ClientOp) -> Result<(), DecodeError> {
    validate_map_name(&op.map_name)?;
    if let Some(Some(LwwRecord { timestamp, .. })) = &op.record {
        validate_timestamp(timestamp)?;
    }
    if let Some(OrMapRecord { timestamp, .. }) = &op.or_record {
        validate_timestamp(timestamp)?;
    }
    Ok(())
}

/// A `:` in a node id would make the `"<millis>:<counter>:<nodeId>"` form (Merkle item hash,
/// OR tag) ambiguous.
pub(crate) fn validate_timestamp(ts: &Timestamp) -> Result<(), DecodeError> {
    if ts.node_id.contains(':') {
        Err(DecodeError::BadNodeId)
    } else {
        Ok(())
    }
}

/// 1..=256 bytes, no control characters, not in the reserved `_topgun_` / `__topgun_`
/// namespace (internal maps).
pub fn validate_map_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() || name.len() > MAX_MAP_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(DecodeError::BadMapName);
    }
    if name.starts_with("_topgun_") || name.starts_with("__topgun_") {
        return Err(DecodeError::ReservedMapName);
    }
    Ok(())
}

/// The reference's topic-name rule (2.8): 1 to 256 characters of `[A-Za-z0-9_\-.:/]`. Not
/// applied at decode because a bad topic is a silent no-op for SUB/PUB, not a bad frame.
pub fn is_valid_topic(topic: &str) -> bool {
    (1..=256).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

// ------------------------------------------------------------------------------------------
// The pre-scan

/// Walks `frame` as MessagePack without recursion. Succeeds only if the frame is exactly one
/// complete value, that value is a map, and at most [`MAX_DEPTH`] non-empty containers are
/// ever open at once. Returns the bytes of the top-level `type` string, if there is one
/// (the first such key wins; serde ignores `type`, so a duplicate cannot disagree with us).
pub(crate) fn scan(frame: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
    match frame.first() {
        None => return Err(DecodeError::NotAMap),
        Some(&m) if !is_map_marker(m) => return Err(DecodeError::NotAMap),
        Some(_) => {}
    }
    // remaining[i] = values still to read in the i-th open container (a map counts keys and
    // values). A fixed array: the limit bounds it, and the scan stays allocation-free.
    let mut remaining = [0u64; MAX_DEPTH];
    let mut depth = 0usize;
    let mut pos = 0usize;
    let mut tag: Option<&[u8]> = None;
    let mut next_is_tag = false;

    loop {
        // Position inside the outer map: an even count left means a key comes next.
        let (top_key, top_value) = match depth {
            1 => (remaining[0] % 2 == 0, remaining[0] % 2 == 1),
            _ => (false, false),
        };
        if depth > 0 {
            remaining[depth - 1] -= 1;
        }

        let item = read_item(frame, &mut pos)?;
        if top_key {
            next_is_tag = item.str == Some(b"type".as_slice());
        } else if top_value {
            if next_is_tag && tag.is_none() {
                // A non-string `type` leaves `tag` unset: reported as missing_type.
                tag = item.str;
            }
            next_is_tag = false;
        }

        if item.children > 0 {
            if depth == MAX_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            remaining[depth] = item.children;
            depth += 1;
        }
        while depth > 0 && remaining[depth - 1] == 0 {
            depth -= 1;
        }
        if depth == 0 {
            break;
        }
    }
    if pos != frame.len() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(tag)
}

fn is_map_marker(m: u8) -> bool {
    matches!(m, 0x80..=0x8f | 0xde | 0xdf)
}

/// What the scan needs to know about one value header.
struct Item<'a> {
    /// Child values to read next: array length, or twice the map length.
    children: u64,
    /// The payload of a str value.
    str: Option<&'a [u8]>,
}

fn take<'a>(frame: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let end = pos.checked_add(n).ok_or(DecodeError::Truncated)?;
    let bytes = frame.get(*pos..end).ok_or(DecodeError::Truncated)?;
    *pos = end;
    Ok(bytes)
}

/// Reads a big-endian length of 1, 2 or 4 bytes.
fn take_len(frame: &[u8], pos: &mut usize, n: usize) -> Result<usize, DecodeError> {
    let len = take(frame, pos, n)?
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    // On a 32-bit target a 4 GiB length cannot fit in the frame anyway.
    usize::try_from(len).map_err(|_| DecodeError::Truncated)
}

/// Reads one value header at `pos` and skips its payload (for str/bin/ext/scalars).
fn read_item<'a>(frame: &'a [u8], pos: &mut usize) -> Result<Item<'a>, DecodeError> {
    let marker = *take(frame, pos, 1)?.first().ok_or(DecodeError::Truncated)?;
    let scalar = |pos: &mut usize, n: usize| take(frame, pos, n).map(|_| 0u64);
    let (children, str) = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, None),
        0x80..=0x8f => (u64::from(marker & 0x0f) * 2, None),
        0x90..=0x9f => (u64::from(marker & 0x0f), None),
        0xa0..=0xbf => (0, Some(take(frame, pos, usize::from(marker & 0x1f))?)),
        0xc1 => return Err(DecodeError::InvalidMsgpack),
        0xc4..=0xc6 => {
            let n = take_len(frame, pos, 1 << (marker - 0xc4))?;
            (scalar(pos, n)?, None)
        }
        0xc7..=0xc9 => {
            // ext: length, then a type byte, then the payload.
            let n = take_len(frame, pos, 1 << (marker - 0xc7))?;
            (scalar(pos, n.saturating_add(1))?, None)
        }
        0xca => (scalar(pos, 4)?, None),
        0xcb => (scalar(pos, 8)?, None),
        0xcc..=0xcf => (scalar(pos, 1 << (marker - 0xcc))?, None),
        0xd0..=0xd3 => (scalar(pos, 1 << (marker - 0xd0))?, None),
        0xd4..=0xd8 => (scalar(pos, 1 + (1 << (marker - 0xd4)))?, None),
        0xd9..=0xdb => {
            let n = take_len(frame, pos, 1 << (marker - 0xd9))?;
            (0, Some(take(frame, pos, n)?))
        }
        0xdc | 0xdd => (take_len(frame, pos, 2 << (marker - 0xdc))? as u64, None),
        0xde | 0xdf => (take_len(frame, pos, 2 << (marker - 0xde))? as u64 * 2, None),
    };
    Ok(Item { children, str })
}

// ------------------------------------------------------------------------------------------
// BATCH and rate-limit cost

/// Splits the `data` of an inbound `BATCH` (1.6): each item is a 4-byte big-endian length and
/// that many bytes. A truncated trailing prefix or item ends the walk (not an error, as in the
/// reference); more than [`MAX_BATCH_ITEMS`] items is. Items are returned undecoded: decode
/// each with [`decode`] and skip the ones that fail.
pub fn batch_items(data: &[u8]) -> Result<Vec<&[u8]>, BatchTooLarge> {
    let mut items = Vec::new();
    for item in (BatchWalk { rest: data }) {
        if items.len() == MAX_BATCH_ITEMS {
            return Err(BatchTooLarge);
        }
        items.push(item);
    }
    Ok(items)
}

/// The number of complete items in a `BATCH` `data`, walking the prefixes (the `count` field
/// is not trusted). Not capped: the rate limiter charges what was actually sent.
pub fn batch_item_count(data: &[u8]) -> usize {
    BatchWalk { rest: data }.count()
}

struct BatchWalk<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BatchWalk<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (prefix, after) = self.rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*prefix)).ok()?;
        let item = after.get(..len)?;
        self.rest = after.get(len..)?;
        Some(item)
    }
}

/// Token-bucket cost of a decoded frame (1.5): `ops.len()` for OP_BATCH, the walked item count
/// for BATCH, 1 otherwise, never below 1. Capping at the bucket capacity is the limiter's job.
pub fn frame_cost(msg: &ClientMessage) -> u64 {
    let n = match msg {
        ClientMessage::OpBatch(b) => b.ops.len(),
        ClientMessage::Batch(b) => batch_item_count(&b.data),
        _ => 1,
    };
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

impl ClientMessage {
    /// Same as [`frame_cost`].
    pub fn cost(&self) -> u64 {
        frame_cost(self)
    }
}

// ------------------------------------------------------------------------------------------
// Encoding

/// Encodes a server message as a named-field MessagePack map, `type` first.
pub fn encode(msg: &ServerMessage) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    encode_into(msg, &mut buf);
    buf
}

/// Appends the encoding of `msg` to `buf`, so a connection can reuse one buffer.
pub fn encode_into(msg: &ServerMessage, buf: &mut Vec<u8>) {
    // Cannot fail, so a failure is a bug in this module, not bad input: the writer is a Vec
    // (writes are infallible); every sequence and map is a Vec or BTreeMap, so its length is
    // known up front (rmp-serde's only other failure, `UnknownLength`, needs an unsized
    // iterator or `flatten`, neither used); every tagged newtype variant wraps a struct (the
    // only shape serde's internally tagged serializer rejects is a non-map newtype); rmpv
    // values serialize through the plain serializer and their ext form is the pair rmp-serde
    // expects; and rmp-serde's encoder has no depth limit of its own.
    rmp_serde::encode::write_named(buf, msg)
        .expect("encoding a ServerMessage into a Vec cannot fail (see comment above)");
}

/// Encodes a client message, for tests and tools that play the client. Fails only for
/// [`ClientMessage::Unsupported`], whose body was never decoded.
pub fn encode_client(msg: &ClientMessage) -> Option<Vec<u8>> {
    let wire = ClientWire::from_message(msg)?;
    rmp_serde::to_vec_named(&wire).ok()
}

/// The client layouts, written down once for [`encode_client`]: flat messages as newtype
/// variants, wrapped ones under `payload`.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum ClientWire<'a> {
    Auth(&'a Auth),
    DeviceHello(&'a DeviceHello),
    Ping(&'a Ping),
    ClientOp { payload: &'a ClientOp },
    OpBatch { payload: &'a OpBatch },
    Batch(&'a Batch),
    SyncInit(&'a SyncInit),
    MerkleReqBucket { payload: &'a MerkleReqBucket },
    QuerySub { payload: &'a QuerySub },
    QueryUnsub { payload: &'a QueryUnsub },
    QuerySyncInit { payload: &'a QuerySyncInit },
    TopicSub { payload: &'a TopicSub },
    TopicUnsub { payload: &'a TopicUnsub },
    TopicPub { payload: &'a TopicPub },
    ClientApplyAck(&'a ClientApplyAck),
    OrmapSyncInit(&'a OrmapSyncInit),
    OrmapMerkleReqBucket { payload: &'a MerkleReqBucket },
    OrmapDiffRequest { payload: &'a OrmapDiffRequest },
    OrmapPushDiff { payload: &'a OrmapPushDiff },
    PartitionMapRequest { payload: &'a PartitionMapRequest },
}

impl<'a> ClientWire<'a> {
    fn from_message(msg: &'a ClientMessage) -> Option<Self> {
        use ClientMessage as M;
        Some(match msg {
            M::Auth(m) => Self::Auth(m),
            M::DeviceHello(m) => Self::DeviceHello(m),
            M::Ping(m) => Self::Ping(m),
            M::ClientOp(m) => Self::ClientOp { payload: m },
            M::OpBatch(m) => Self::OpBatch { payload: m },
            M::Batch(m) => Self::Batch(m),
            M::SyncInit(m) => Self::SyncInit(m),
            M::MerkleReqBucket(m) => Self::MerkleReqBucket { payload: m },
            M::QuerySub(m) => Self::QuerySub { payload: m },
            M::QueryUnsub(m) => Self::QueryUnsub { payload: m },
            M::QuerySyncInit(m) => Self::QuerySyncInit { payload: m },
            M::TopicSub(m) => Self::TopicSub { payload: m },
            M::TopicUnsub(m) => Self::TopicUnsub { payload: m },
            M::TopicPub(m) => Self::TopicPub { payload: m },
            M::ClientApplyAck(m) => Self::ClientApplyAck(m),
            M::OrmapSyncInit(m) => Self::OrmapSyncInit(m),
            M::OrmapMerkleReqBucket(m) => Self::OrmapMerkleReqBucket { payload: m },
            M::OrmapDiffRequest(m) => Self::OrmapDiffRequest { payload: m },
            M::OrmapPushDiff(m) => Self::OrmapPushDiff { payload: m },
            M::PartitionMapRequest(m) => Self::PartitionMapRequest { payload: m },
            M::Unsupported(_) => return None,
        })
    }
}

/// Decodes a server message, for tests and tools that play the client. Not a hot path: it
/// goes through serde's buffered internally-tagged form. Same pre-scan as [`decode`].
pub fn decode_server(frame: &[u8]) -> Result<ServerMessage, DecodeError> {
    scan(frame)?.ok_or(DecodeError::MissingType)?;
    rmp_serde::from_slice(frame).map_err(DecodeError::from_serde)
}
