//! The fuzz harness: one function per target, each doing with its bytes what the node does with
//! untrusted input of that kind, up to where the input stops being parsed and starts being
//! data (a shard op, a compiled query, a foca state change). The targets in `fuzz_targets/`
//! call these; `src/bin/seeds.rs` runs every seed through them before writing it.
//!
//! Every function must return for every input: a panic, an abort, a hang or a huge allocation
//! is a finding, fixed in the node's code (never worked around here).
use std::path::Path;
use std::sync::{Arc, LazyLock};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use foca::{AccumulatingRuntime, Codec, Foca, Member, State};
use rand_foca::SeedableRng;
use tokio_util::codec::Decoder;

use topgun_node::cluster::membership::{
    foca_config, refusal_code, without_down_claims, NodeIdentity, WireCodec,
};
use topgun_node::cluster::wire::{self, Kind};
use topgun_node::config::{self, Config, Overrides};
use topgun_node::data::ops::{query_spec, shard_op};
use topgun_node::net::auth::Verifier;
use topgun_node::net::keyset::{KeySet, KeyStore};
use topgun_node::protocol::{self, ClientMessage, ClientOp};
use topgun_node::shard::query::CompiledQuery;

// ------------------------------------------------------------------------------------------
// Client frames (WebSocket binary messages)

/// One WebSocket binary message, as `ConnectionActor::on_message` takes it: decode; a frame
/// that does not decode gets its refusal built and encoded; one that does is costed, a `BATCH`
/// walked and each item handled the same way (a nested `BATCH` refused), ops turned into shard
/// ops and queries compiled. The same bytes also go through `decode_server` (the load
/// generator and the tests read the node's answers with it).
pub fn client_frame(data: &[u8]) {
    client_message(data, true);
    let _ = protocol::decode_server(data);
}

fn client_message(frame: &[u8], top: bool) {
    let msg = match protocol::decode(frame) {
        Ok(msg) => msg,
        Err(e) => {
            let _ = e.code();
            let _ = protocol::refusal::is_auth(frame);
            for answer in protocol::refusal::refusal(frame, &e) {
                let _ = protocol::encode(&answer);
            }
            return;
        }
    };
    let _ = protocol::frame_cost(&msg);
    let _ = msg.tag();
    match msg {
        ClientMessage::Batch(batch) if top => {
            if let Ok(items) = protocol::batch_items(&batch.data) {
                for item in items {
                    client_message(item, false);
                }
            }
        }
        ClientMessage::ClientOp(op) => ops([op]),
        ClientMessage::OpBatch(batch) => ops(batch.ops),
        ClientMessage::QuerySub(sub) => query(&sub.query, sub.fields.as_ref()),
        ClientMessage::TopicSub(t) => {
            let _ = protocol::is_valid_topic(&t.topic);
        }
        ClientMessage::TopicPub(t) => {
            let _ = protocol::is_valid_topic(&t.topic);
        }
        _ => {}
    }
}

/// Client ops as the write path takes them apart.
fn ops(ops: impl IntoIterator<Item = ClientOp>) {
    for op in ops {
        let _ = topgun_node::data::ops::op_label(&op);
        let _ = shard_op(op);
    }
}

/// A sample record value for a compiled query to look at (nested, mixed types).
static SAMPLE: LazyLock<rmpv::Value> = LazyLock::new(|| {
    use rmpv::Value as V;
    V::Map(vec![
        (V::from("name"), V::from("Ada Lovelace")),
        (V::from("age"), V::from(36)),
        (V::from("score"), V::F64(9.5)),
        (V::from("tags"), V::Array(vec![V::from("a"), V::from("b")])),
        (
            V::from("address"),
            V::Map(vec![(V::from("city"), V::from("London"))]),
        ),
        (V::from("none"), V::Nil),
    ])
});

/// A query as a `QUERY_SUB`, a `/sync` query or a peer's gathered share compiles it: the
/// model query, then the compiled one (regexes, cursor, paths), run once over a sample.
fn query(q: &protocol::Query, fields: Option<&Vec<String>>) {
    let Ok(spec) = query_spec(q, fields) else {
        return;
    };
    let compiled = CompiledQuery::new(&spec);
    let _ = compiled.matches(&SAMPLE);
    let _ = compiled.sort_key("k", &SAMPLE);
    let _ = compiled.project(&SAMPLE);
    let _ = compiled.cursor_status();
}

// ------------------------------------------------------------------------------------------
// POST /sync

/// A `/sync` request body: decoded as `http::sync` does, then its ops and queries taken apart
/// as `net::http_sync::handle` does.
pub fn http_sync(body: &[u8]) {
    let Ok(req) = protocol::http_sync::decode_http_sync(body) else {
        return;
    };
    if let Some(operations) = req.operations {
        ops(operations);
    }
    for q in req.queries.iter().flatten() {
        query(&q.query, None);
    }
}

// ------------------------------------------------------------------------------------------
// Node-to-node transport (TCP, cluster port)

/// Bytes of a peer connection: split by the transport's length-delimited codec, each frame
/// parsed and its body decoded as the type its kind names, as `PeerConn::on_frame` and the
/// callers awaiting answers (replication, migration, gather) do; bodies that carry ops or a
/// query are taken apart as the serving side does.
pub fn cluster_wire(data: &[u8]) {
    let mut codec = topgun_node::cluster::peer::codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        peer_frame(frame.freeze());
    }
    // A single frame without its length prefix too: the fuzzer then mutates bodies directly.
    peer_frame(Bytes::copy_from_slice(data));
}

fn peer_frame(payload: Bytes) {
    let Ok(frame) = wire::parse(payload) else {
        return;
    };
    let body = &frame.body[..];
    match frame.kind {
        Kind::Hello => {
            let _ = wire::decode::<wire::Hello>(body);
        }
        Kind::Refused => {
            let _ = wire::decode::<wire::Refused>(body);
        }
        Kind::WriteForward | Kind::WriteReplicate => {
            if let Ok(w) = wire::decode::<wire::Write>(body) {
                ops(w.ops);
            }
        }
        Kind::WriteDone => {
            let _ = wire::decode::<wire::WriteDone>(body);
        }
        Kind::Topic => {
            let _ = wire::decode::<wire::Topic>(body);
        }
        Kind::Pull => {
            let _ = wire::decode::<wire::Pull>(body);
        }
        Kind::PullChunk => {
            if let Ok(c) = wire::decode::<wire::PullChunk>(body) {
                ops(c.ops);
            }
        }
        Kind::PullDone => {
            let _ = wire::decode::<wire::PullDone>(body);
        }
        Kind::PullMore => {
            let _ = wire::decode::<wire::PullMore>(body);
        }
        Kind::Digests | Kind::Repair => {
            let _ = wire::decode::<wire::Partitions>(body);
        }
        Kind::DigestsDone => {
            let _ = wire::decode::<wire::DigestsDone>(body);
        }
        Kind::Auth => {
            if let Ok(auth) = wire::decode::<wire::Auth>(body) {
                let keys = fuzz_keys();
                let _ = keys.dial_verifies(&auth.proofs, &[1; 32], &[2; 32], "node-a", "node-b");
            }
        }
        Kind::Query => {
            if let Ok(q) = wire::decode::<wire::Query>(body) {
                query(&q.query, q.fields.as_ref());
            }
        }
        Kind::QueryDone => {
            let _ = wire::decode::<wire::QueryDone>(body);
        }
        Kind::SyncRead => {
            let _ = wire::decode::<wire::SyncRead>(body);
        }
        Kind::SyncDone => {
            if let Ok(done) = wire::decode::<wire::SyncDone>(body) {
                let asked: Vec<u16> = (0..271).collect();
                let checked = topgun_node::cluster::gather::check_sync_share(
                    "fuzz-peer",
                    &done.share,
                    &asked,
                    &done.refused,
                );
                if checked.is_ok() {
                    let _ = done.share.union();
                }
            }
        }
        Kind::Interest => {
            let _ = wire::decode::<wire::Interest>(body);
        }
        Kind::Events => {
            let _ = wire::decode::<wire::Events>(body);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Membership datagrams (UDP, cluster port)

/// Who the fuzzed node is: seeds address their datagrams to it, so foca gets past its
/// "not for me" checks.
pub fn fuzz_identity() -> NodeIdentity {
    identity("fuzz-b", 7002, 2)
}

/// The members the fuzzed node already knows, alive, so datagrams about them reach foca's
/// suspicion, refutation and down paths.
pub fn fuzz_members() -> Vec<NodeIdentity> {
    vec![identity("fuzz-a", 7001, 1), identity("fuzz-c", 7003, 3)]
}

pub fn identity(name: &str, port: u16, generation: u64) -> NodeIdentity {
    NodeIdentity {
        node_id: name.to_owned(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        generation,
        ws_url: format!("ws://127.0.0.1:{port}/ws"),
    }
}

/// The input as one datagram, as `ClusterActor` handles it: the size cap, the header peek of
/// the verdict check, the down-claim filter of a fresh node, then foca itself (a fresh instance
/// per input, which knows [`fuzz_members`], so a crash reproduces from its input alone).
///
/// Then, when the input holds several datagrams (split before each `TG` magic and version
/// byte, so concatenated seeds are a conversation), each in turn to one foca, with the timers
/// they set fired in between: suspicion, probes and down verdicts driven by a remote peer.
/// The cluster secrets a fuzzed node holds: a current and a previous one.
pub fn fuzz_keys() -> topgun_node::cluster::secret::ClusterKeys {
    topgun_node::cluster::secret::ClusterKeys::new(
        b"fuzzed grid secret",
        Some(b"previous grid secret"),
    )
}

pub fn membership(data: &[u8]) {
    if data.len() >= topgun_node::cluster::actor::MAX_DATAGRAM {
        return;
    }
    // A node with a cluster secret checks the seal first; whatever the input, that must not
    // panic (the seal of a fuzzed input never verifies, so foca sees the input below as a node
    // without a secret would).
    let _ = topgun_node::cluster::secret::open(Some(&fuzz_keys()), data);
    let _ = WireCodec.decode_header(data);
    let stripped = without_down_claims(data);
    let (mut foca, mut runtime) = fuzz_foca();
    for datagram in [stripped.as_deref(), Some(data)].into_iter().flatten() {
        datagram_to(&mut foca, &mut runtime, datagram);
    }
    while runtime.to_send().is_some() {}

    let magic = [b'T', b'G', topgun_node::cluster::membership::WIRE_VERSION];
    let starts: Vec<usize> = (1..data.len().saturating_sub(2))
        .filter(|&i| data[i..].starts_with(&magic))
        .collect();
    if starts.is_empty() {
        return;
    }
    let (mut foca, mut runtime) = fuzz_foca();
    let mut from = 0;
    for end in starts.into_iter().chain([data.len()]) {
        datagram_to(&mut foca, &mut runtime, &data[from..end]);
        from = end;
        // At most a few timers per step: foca re-arms some of them as it handles them.
        for _ in 0..8 {
            let Some((_, timer)) = runtime.to_schedule() else {
                break;
            };
            let _ = foca.handle_timer(timer, &mut runtime);
        }
        while runtime.to_send().is_some() {}
        while runtime.to_notify().is_some() {}
    }
}

type FuzzFoca = Foca<NodeIdentity, WireCodec, rand_foca::rngs::StdRng, foca::NoCustomBroadcast>;

/// The fuzzed node's foca, knowing [`fuzz_members`] alive.
fn fuzz_foca() -> (FuzzFoca, AccumulatingRuntime<NodeIdentity>) {
    let mut foca = Foca::new(
        fuzz_identity(),
        foca_config(std::time::Duration::from_millis(200)),
        rand_foca::rngs::StdRng::seed_from_u64(7),
        WireCodec,
    );
    let mut runtime = AccumulatingRuntime::new();
    let members: Vec<Member<NodeIdentity>> = fuzz_members()
        .into_iter()
        .map(|id| Member::new(id, 0, State::Alive))
        .collect();
    let _ = foca.apply_many(members.into_iter(), false, &mut runtime);
    (foca, runtime)
}

fn datagram_to(foca: &mut FuzzFoca, runtime: &mut AccumulatingRuntime<NodeIdentity>, data: &[u8]) {
    if let Err(e) = foca.handle_data(data, &mut *runtime) {
        let _ = refusal_code(&e);
    }
}

// ------------------------------------------------------------------------------------------
// JWT (AUTH token, and the bearer token of /sync)

/// The HS256 secret of the fuzzed verifiers; seeds are signed with it.
pub const HS_SECRET: &str = "fuzz-secret";
/// An RS256 public key (its private half was not kept: RS256 seeds carry no valid signature,
/// and the claims path after the signature is the same as HS256's, which mode 2 reaches).
pub const RS_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyFXi8PNB/lB5NuRduAUX
YJ9vY9G+ZojGGn9BSexUMM2om7KO8CUj1qBsyYG+dB00QMe/oJIEAPUIZY3nBYFv
kQglEDUn+BE5wzGK06gpBsi1flSHVulGFHJVVBfAXe2Sudv1jRzWtyEiVAQ9/WxY
gKYTEhTnmclVAmXh0c0YQqNIH1+Gegbt6XPYa4HkKWgjquDxHSQMwLD3NkNc/WAE
HBEj8q1v6KarMpPydgsGu2sGUCjIR1hER3FvcWcjPxERv85oaMU0O+vSUrxHGSuz
D/elfsKk6kzQZF4cwrECfJUv4Hp+ivdJ1Q31fy6FG/daw0KGpVQa5gQdBOn4cR+Y
cwIDAQAB
-----END PUBLIC KEY-----
";

static HS: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::new(HS_SECRET, None, None).expect("an HS256 secret always works"));
static HS_ISS_AUD: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(HS_SECRET, Some("topgun"), Some("app")).expect("an HS256 secret always works")
});
static RS: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::new(RS_PUBLIC_PEM, None, None).expect("the key above parses"));

/// The first byte picks the mode, the rest is the input:
/// - 0: a token as a client sends it, to the HS256 verifiers (plain, and with issuer and
///   audience configured);
/// - 1: a token to the RS256 verifier;
/// - 2: `header JSON \n claims JSON`, made a token and signed with [`HS_SECRET`], so the claims
///   checks after the signature (sub, roles, iat, nbf, exp, iss, aud) see fuzzed claims.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = HS.verify(token);
                let _ = HS_ISS_AUD.verify(token);
            }
        }
        1 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = RS.verify(token);
            }
        }
        _ => {
            let token = signed_token(rest);
            let _ = HS.verify(&token);
            let _ = HS_ISS_AUD.verify(&token);
        }
    }
}

/// A key set as `--jwt-keys-file` or a `--jwks-url` answer brings it (a JWKS document or a PEM
/// key), parsed as a reload does. When it parses, every key it kept is used: a token of each
/// algorithm names each `kid` (and none), with a signature of the wrong kind, so the verifier of
/// every key is built over what the parser let through (a key that passed the parser but cannot
/// be used must fail there as an error, never a panic).
pub fn jwks(data: &[u8]) {
    let Ok(set) = KeySet::parse(data) else {
        return;
    };
    let _ = (set.len(), set.skipped().len(), set.changes_since(&set));
    let kids: Vec<String> = set.kids().map(str::to_owned).collect();
    let verifier = Verifier::with_keys(Arc::new(KeyStore::new(set)), None, None, None);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = b64.encode(r#"{"sub":"u","exp":4000000000}"#);
    let signature = b64.encode([7u8; 256]);
    for alg in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ] {
        for kid in kids.iter().map(Some).chain([None]) {
            let header = match kid {
                Some(kid) => serde_json::json!({"alg": alg, "kid": kid}),
                None => serde_json::json!({"alg": alg}),
            };
            let token = format!("{}.{claims}.{signature}", b64.encode(header.to_string()));
            let _ = verifier.verify(&token);
        }
    }
}

/// `header \n claims` (raw bytes, no JSON check) as a compact JWS signed with [`HS_SECRET`].
pub fn signed_token(parts: &[u8]) -> String {
    let (header, claims) = match parts.iter().position(|&b| b == b'\n') {
        Some(i) => (&parts[..i], &parts[i + 1..]),
        None => (parts, &b""[..]),
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HMAC signing cannot fail");
    format!("{message}.{signature}")
}

// ------------------------------------------------------------------------------------------
// The config file

/// The text of a `--config` file: parsed, resolved under no flags, validated, as
/// `Config::load_from` does, without touching the filesystem.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = config::parse_file(Path::new("fuzz.toml"), text) else {
        return;
    };
    if let Ok(c) = Config::resolve(Overrides::default(), file) {
        let _ = format!("{c:?}");
    }
}
