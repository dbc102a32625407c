//! Writes the seed corpus, `fuzz/corpus/<target>/<name>`, from real messages made with the
//! node's own encoders (the client codec, the peer wire's `body`/`frame`, foca exchanging
//! datagrams through the membership codec, signed JWTs, the shipped config file). Every seed is
//! run through its harness before it is written. `scripts/fuzz --seeds` runs it.
//!
//! A libFuzzer binary like the targets (a plain `main` would not link: the instrumented code
//! needs libFuzzer's runtime), run with `-runs=1`: libFuzzer's first input is the empty one,
//! which writes the seeds; `TOPGUN_SEEDS_DIR` names the directory (default `fuzz/corpus`).
//!
//! The seeds are committed; the corpus a campaign grows is not (`fuzz/corpus-grown/`).
#![no_main]
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, Timer};
use rand_foca::SeedableRng;
use rmpv::Value;
use serde::Serialize;

use topgun_node::cluster::membership::{foca_config, NodeIdentity, WireCodec};
use topgun_node::cluster::wire::{self, Kind};
use topgun_node::data::sync::{SyncAsk, SyncShare};
use topgun_node::protocol::messages::*;
use topgun_node::protocol::{self, LwwRecord, OrMapRecord, Timestamp};
use topgun_node::shard::merkle::leaf_path_of;
use topgun_node_fuzz as harness;

type Seeds = Vec<(String, Vec<u8>)>;
/// A target's name, its seeds and its harness.
type Target = (&'static str, Seeds, fn(&[u8]));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        write_seeds();
    }
});

fn write_seeds() {
    let out = std::env::var_os("TOPGUN_SEEDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let targets: [Target; 7] = [
        ("client_frame", client_seeds(), harness::client_frame),
        ("http_sync", http_sync_seeds(), harness::http_sync),
        ("cluster_wire", cluster_seeds(), harness::cluster_wire),
        ("membership", membership_seeds(), harness::membership),
        ("jwt", jwt_seeds(), harness::jwt),
        ("jwks", jwks_seeds(), harness::jwks),
        ("config", config_seeds(), harness::config),
    ];
    for (target, seeds, run) in targets {
        let dir = out.join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("corpus directory is writable");
        let mut bytes = 0;
        for (name, data) in &seeds {
            run(data);
            bytes += data.len();
            fs::write(dir.join(name), data).expect("corpus file is writable");
        }
        println!("{target}: {} seeds, {bytes} bytes", seeds.len());
    }
}

// ------------------------------------------------------------------------------------------
// Shared shapes

fn ts(millis: u64, counter: u32) -> Timestamp {
    Timestamp {
        millis,
        counter,
        node_id: "client-1".into(),
    }
}

fn value() -> Value {
    Value::Map(vec![
        (Value::from("name"), Value::from("Ada")),
        (Value::from("age"), Value::from(36)),
        (Value::from("score"), Value::F64(9.5)),
        (
            Value::from("tags"),
            Value::Array(vec![Value::from("x"), Value::from("y")]),
        ),
        (Value::from("blob"), Value::Binary(vec![0, 1, 2, 255])),
        (Value::from("ext"), Value::Ext(7, vec![1, 2, 3])),
    ])
}

fn op(id: &str, kind: &str) -> ClientOp {
    let mut op = ClientOp {
        id: Some(id.into()),
        map_name: "users".into(),
        key: format!("user:{id}"),
        op_type: None,
        record: None,
        or_record: None,
        or_tag: None,
        write_concern: None,
        timeout: None,
    };
    match kind {
        "put" => {
            op.op_type = Some("PUT".into());
            op.record = Some(Some(LwwRecord {
                value: value(),
                timestamp: ts(1_700_000_000_000, 1),
                ttl_ms: Some(60_000),
            }));
            op.write_concern = Some(WriteConcern::Persisted);
            op.timeout = Some(5_000);
        }
        "remove" => op.record = Some(None),
        "or_add" => {
            op.op_type = Some("OR_ADD".into());
            op.or_record = Some(OrMapRecord {
                value: Value::from("item"),
                timestamp: ts(1_700_000_000_001, 0),
                tag: "1700000000001:0:client-1".into(),
                ttl_ms: None,
            });
        }
        _ => {
            op.op_type = Some("OR_REMOVE".into());
            op.or_tag = Some("1700000000001:0:client-1".into());
        }
    }
    op
}

fn leaf(op: PredicateOp, attribute: &str, value: Value) -> PredicateNode {
    PredicateNode {
        op,
        attribute: Some(attribute.into()),
        value: Some(value),
        children: None,
        value_ref: None,
    }
}

fn node(op: PredicateOp, children: Vec<PredicateNode>) -> PredicateNode {
    PredicateNode {
        op,
        attribute: None,
        value: None,
        children: Some(children),
        value_ref: None,
    }
}

fn queries() -> Vec<(&'static str, Query)> {
    let sort = Some(vec![
        SortField {
            field: "age".into(),
            direction: SortDirection::Desc,
        },
        SortField {
            field: "address.city".into(),
            direction: SortDirection::Asc,
        },
    ]);
    vec![
        ("all", Query::default()),
        (
            "where",
            Query {
                where_: Some(BTreeMap::from([
                    ("name".to_owned(), Value::from("Ada")),
                    ("age".to_owned(), Value::from(36)),
                ])),
                limit: Some(10),
                ..Query::default()
            },
        ),
        (
            "predicate",
            Query {
                predicate: Some(node(
                    PredicateOp::And,
                    vec![
                        leaf(PredicateOp::Gte, "age", Value::from(18)),
                        leaf(PredicateOp::Regex, "name", Value::from("^A.*a$")),
                        leaf(PredicateOp::Like, "name", Value::from("A%")),
                        node(
                            PredicateOp::Or,
                            vec![
                                leaf(
                                    PredicateOp::In,
                                    "tags",
                                    Value::Array(vec![Value::from("x")]),
                                ),
                                leaf(
                                    PredicateOp::Between,
                                    "score",
                                    Value::Array(vec![Value::from(1), Value::from(10)]),
                                ),
                                node(
                                    PredicateOp::Not,
                                    vec![leaf(PredicateOp::IsNull, "none", Value::Nil)],
                                ),
                            ],
                        ),
                        leaf(
                            PredicateOp::ContainsAll,
                            "tags",
                            Value::Array(vec![Value::from("x"), Value::from("y")]),
                        ),
                        leaf(PredicateOp::StartsWith, "name", Value::from("Ad")),
                    ],
                )),
                sort: sort.clone(),
                limit: Some(50),
                cursor: Some("eyJ2IjpbMzZdLCJrIjoidXNlcjoxIn0".into()),
                ..Query::default()
            },
        ),
        (
            "grouped",
            Query {
                group_by: Some(vec!["address.city".into()]),
                aggregations: Some(vec![
                    Aggregation {
                        func: AggregateFunc::Count,
                        field: None,
                    },
                    Aggregation {
                        func: AggregateFunc::Avg,
                        field: Some("age".into()),
                    },
                    Aggregation {
                        func: AggregateFunc::Max,
                        field: Some("score".into()),
                    },
                ]),
                sort,
                ..Query::default()
            },
        ),
    ]
}

// ------------------------------------------------------------------------------------------
// Client frames

fn client_messages() -> Vec<(String, ClientMessage)> {
    let entry = OrMapEntry {
        key: "cart:1".into(),
        records: vec![OrMapRecord {
            value: Value::from(3),
            timestamp: ts(1_700_000_000_002, 4),
            tag: "1700000000002:4:client-1".into(),
            ttl_ms: Some(1_000),
        }],
        tombstones: vec!["1700000000000:0:client-1".into()],
    };
    let mut out: Vec<(String, ClientMessage)> = vec![
        (
            "auth".into(),
            ClientMessage::Auth(Auth {
                token: harness::signed_token(br#"{"alg":"HS256","typ":"JWT"}"#),
                protocol_version: Some(2),
                device_token: Some("dev-1".into()),
            }),
        ),
        (
            "device-hello".into(),
            ClientMessage::DeviceHello(DeviceHello {
                device_token: Some("dev-1".into()),
            }),
        ),
        (
            "ping".into(),
            ClientMessage::Ping(Ping {
                timestamp: 1_700_000_000_000,
            }),
        ),
        (
            "op-batch".into(),
            ClientMessage::OpBatch(OpBatch {
                ops: vec![
                    op("1", "put"),
                    op("2", "remove"),
                    op("3", "or_add"),
                    op("4", "or_remove"),
                ],
                write_concern: Some(WriteConcern::Replicated),
                timeout: Some(2_000),
            }),
        ),
        (
            "sync-init".into(),
            ClientMessage::SyncInit(SyncInit {
                map_name: "users".into(),
                last_sync_timestamp: Some(1_700_000_000_000),
            }),
        ),
        (
            "merkle-req-bucket".into(),
            ClientMessage::MerkleReqBucket(MerkleReqBucket {
                map_name: "users".into(),
                path: "a3".into(),
            }),
        ),
        (
            "query-unsub".into(),
            ClientMessage::QueryUnsub(QueryUnsub {
                query_id: "q1".into(),
            }),
        ),
        (
            "query-sync-init".into(),
            ClientMessage::QuerySyncInit(QuerySyncInit {
                query_id: "q1".into(),
                root_hash: 123_456,
            }),
        ),
        (
            "topic-sub".into(),
            ClientMessage::TopicSub(TopicSub {
                topic: "chat/room-1".into(),
            }),
        ),
        (
            "topic-unsub".into(),
            ClientMessage::TopicUnsub(TopicUnsub {
                topic: "chat/room-1".into(),
            }),
        ),
        (
            "topic-pub".into(),
            ClientMessage::TopicPub(TopicPub {
                topic: "chat/room-1".into(),
                data: value(),
            }),
        ),
        (
            "client-apply-ack".into(),
            ClientMessage::ClientApplyAck(ClientApplyAck { cursor: 42 }),
        ),
        (
            "ormap-sync-init".into(),
            ClientMessage::OrmapSyncInit(OrmapSyncInit {
                map_name: "carts".into(),
                root_hash: 99,
                bucket_hashes: BTreeMap::from([("0".to_owned(), 1), ("f".to_owned(), 2)]),
                last_sync_timestamp: None,
                claimed_epoch: Some(Value::from(3)),
            }),
        ),
        (
            "ormap-merkle-req-bucket".into(),
            ClientMessage::OrmapMerkleReqBucket(MerkleReqBucket {
                map_name: "carts".into(),
                path: "0f".into(),
            }),
        ),
        (
            "ormap-diff-request".into(),
            ClientMessage::OrmapDiffRequest(OrmapDiffRequest {
                map_name: "carts".into(),
                keys: vec!["cart:1".into(), "cart:2".into()],
            }),
        ),
        (
            "ormap-push-diff".into(),
            ClientMessage::OrmapPushDiff(OrmapPushDiff {
                map_name: "carts".into(),
                entries: vec![entry],
            }),
        ),
        (
            "partition-map-request".into(),
            ClientMessage::PartitionMapRequest(PartitionMapRequest {
                current_version: Some(3),
            }),
        ),
    ];
    for kind in ["put", "remove", "or_add", "or_remove"] {
        out.push((
            format!("client-op-{kind}"),
            ClientMessage::ClientOp(op("1", kind)),
        ));
    }
    for (name, query) in queries() {
        out.push((
            format!("query-sub-{name}"),
            ClientMessage::QuerySub(QuerySub {
                query_id: format!("q-{name}"),
                map_name: "users".into(),
                query,
                fields: (name == "where").then(|| vec!["name".into(), "address.city".into()]),
            }),
        ));
    }
    out
}

fn batch(items: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    for item in items {
        let len = u32::try_from(item.len()).expect("seed items are small");
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(item);
    }
    let count = u32::try_from(items.len()).expect("seed batches are small");
    protocol::encode_client(&ClientMessage::Batch(Batch { count, data })).expect("a BATCH encodes")
}

fn client_seeds() -> Seeds {
    let mut seeds: Seeds = Vec::new();
    let mut items = Vec::new();
    for (name, msg) in client_messages() {
        let frame = protocol::encode_client(&msg).expect("every implemented message encodes");
        protocol::decode(&frame).expect("a seed decodes");
        items.push(frame.clone());
        seeds.push((name, frame));
    }
    seeds.push(("batch".into(), batch(&items[2..6])));
    seeds.push(("batch-nested".into(), batch(&[batch(&items[..2])])));
    // A type the node knows but does not implement, and a malformed request it answers.
    let unsupported = Value::Map(vec![
        (Value::from("type"), Value::from("LOCK_REQUEST")),
        (
            Value::from("payload"),
            Value::Map(vec![(Value::from("name"), Value::from("l"))]),
        ),
    ]);
    let bad_query = Value::Map(vec![
        (Value::from("type"), Value::from("QUERY_SUB")),
        (
            Value::from("payload"),
            Value::Map(vec![
                (Value::from("queryId"), Value::from("q9")),
                (Value::from("mapName"), Value::from("")),
            ]),
        ),
    ]);
    for (name, v) in [
        ("unsupported", unsupported),
        ("malformed-query-sub", bad_query),
    ] {
        let mut frame = Vec::new();
        rmpv::encode::write_value(&mut frame, &v).expect("writing to a Vec cannot fail");
        seeds.push((name.into(), frame));
    }
    // What the node answers, for decode_server.
    let answers = [
        ("server-auth-required", ServerMessage::AuthRequired),
        ("server-pong", ServerMessage::pong(1, 2)),
        ("server-op-ack", ServerMessage::op_ack_applied(Some("op-1"))),
        (
            "server-error",
            ServerMessage::error(429, "rate limit exceeded"),
        ),
        (
            "server-op-rejected",
            ServerMessage::OpRejected {
                payload: OpRejected {
                    op_id: "op-2".into(),
                    reason: "bad map".into(),
                    code: Some(400),
                },
            },
        ),
    ];
    for (name, msg) in answers {
        seeds.push((name.into(), protocol::encode(&msg)));
    }
    seeds
}

// ------------------------------------------------------------------------------------------
// POST /sync

/// The request layout of protocol.md 1.8, written with the node's own wire types.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SyncRequest {
    client_id: Option<String>,
    client_hlc: Option<Timestamp>,
    operations: Option<Vec<ClientOp>>,
    queries: Option<Vec<SyncQuery>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SyncQuery {
    query_id: String,
    map_name: String,
    query: Query,
}

fn http_sync_seeds() -> Seeds {
    let body = |r: &SyncRequest| rmp_serde::to_vec_named(r).expect("a request encodes");
    let queries: Vec<SyncQuery> = queries()
        .into_iter()
        .map(|(name, query)| SyncQuery {
            query_id: format!("q-{name}"),
            map_name: "users".into(),
            query,
        })
        .collect();
    let full = SyncRequest {
        client_id: Some("client-1".into()),
        client_hlc: Some(ts(1_700_000_000_000, 0)),
        operations: Some(vec![
            op("1", "put"),
            op("2", "remove"),
            op("3", "or_add"),
            op("4", "or_remove"),
        ]),
        queries: Some(queries),
    };
    let writes = SyncRequest {
        client_id: Some("client-2".into()),
        client_hlc: None,
        operations: Some(vec![op("9", "put")]),
        queries: None,
    };
    let seeds: Seeds = vec![
        ("empty".into(), Vec::new()),
        ("full".into(), body(&full)),
        ("writes".into(), body(&writes)),
        (
            "hlc-only".into(),
            body(&SyncRequest {
                client_id: None,
                client_hlc: Some(ts(5, 5)),
                operations: None,
                queries: None,
            }),
        ),
    ];
    for (_, b) in &seeds {
        protocol::http_sync::decode_http_sync(b).expect("a seed decodes");
    }
    seeds
}

// ------------------------------------------------------------------------------------------
// Node-to-node transport

/// One frame with its 4-byte length prefix, as `peer::codec()` writes it.
fn prefixed(kind: Kind, corr: u64, body: &Bytes) -> Vec<u8> {
    let frame = wire::frame(kind, corr, body);
    let len = u32::try_from(frame.len()).expect("seed frames are small");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

fn cluster_seeds() -> Seeds {
    let hello = wire::body(&wire::Hello {
        magic: wire::PEER_MAGIC.into(),
        version: wire::PEER_VERSION,
        node_id: "node-a".into(),
        generation: 1_700_000_000_000,
        placement: "partitioned".into(),
        nonce: None,
        proofs: Vec::new(),
    });
    let write = wire::Write {
        trace: wire::Trace {
            request_id: Some("op-4".into()),
            origin_node_id: "node-a".into(),
            client_id: "client-1".into(),
            writer: Some(17),
        },
        ops: vec![
            op("1", "put"),
            op("2", "remove"),
            op("3", "or_add"),
            op("4", "or_remove"),
        ],
        origin_kept: Some(vec![3, 200]),
    };
    let mut query_bodies = Vec::new();
    for (name, query) in queries() {
        query_bodies.push((
            format!("query-{name}"),
            Kind::Query,
            wire::body(&wire::Query {
                map: "users".into(),
                query,
                fields: Some(vec!["name".into()]),
                partitions: vec![0, 1, 270],
                cap: 1_000,
                table_version: 4,
            }),
        ));
    }
    let path = leaf_path_of("user:1");
    let share = SyncShare {
        leaves: vec![(path, 77)],
        records: vec![(
            "user:1".into(),
            LwwRecord {
                value: value(),
                timestamp: ts(1, 1),
                ttl_ms: None,
            },
        )],
        entries: vec![OrMapEntry {
            key: "cart:1".into(),
            records: Vec::new(),
            tombstones: vec!["t".into()],
        }],
        timestamp: Some(ts(2, 2)),
    };
    let event = wire::Event {
        map: "users".into(),
        key: "user:1".into(),
        lww: Some(LwwRecord {
            value: value(),
            timestamp: ts(3, 0),
            ttl_ms: Some(10),
        }),
        or_add: None,
        or_remove: None,
        origin: Some(("node-a".into(), 17)),
        expiry: false,
    };
    let mut bodies: Vec<(String, Kind, Bytes)> = vec![
        ("hello".into(), Kind::Hello, hello.clone()),
        (
            "refused".into(),
            Kind::Refused,
            wire::body(&wire::Refused {
                reason: "peer speaks version 1".into(),
            }),
        ),
        (
            "write-forward".into(),
            Kind::WriteForward,
            wire::body(&write),
        ),
        (
            "write-replicate".into(),
            Kind::WriteReplicate,
            wire::body(&wire::Write {
                origin_kept: None,
                ..write.clone()
            }),
        ),
        (
            "write-done".into(),
            Kind::WriteDone,
            wire::body(&wire::WriteDone {
                rejected: vec![OpRejected {
                    op_id: "2".into(),
                    reason: "stale".into(),
                    code: Some(409),
                }],
                failure: Some("not durable".into()),
            }),
        ),
        (
            "topic".into(),
            Kind::Topic,
            wire::body(&wire::Topic {
                topic: "chat/room-1".into(),
                data: value(),
                origin_node_id: "node-a".into(),
            }),
        ),
        (
            "pull".into(),
            Kind::Pull,
            wire::body(&wire::Pull {
                partitions: vec![1, 2, 3],
                window: 8,
            }),
        ),
        (
            "pull-chunk".into(),
            Kind::PullChunk,
            wire::body(&wire::PullChunk {
                partition: 2,
                ops: write.ops.clone(),
                last: true,
            }),
        ),
        (
            "pull-done".into(),
            Kind::PullDone,
            wire::body(&wire::PullDone {
                records: 12,
                failure: None,
            }),
        ),
        (
            "pull-more".into(),
            Kind::PullMore,
            wire::body(&wire::PullMore { granted: 4 }),
        ),
        (
            "digests".into(),
            Kind::Digests,
            wire::body(&wire::Partitions {
                partitions: vec![0, 5, 270],
            }),
        ),
        (
            "digests-done".into(),
            Kind::DigestsDone,
            wire::body(&wire::DigestsDone {
                digests: vec![topgun_node::shard::digest::PartitionDigest {
                    partition: 5,
                    digest: 0x0123_4567_89ab_cdef,
                    stable: true,
                }],
            }),
        ),
        (
            "repair".into(),
            Kind::Repair,
            wire::body(&wire::Partitions {
                partitions: vec![5],
            }),
        ),
        (
            "auth".into(),
            Kind::Auth,
            wire::body(&wire::Auth {
                proofs: vec![serde_bytes::ByteBuf::from(vec![7u8; 32])],
            }),
        ),
        (
            "query-done".into(),
            Kind::QueryDone,
            wire::body(&wire::QueryDone {
                rows: vec![("user:1".into(), value())],
                has_more: true,
                groups: None,
                refused: vec![5],
                table_version: 4,
                error: None,
            }),
        ),
        (
            "interest".into(),
            Kind::Interest,
            wire::body(&wire::Interest {
                maps: vec!["users".into(), "carts".into()],
            }),
        ),
        (
            "events".into(),
            Kind::Events,
            wire::body(&wire::Events {
                events: vec![
                    event.clone(),
                    wire::Event {
                        lww: None,
                        or_remove: Some("tag".into()),
                        expiry: true,
                        ..event
                    },
                ],
            }),
        ),
        (
            "sync-done".into(),
            Kind::SyncDone,
            wire::body(&wire::SyncDone {
                share,
                refused: vec![9],
                table_version: 4,
                error: None,
            }),
        ),
    ];
    let asks = [
        ("leaves", SyncAsk::Leaves),
        ("leaf-records", SyncAsk::LeafRecords { path: "a3f".into() }),
        ("or-leaves", SyncAsk::OrLeaves),
        ("or-path", SyncAsk::OrPath { path: "0".into() }),
        (
            "or-keys",
            SyncAsk::OrKeys {
                keys: vec!["cart:1".into()],
            },
        ),
    ];
    for (name, ask) in asks {
        bodies.push((
            format!("sync-read-{name}"),
            Kind::SyncRead,
            wire::body(&wire::SyncRead {
                map: "users".into(),
                ask,
                partitions: vec![0, 7],
                table_version: 4,
            }),
        ));
    }
    bodies.extend(query_bodies);
    // As a connection carries them: HELLO first, then the frame (correlation id 7).
    bodies
        .into_iter()
        .map(|(name, kind, body)| {
            let mut stream = prefixed(Kind::Hello, 0, &hello);
            if kind != Kind::Hello {
                stream.extend(prefixed(kind, 7, &body));
            }
            (name, stream)
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Membership

/// Three foca members exchanging real datagrams (announce, probes, gossip, a member going
/// silent and being declared down, a leave); every datagram sent to the fuzzed identity is a
/// seed.
fn membership_seeds() -> Seeds {
    let ids: Vec<NodeIdentity> = vec![
        harness::fuzz_members()[0].clone(),
        harness::fuzz_identity(),
        harness::fuzz_members()[1].clone(),
    ];
    let target = harness::fuzz_identity().addr;
    let mut nodes: Vec<Foca<NodeIdentity, WireCodec, rand_foca::rngs::StdRng, _>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Foca::new(
                id.clone(),
                foca_config(std::time::Duration::from_millis(200)),
                rand_foca::rngs::StdRng::seed_from_u64(i as u64),
                WireCodec,
            )
        })
        .collect();
    let mut runtimes: Vec<AccumulatingRuntime<NodeIdentity>> =
        ids.iter().map(|_| AccumulatingRuntime::new()).collect();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut timers: Vec<(usize, Timer<NodeIdentity>)> = Vec::new();
    // `silent`: members whose datagrams are lost (to get suspicion and down claims).
    let mut pump = |nodes: &mut Vec<Foca<_, _, _, _>>,
                    runtimes: &mut Vec<AccumulatingRuntime<NodeIdentity>>,
                    timers: &mut Vec<(usize, Timer<NodeIdentity>)>,
                    silent: Option<usize>| {
        for _ in 0..50 {
            let mut moved = false;
            for from in 0..nodes.len() {
                while let Some((dst, data)) = runtimes[from].to_send() {
                    moved = true;
                    if dst.addr == target && !seen.iter().any(|s| s[..] == data[..]) {
                        seen.push(data.to_vec());
                    }
                    if Some(from) == silent {
                        continue;
                    }
                    if let Some(to) = ids.iter().position(|id| id.addr == dst.addr) {
                        if Some(to) != silent {
                            let _ = nodes[to].handle_data(&data, &mut runtimes[to]);
                        }
                    }
                }
                while let Some((_, timer)) = runtimes[from].to_schedule() {
                    timers.push((from, timer));
                }
                while runtimes[from].to_notify().is_some() {}
            }
            if !moved {
                break;
            }
        }
    };
    nodes[0]
        .announce(ids[1].clone(), &mut runtimes[0])
        .expect("announce");
    nodes[2]
        .announce(ids[1].clone(), &mut runtimes[2])
        .expect("announce");
    pump(&mut nodes, &mut runtimes, &mut timers, None);
    for round in 0..12 {
        // C falls silent after a few rounds: A and B suspect it, then declare it down.
        let silent = (round >= 4).then_some(2);
        for (i, n) in nodes.iter_mut().enumerate() {
            let _ = n.gossip(&mut runtimes[i]);
        }
        let due = std::mem::take(&mut timers);
        for (i, timer) in due {
            let _ = nodes[i].handle_timer(timer, &mut runtimes[i]);
        }
        pump(&mut nodes, &mut runtimes, &mut timers, silent);
    }
    // C speaks again while held down (TURN_UNDEAD back), then A leaves.
    let _ = nodes[2].announce(ids[1].clone(), &mut runtimes[2]);
    pump(&mut nodes, &mut runtimes, &mut timers, None);
    let _ = nodes[0].leave_cluster(&mut runtimes[0]);
    pump(&mut nodes, &mut runtimes, &mut timers, None);
    seen.truncate(64);
    // The conversation as well, a few datagrams per seed in the order they came (the
    // harness splits an input at each datagram's magic).
    let mut conversations: Seeds = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for d in &seen {
        if current.len() + d.len() >= topgun_node::cluster::actor::MAX_DATAGRAM {
            conversations.push((format!("conversation-{:02}", conversations.len()), current));
            current = Vec::new();
        }
        current.extend_from_slice(d);
    }
    if !current.is_empty() {
        conversations.push((format!("conversation-{:02}", conversations.len()), current));
    }
    // Two datagrams sealed with the fuzzed node's secrets, so the check of a good seal runs.
    let keys = harness::fuzz_keys();
    let sealed: Seeds = seen
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, d)| (format!("sealed-{i:02}"), keys.seal(d)))
        .collect();
    seen.into_iter()
        .enumerate()
        .map(|(i, d)| (format!("datagram-{i:02}"), d))
        .chain(conversations)
        .chain(sealed)
        .collect()
}

// ------------------------------------------------------------------------------------------
// JWT

fn jwt_seeds() -> Seeds {
    let now = 1_900_000_000u64;
    let header = br#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = [
        ("minimal", format!(r#"{{"sub":"u1","exp":{now}}}"#)),
        (
            "full",
            format!(
                r#"{{"sub":"user-42","exp":{now},"nbf":1600000000,"iat":1600000000.5,"iss":"topgun","aud":["app","other"],"roles":["admin",1,null]}}"#
            ),
        ),
        ("no-sub", format!(r#"{{"exp":{now}}}"#)),
        ("expired", r#"{"sub":"u1","exp":1000}"#.to_owned()),
    ];
    let mut seeds: Seeds = Vec::new();
    for (name, c) in &claims {
        let mut parts = header.to_vec();
        parts.push(b'\n');
        parts.extend_from_slice(c.as_bytes());
        // Mode 2: the harness signs it.
        let mut signed = vec![2];
        signed.extend_from_slice(&parts);
        seeds.push((format!("signed-{name}"), signed));
        // Mode 0: the same token as a client sends it.
        let mut raw = vec![0];
        raw.extend_from_slice(harness::signed_token(&parts).as_bytes());
        seeds.push((format!("token-{name}"), raw));
    }
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let rs = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
        b64(&claims[0].1),
        b64("not a signature")
    );
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims[0].1));
    for (name, mode, token) in [("rs256", 1u8, rs), ("alg-none", 0, none)] {
        let mut seed = vec![mode];
        seed.extend_from_slice(token.as_bytes());
        seeds.push((name.into(), seed));
    }
    seeds
}

// ------------------------------------------------------------------------------------------
// JWKS

fn jwks_seeds() -> Seeds {
    let rsa = jsonwebtoken::DecodingKey::from_rsa_pem(harness::RS_PUBLIC_PEM.as_bytes())
        .expect("the harness's RSA key parses");
    let mut rsa_jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_decoding_key(&rsa, Some(jsonwebtoken::Algorithm::RS256))
            .expect("a JWK of the RSA key"),
    )
    .expect("JWK to JSON");
    rsa_jwk["kid"] = "rs".into();
    // A valid P-256 point (the generator) and Ed25519 key (RFC 8032, test 1).
    let ec = serde_json::json!({"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256",
        "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
        "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"});
    let ed = serde_json::json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let hs = serde_json::json!({"kty": "oct", "kid": "hs", "k": "ZnV6ei1zZWNyZXQ"});
    let skipped = [
        serde_json::json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        serde_json::json!({"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AAAA"}),
        serde_json::json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
        serde_json::json!({"kty": "oct", "kid": "confused", "alg": "RS256", "k": "c2VjcmV0"}),
        serde_json::json!({"kty": "XYZ", "kid": "odd"}),
    ];
    let doc = |keys: Vec<serde_json::Value>| serde_json::json!({ "keys": keys }).to_string();
    let mut with_skipped = vec![ed.clone()];
    with_skipped.extend(skipped);
    vec![
        (
            "all-types".into(),
            doc(vec![rsa_jwk, ec.clone(), ed, hs]).into_bytes(),
        ),
        ("one-ec".into(), doc(vec![ec]).into_bytes()),
        ("skipped".into(), doc(with_skipped).into_bytes()),
        ("pem-rsa".into(), harness::RS_PUBLIC_PEM.as_bytes().to_vec()),
        ("empty".into(), doc(Vec::new()).into_bytes()),
    ]
}

// ------------------------------------------------------------------------------------------
// Config file

fn config_seeds() -> Seeds {
    let shipped = include_str!("../../../config/topgun.toml");
    // The shipped file has every key commented out with its default: uncommented, it sets
    // every key.
    let uncommented: String = shipped
        .lines()
        .filter_map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")))
        .map(|l| format!("{l}\n"))
        .collect();
    let cluster = r#"node_id = "node-a"
port = 8080
host = "0.0.0.0"
cluster_port = 9080
seed_nodes = ["10.0.0.2:9080", "10.0.0.3:9080"]
placement = "partitioned"
backup_count = 1
write_ack = "owner+backup"
jwt_secret = "s3cret"
storage_backend = "redb"
log_level = "debug"
"#;
    let seeds: Seeds = vec![
        ("shipped".into(), shipped.as_bytes().to_vec()),
        ("uncommented".into(), uncommented.into_bytes()),
        ("cluster".into(), cluster.as_bytes().to_vec()),
    ];
    for (name, text) in &seeds {
        let text = std::str::from_utf8(text).expect("seeds are UTF-8");
        let file = topgun_node::config::parse_file(Path::new(name), text).expect("a seed parses");
        topgun_node::config::Config::resolve(Default::default(), file).expect("a seed resolves");
    }
    seeds
}
