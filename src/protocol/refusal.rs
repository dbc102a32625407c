//! The answer to a client frame that does not decode: every request gets one (a client waiting
//! for its `QUERY_RESP` or `OP_ACK` must not wait for ever), in the shape the client waits for
//! where the frame says which request it was. Plain data: the connection sends what this
//! returns.
//!
//! - `QUERY_SUB` with a `queryId` → `QUERY_RESP {queryId, results: [], error, code:
//!   "bad_query"}`;
//! - `CLIENT_OP` / `OP_BATCH` with op ids → an `OP_REJECTED` (code 400) per op id: none of
//!   them was applied;
//! - any other recognised type → `ERROR 400` naming it;
//! - garbage (not a map, no `type`) and unknown types → nothing: the protocol drops them (a
//!   newer client may send types this node does not know), and they are counted.
//!
//! `AUTH` before authentication is the connection's: it answers `AUTH_FAIL` and closes.
use rmpv::Value;

use super::codec::DecodeError;
use super::messages::{ErrorPayload, OpRejected, QueryResp, ServerMessage};

/// The answers to an undecodable frame (empty: dropped, counted only).
pub fn refusal(frame: &[u8], error: &DecodeError) -> Vec<ServerMessage> {
    if matches!(
        error,
        DecodeError::NotAMap
            | DecodeError::Truncated
            | DecodeError::TrailingBytes
            | DecodeError::TooDeep
            | DecodeError::InvalidMsgpack
            | DecodeError::MissingType
            | DecodeError::UnknownType
    ) {
        return Vec::new();
    }
    let Ok(value) = rmpv::decode::read_value(&mut &frame[..]) else {
        return Vec::new();
    };
    let Some(kind) = field(&value, "type").and_then(Value::as_str) else {
        return Vec::new();
    };
    let payload = field(&value, "payload");
    let why = format!("malformed {kind}: {error}");
    match kind {
        "QUERY_SUB" => {
            if let Some(query_id) = payload
                .and_then(|p| field(p, "queryId"))
                .and_then(Value::as_str)
            {
                return vec![ServerMessage::QueryResp {
                    payload: QueryResp {
                        query_id: query_id.to_owned(),
                        results: Vec::new(),
                        next_cursor: None,
                        has_more: None,
                        cursor_status: None,
                        merkle_root_hash: None,
                        error: Some(why),
                        code: Some("bad_query".to_owned()),
                    },
                }];
            }
        }
        "CLIENT_OP" | "OP_BATCH" => {
            let ops: Vec<&Value> = match kind {
                "CLIENT_OP" => payload.into_iter().collect(),
                _ => payload
                    .and_then(|p| field(p, "ops"))
                    .and_then(Value::as_array)
                    .map(|ops| ops.iter().collect())
                    .unwrap_or_default(),
            };
            let rejected: Vec<ServerMessage> = ops
                .into_iter()
                .filter_map(|op| field(op, "id").and_then(Value::as_str))
                .map(|id| ServerMessage::OpRejected {
                    payload: OpRejected {
                        op_id: id.to_owned(),
                        reason: why.clone(),
                        code: Some(400),
                    },
                })
                .collect();
            if !rejected.is_empty() {
                return rejected;
            }
        }
        _ => {}
    }
    vec![ServerMessage::Error {
        payload: ErrorPayload {
            code: 400,
            message: why,
            details: None,
        },
    }]
}

/// Whether a frame that did not decode is an `AUTH` (its token was not a string, say).
pub fn is_auth(frame: &[u8]) -> bool {
    matches!(super::codec::scan(frame), Ok(Some(tag)) if tag == b"AUTH")
}

fn field<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::decode;

    fn frame(v: Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).expect("encode");
        out
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    fn answers(v: Value) -> Vec<ServerMessage> {
        let f = frame(v);
        let err = decode(&f).expect_err("the frame must not decode");
        refusal(&f, &err)
    }

    #[test]
    fn a_query_with_an_impossible_limit_gets_its_query_resp() {
        for limit in [
            Value::from(u64::MAX),
            Value::from(-1),
            Value::F64(1.5),
            Value::from("10"),
        ] {
            let out = answers(map(vec![
                ("type", "QUERY_SUB".into()),
                (
                    "payload",
                    map(vec![
                        ("queryId", "q1".into()),
                        ("mapName", "m".into()),
                        ("query", map(vec![("limit", limit.clone())])),
                    ]),
                ),
            ]));
            match out.as_slice() {
                [ServerMessage::QueryResp { payload }] => {
                    assert_eq!(payload.query_id, "q1");
                    assert_eq!(payload.code.as_deref(), Some("bad_query"));
                    assert!(payload.error.is_some());
                }
                other => panic!("limit {limit:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn writes_to_a_bad_map_name_are_rejected_op_by_op() {
        for name in ["", "\0", "_topgun_x"] {
            let op = |id: &str| {
                map(vec![
                    ("id", id.into()),
                    ("mapName", name.into()),
                    ("key", "k".into()),
                    ("opType", "PUT".into()),
                ])
            };
            let out = answers(map(vec![
                ("type", "CLIENT_OP".into()),
                ("payload", op("o1")),
            ]));
            assert!(
                matches!(out.as_slice(), [ServerMessage::OpRejected { payload }] if payload.op_id == "o1"),
                "{name:?}: {out:?}"
            );
            let out = answers(map(vec![
                ("type", "OP_BATCH".into()),
                (
                    "payload",
                    map(vec![("ops", Value::Array(vec![op("a"), op("b")]))]),
                ),
            ]));
            assert_eq!(out.len(), 2, "{name:?}: {out:?}");
        }
    }

    #[test]
    fn an_auth_whose_token_is_no_string_is_known_as_an_auth() {
        for token in [
            Value::from(1),
            Value::Nil,
            Value::Array(vec![]),
            map(vec![]),
        ] {
            let f = frame(map(vec![("type", "AUTH".into()), ("token", token.clone())]));
            assert!(decode(&f).is_err(), "{token:?}");
            assert!(is_auth(&f), "{token:?}");
        }
        assert!(!is_auth(&frame(map(vec![("type", "PING".into())]))));
    }

    #[test]
    fn garbage_and_unknown_types_stay_unanswered() {
        assert!(refusal(&[0xc1], &DecodeError::InvalidMsgpack).is_empty());
        assert!(answers(map(vec![("type", "NO_SUCH_THING".into())])).is_empty());
        assert!(answers(Value::from(3)).is_empty());
    }
}
