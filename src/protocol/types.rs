//! Shapes shared by the wire messages and the data model (protocol.md 2.1): HLC timestamps and
//! the LWW / OR-Map records. The data model stores these exactly as they travel, so a record
//! needs no conversion between a client frame, a shard, storage and a sync reply.
use std::cmp::Ordering;
use std::fmt;

use rmpv::Value;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// A hybrid logical clock value. Ordered by `millis`, then `counter`, then `node_id` compared
/// as bytes (the Rust reference's rule; the TS client's `localeCompare` can only disagree on
/// exact ties of millis and counter, which two honest clocks never produce).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timestamp {
    #[serde(deserialize_with = "whole_u64")]
    pub millis: u64,
    #[serde(deserialize_with = "whole_u32")]
    pub counter: u32,
    pub node_id: String,
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.millis
            .cmp(&other.millis)
            .then(self.counter.cmp(&other.counter))
            .then_with(|| self.node_id.as_bytes().cmp(other.node_id.as_bytes()))
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Timestamp {
    /// `"<millis>:<counter>:<nodeId>"`, the form hashed into Merkle items and used as OR tags.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.millis, self.counter, self.node_id)
    }
}

/// `{value, timestamp, ttlMs}`. `value` nil is a tombstone. `ttlMs` is always written (nil when
/// unset) because that is what the reference sends and the client expects in LWW records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LwwRecord {
    #[serde(default = "nil")]
    pub value: Value,
    pub timestamp: Timestamp,
    #[serde(default, deserialize_with = "opt_whole_u64")]
    pub ttl_ms: Option<u64>,
}

impl LwwRecord {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_nil()
    }
}

/// One tagged entry of an OR-Map key. Unlike [`LwwRecord`], an unset `ttlMs` is omitted: the
/// client's schema has it as optional-number, and only LWW records get the reference's nil.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrMapRecord {
    #[serde(default = "nil")]
    pub value: Value,
    pub timestamp: Timestamp,
    pub tag: String,
    #[serde(
        default,
        deserialize_with = "opt_whole_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_ms: Option<u64>,
}

/// The error text of [`whole_u64`] and friends for a number with a fractional part. The codec
/// compares against it to report `fractional_integer` instead of a generic `malformed`; serde
/// gives no other channel for a typed error out of a field deserializer.
pub const FRACTIONAL_NUMBER: &str = "fractional number where an integer is expected";

const OUT_OF_RANGE: &str = "number out of range";

/// A missing `value` key decodes as nil (2.1); `rmpv::Value` has no `Default` to say so.
pub(crate) fn nil() -> Value {
    Value::Nil
}

/// Integer fields arrive as float64 from JS clients (`Date.now()` is not a MessagePack int):
/// accept any whole, in-range number; reject fractions like the reference does.
pub fn whole_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(WholeU64)
}

pub fn whole_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_any(WholeU64)?;
    u32::try_from(v).map_err(|_| de::Error::custom(OUT_OF_RANGE))
}

pub fn opt_whole_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptWholeU64)
}

pub fn opt_whole_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match d.deserialize_option(OptWholeU64)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| de::Error::custom(OUT_OF_RANGE)),
    }
}

struct WholeU64;

impl<'de> Visitor<'de> for WholeU64 {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(OUT_OF_RANGE))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        if v.is_finite() && v.fract() != 0.0 {
            return Err(E::custom(FRACTIONAL_NUMBER));
        }
        // 2^64 is exactly representable; anything at or above it does not fit. NaN and the
        // infinities fail both comparisons.
        if (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            Ok(v as u64)
        } else {
            Err(E::custom(OUT_OF_RANGE))
        }
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<u64, E> {
        self.visit_f64(f64::from(v))
    }
}

struct OptWholeU64;

impl<'de> Visitor<'de> for OptWholeU64 {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("nil or a non-negative whole number")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        whole_u64(d).map(Some)
    }
}
