//! Client wire protocol (see ../shared/spec/protocol.md): types and MessagePack codec.
//! Plain Rust, no actix: the connection actor calls into it.
//!
//! - [`types`]: shapes shared with the data model (timestamps, LWW and OR-Map records).
//! - [`messages`]: one type per protocol message, both directions.
//! - [`codec`]: bytes to [`ClientMessage`] and [`ServerMessage`] to bytes, the nesting limit,
//!   the `BATCH` walk and the rate-limit cost of a frame.
//! - [`refusal`]: the answer to a frame that does not decode.
pub mod codec;
pub mod http_sync;
pub mod messages;
pub mod refusal;
pub mod types;

pub use codec::{
    batch_item_count, batch_items, decode, decode_server, encode, encode_client, encode_into,
    frame_cost, is_valid_topic, validate_map_name, BatchTooLarge, DecodeError, MAX_BATCH_ITEMS,
    MAX_DEPTH, MAX_MAP_NAME_BYTES,
};
pub use messages::*;
pub use types::{LwwRecord, OrMapRecord, Timestamp};

/// Number of partitions of the key space (protocol.md 7). Fixed by the protocol: the reference
/// and the cluster client both assume it. Defined here, with the wire, so that every layer may
/// name it; `shard::fnv` computes a key's partition among them.
pub const PARTITION_COUNT: u16 = 271;

#[cfg(test)]
mod tests;
