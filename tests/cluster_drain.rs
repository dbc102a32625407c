//! A rolling restart of three nodes with drains, clients connected to all of them. The bug it
//! guards: a node that got SIGTERM closed all its clients in the same instant, and they all
//! reconnected to the other nodes in the same second, past those nodes' connection limiters
//! (HTTP 429 and a retry storm). With the drain, each leaving node closes its clients over
//! the drain spread; they reconnect to the remaining nodes at clients / spread per second, no
//! connection is refused by a limiter, no client gets an error, and every acknowledged write
//! reads back from every node at the end.
//!
//! The clients behave like clients behind a load balancer: one connection each, a write every
//! `write_every` (its ack waited for), a PING every 10 s; when their node closes them they
//! connect at once to one of the other two; when a node turns them away (503 draining, 429
//! limiter, a refused TCP connect) they try the next after a short jittered pause.
//!
//! `a_rolling_restart_with_drains_moves_clients_without_refusals_or_losses` runs a small grid in
//! CI; `bench_rolling_restart_with_drains` (ignored) is the measurement of
//! `scripts/bench-drain`: 1,000 clients and the default drain, parameters from the
//! environment, a JSON report written where `TOPGUN_BENCH_OUT` says.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::proto::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rmpv::Value;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const MAP: &str = "drained";
const PING_EVERY: Duration = Duration::from_secs(10);

/// One run's settings.
#[derive(Clone, Debug)]
struct Plan {
    clients: usize,
    write_every: Duration,
    drain_delay_ms: u64,
    drain_spread_ms: u64,
    connection_rate: u32,
    /// How long the grid runs whole between two restarts.
    pause: Duration,
}

/// What a client saw, each with its time since the run began.
#[derive(Clone, Copy, Debug)]
enum Seen {
    Connected {
        node: usize,
    },
    /// `code`: of the Close frame; `None` when the connection ended without one.
    Closed {
        node: usize,
        code: Option<u16>,
    },
    /// An HTTP status (503 draining, 429 limiter), or 0 when the TCP connect failed.
    Refused {
        node: usize,
        status: u16,
    },
}

struct Journal {
    t0: Instant,
    seen: Mutex<Vec<(Duration, usize, Seen)>>,
}

impl Journal {
    fn note(&self, client: usize, what: Seen) {
        let at = self.t0.elapsed();
        self.seen.lock().expect("journal").push((at, client, what));
    }
}

#[derive(Default)]
struct ClientEnd {
    acked: BTreeMap<String, Value>,
    /// ERROR and OP_REJECTED answers: what an application would see.
    errors: Vec<Value>,
}

enum Got {
    Msg(Value),
    Closed(Option<u16>),
    Timeout,
}

/// The next binary message within `within`, or the end of the connection.
async fn next_msg(c: &mut Client, within: Duration) -> Got {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return Got::Timeout,
            Ok(None) | Ok(Some(Err(_))) => return Got::Closed(None),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Got::Closed(frame.map(|f| u16::from(f.code)))
            }
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(v) = rmpv::decode::read_value(&mut &b[..]) {
                    return Got::Msg(v);
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// After node `from` closed this client for the `moves`th time: one of the others, picked by a
/// hash of both, as a balancer spreading new connections would (a fixed choice per client
/// would send every client of one earlier move to the same node again).
fn after_close(from: usize, ix: usize, moves: u64, nodes: usize) -> usize {
    // splitmix64's finaliser: neighbouring inputs give unrelated outputs.
    let mut z = (ix as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(moves);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (from + 1 + (z % (nodes as u64 - 1)) as usize) % nodes
}

async fn grid_client(
    ix: usize,
    urls: Arc<Vec<String>>,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    write_every: Duration,
) -> ClientEnd {
    let n = urls.len();
    let mut end = ClientEnd::default();
    let mut node = ix % n;
    let mut first = true;
    let mut seq = 0u32;
    let mut moves = 0u64;
    // Spread the writes of all clients over the interval.
    let offset = write_every.mul_f64((ix % 1000) as f64 / 1000.0);
    'connections: while !stop.load(Ordering::SeqCst) {
        let mut c = match Client::try_connect(&urls[node]).await {
            Ok(c) => c,
            Err(e) => {
                let status = match e {
                    WsError::Http(resp) => resp.status().as_u16(),
                    _ => 0,
                };
                journal.note(ix, Seen::Refused { node, status });
                node = (node + 1) % n;
                let pause = 100 + (ix as u64 * 37) % 500;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        journal.note(ix, Seen::Connected { node });
        if first {
            first = false;
            connected.fetch_add(1, Ordering::SeqCst);
        }
        let mut next_write = tokio::time::Instant::now() + offset;
        let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
        loop {
            if stop.load(Ordering::SeqCst) {
                let _ = c.ws.close(None).await;
                break 'connections;
            }
            let now = tokio::time::Instant::now();
            if now >= next_ping {
                next_ping = now + PING_EVERY;
                if c.ws
                    .send(Message::Binary(encode(&ping(now_millis() as f64)).into()))
                    .await
                    .is_err()
                {
                    journal.note(ix, Seen::Closed { node, code: None });
                    moves += 1;
                    node = after_close(node, ix, moves, n);
                    continue 'connections;
                }
            }
            if now < next_write {
                let wait = (next_write - now).min(Duration::from_millis(500));
                match next_msg(&mut c, wait).await {
                    Got::Closed(code) => {
                        journal.note(ix, Seen::Closed { node, code });
                        moves += 1;
                        node = after_close(node, ix, moves, n);
                        continue 'connections;
                    }
                    Got::Msg(_) | Got::Timeout => continue,
                }
            }
            next_write += write_every;
            seq += 1;
            let key = format!("c{ix}-{seq}");
            let id = format!("c{ix}-op-{seq}");
            let value = Value::from(format!("{ix}:{seq}"));
            let frame = client_op(put(&id, MAP, &key, &value, seq));
            if c.ws
                .send(Message::Binary(encode(&frame).into()))
                .await
                .is_err()
            {
                journal.note(ix, Seen::Closed { node, code: None });
                moves += 1;
                node = after_close(node, ix, moves, n);
                continue 'connections;
            }
            loop {
                match next_msg(&mut c, ACK_WAIT * 2).await {
                    Got::Msg(v) => match msg_type(&v) {
                        "OP_ACK" if pstr(&v, "lastId") == Some(id.as_str()) => {
                            end.acked.insert(key, value);
                            break;
                        }
                        "ERROR" | "OP_REJECTED" => {
                            end.errors.push(v);
                            break;
                        }
                        _ => {}
                    },
                    // Unacknowledged: the client would send it again; it is not counted.
                    Got::Closed(code) => {
                        journal.note(ix, Seen::Closed { node, code });
                        moves += 1;
                        node = after_close(node, ix, moves, n);
                        continue 'connections;
                    }
                    Got::Timeout => break,
                }
            }
        }
    }
    end
}

/// One node's counters as scraped.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    node: usize,
    rejected: f64,
    rate: f64,
}

/// Scrapes every node's client port every 250 ms until `stop` (a node that is down is skipped).
fn sample_nodes(ports: Vec<u16>, t0: Instant, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for (node, port) in ports.iter().enumerate() {
            if let Ok((200, body)) = http_get(*port, "/metrics") {
                let s = Scrape::parse(&body);
                out.push(Sample {
                    at: t0.elapsed(),
                    node,
                    rejected: s.value_or_zero("topgun_connections_rejected_total", &[]),
                    rate: s.value_or_zero("topgun_connection_rate_per_second", &[]),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    out
}

/// One restart: when node `node` got SIGTERM, when it exited and when it was back.
#[derive(Clone, Copy, Debug)]
struct Restart {
    node: usize,
    sigterm: Duration,
    exited: Duration,
    ready: Duration,
    exit_ok: bool,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What the journal and the samples say about one restart, from its SIGTERM to `until`.
fn restart_report(
    r: &Restart,
    until: Duration,
    nodes: usize,
    journal: &[(Duration, usize, Seen)],
    samples: &[Sample],
) -> serde_json::Value {
    let from = r.sigterm;
    let within = |t: Duration| t >= from && t < until;
    // Who was on the node at SIGTERM: replay each client's last event before it.
    let mut on: BTreeMap<usize, usize> = BTreeMap::new();
    for (at, client, seen) in journal {
        if *at >= from {
            break;
        }
        match seen {
            Seen::Connected { node } => {
                on.insert(*client, *node);
            }
            Seen::Closed { .. } => {
                on.remove(client);
            }
            Seen::Refused { .. } => {}
        }
    }
    let had = on.values().filter(|n| **n == r.node).count();
    let mut closes = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut reconnects = vec![BTreeMap::<u64, usize>::new(); nodes];
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut closed_at: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut latency = Vec::new();
    for (at, client, seen) in journal.iter().filter(|(at, _, _)| within(*at)) {
        match seen {
            Seen::Closed { node, code } if *node == r.node => {
                closes.push((*at - from).as_secs_f64());
                let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                *codes.entry(code).or_default() += 1;
                closed_at.insert(*client, *at);
            }
            Seen::Closed { .. } => *codes.entry("elsewhere".to_owned()).or_default() += 1,
            Seen::Connected { node } => {
                let second = (*at - from).as_secs();
                *reconnects[*node].entry(second).or_default() += 1;
                if let Some(closed) = closed_at.remove(client) {
                    latency.push((*at - closed).as_secs_f64() * 1000.0);
                }
            }
            Seen::Refused { node, status } => {
                *refused.entry(format!("{status}@node{node}")).or_default() += 1;
            }
        }
    }
    closes.sort_by(f64::total_cmp);
    latency.sort_by(f64::total_cmp);
    let per_node: Vec<serde_json::Value> = (0..nodes)
        .filter(|n| *n != r.node)
        .map(|n| {
            let per_second = &reconnects[n];
            let last = per_second.keys().max().copied().unwrap_or(0);
            let timeline: Vec<usize> = (0..=last)
                .map(|s| per_second.get(&s).copied().unwrap_or(0))
                .collect();
            // The node's own counters: rejections (a restarted node starts again at 0) and
            // the largest "accepted in the last full second" it reported.
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.node == n && within(s.at))
                .collect();
            let before = samples
                .iter()
                .rfind(|s| s.node == n && s.at < from)
                .map_or(0.0, |s| s.rejected);
            let mut rejected = 0.0;
            let mut last_seen = before;
            for s in &mine {
                rejected += if s.rejected >= last_seen {
                    s.rejected - last_seen
                } else {
                    s.rejected
                };
                last_seen = s.rejected;
            }
            let max_rate = mine.iter().map(|s| s.rate).fold(0.0, f64::max);
            json!({
                "node": n,
                "reconnects": per_second.values().sum::<usize>(),
                "max_per_second": per_second.values().max().copied().unwrap_or(0),
                "per_second": timeline,
                "node_rejected_total_delta": rejected,
                "node_max_connection_rate_per_second": max_rate,
            })
        })
        .collect();
    json!({
        "node": r.node,
        "clients_at_sigterm": had,
        "closed_by_node": closes.len(),
        "close_codes": codes,
        "first_close_s": closes.first().map(|v| round(*v)),
        "last_close_s": closes.last().map(|v| round(*v)),
        "exit_ok": r.exit_ok,
        "exit_after_s": round((r.exited - r.sigterm).as_secs_f64()),
        "ready_again_after_s": round((r.ready - r.sigterm).as_secs_f64()),
        "refused": refused,
        "reconnect_ms": {
            "p50": round(quantile(&latency, 0.5)),
            "p99": round(quantile(&latency, 0.99)),
            "max": round(latency.last().copied().unwrap_or(0.0)),
        },
        "to_nodes": per_node,
    })
}

async fn rolling_restart(plan: Plan) -> serde_json::Value {
    conn_limit();
    let rate = plan.connection_rate.to_string();
    let delay = plan.drain_delay_ms.to_string();
    let spread = plan.drain_spread_ms.to_string();
    let flags = [
        "--connection-rate",
        rate.as_str(),
        "--drain-delay-ms",
        delay.as_str(),
        "--drain-spread-ms",
        spread.as_str(),
        "--query-max-results",
        "10000000",
    ];
    let durable = || NodeOptions {
        memory_storage: false,
        ..Default::default()
    };
    let a = launch("node-a", None, 0, &flags, durable(), None);
    let b = launch("node-b", Some(a.cluster_port), 0, &flags, durable(), None);
    let c = launch("node-c", Some(a.cluster_port), 0, &flags, durable(), None);
    wait_settled(&[&a, &b, &c], Duration::from_secs(20));
    let mut nodes = [Some(a), Some(b), Some(c)];
    let urls: Arc<Vec<String>> = Arc::new(nodes.iter().flatten().map(Member::url).collect());
    let ports: Vec<u16> = nodes.iter().flatten().map(|m| m.node.port).collect();
    let t0 = Instant::now();
    let journal = Arc::new(Journal {
        t0,
        seen: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let stop = stop.clone();
        let ports = ports.clone();
        std::thread::spawn(move || sample_nodes(ports, t0, stop))
    };
    let clients: Vec<_> = (0..plan.clients)
        .map(|ix| {
            tokio::spawn(grid_client(
                ix,
                urls.clone(),
                journal.clone(),
                stop.clone(),
                connected.clone(),
                plan.write_every,
            ))
        })
        .collect();
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::SeqCst) < plan.clients {
        assert!(
            Instant::now() < connect_deadline,
            "only {} of {} clients connected",
            connected.load(Ordering::SeqCst),
            plan.clients
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = t0.elapsed();
    eprintln!("{} clients connected in {connect_secs:?}", plan.clients);
    tokio::time::sleep(plan.pause).await;

    let mut restarts = Vec::new();
    for i in [0usize, 1, 2] {
        let m = nodes[i].take().expect("node up");
        let (id, cluster_port, port) = (m.id.clone(), m.cluster_port, m.node.port);
        let seed = nodes
            .iter()
            .flatten()
            .next()
            .expect("another node")
            .cluster_port;
        let mut node = m.node;
        let sigterm = t0.elapsed();
        let status = tokio::task::block_in_place(|| {
            node.sigterm(Duration::from_secs(60))
                .expect("exits after SIGTERM")
        });
        let exited = t0.elapsed();
        eprintln!("{id}: {status:?} {:?} after SIGTERM", exited - sigterm);
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        assert!(
            log.contains("partitions handed over before leaving"),
            "{id}: no handover line"
        );
        let back = tokio::task::block_in_place(|| {
            let options = NodeOptions {
                port: Some(port),
                ..durable()
            };
            launch(
                &id,
                Some(seed),
                cluster_port,
                &flags,
                options,
                Some(node.into_dir()),
            )
        });
        nodes[i] = Some(back);
        tokio::task::block_in_place(|| {
            let all: Vec<&Member> = nodes.iter().flatten().collect();
            wait_settled(&all, Duration::from_secs(60));
        });
        let ready = t0.elapsed();
        restarts.push(Restart {
            node: i,
            sigterm,
            exited,
            ready,
            exit_ok: status.success(),
        });
        tokio::time::sleep(plan.pause).await;
    }
    let ended = t0.elapsed();

    stop.store(true, Ordering::SeqCst);
    let mut want = BTreeMap::new();
    let mut errors = Vec::new();
    for c in clients {
        let end = c.await.expect("client task");
        want.extend(end.acked);
        errors.extend(end.errors);
    }
    let samples = tokio::task::block_in_place(|| sampler.join().expect("sampler"));
    let mut lost = Vec::new();
    for m in nodes.iter().flatten() {
        let found = read_map(m, MAP).await;
        let missing = want.keys().filter(|k| !found.contains_key(*k)).count();
        lost.push(
            json!({"node": m.id, "missing": missing, "found": found.len(),
            "diff": diff(&want, &found)}),
        );
    }
    let journal = journal.seen.lock().expect("journal").clone();
    let connect_refused: BTreeMap<String, usize> = journal
        .iter()
        .filter(|(at, _, _)| *at < connect_secs)
        .filter_map(|(_, _, s)| match s {
            Seen::Refused { status, .. } => Some(status.to_string()),
            _ => None,
        })
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s).or_default() += 1;
            m
        });
    let reports: Vec<serde_json::Value> = restarts
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let until = restarts.get(k + 1).map_or(ended, |next| next.sigterm);
            restart_report(r, until, 3, &journal, &samples)
        })
        .collect();
    json!({
        "clients": plan.clients,
        "nodes": 3,
        "connection_rate": plan.connection_rate,
        "drain_delay_ms": plan.drain_delay_ms,
        "drain_spread_ms": plan.drain_spread_ms,
        "write_every_ms": plan.write_every.as_millis() as u64,
        "connect_phase": {"secs": round(connect_secs.as_secs_f64()), "refused": connect_refused},
        "restarts": reports,
        "acked_writes": want.len(),
        "read_back": lost,
        "client_errors": errors.len(),
        "client_error_examples": errors.iter().take(3).map(|e| format!("{e}")).collect::<Vec<_>>(),
        "run_secs": round(ended.as_secs_f64()),
    })
}

/// The test process holds a socket per client.
fn conn_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

fn restarts(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["restarts"].as_array().expect("restarts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_drains_moves_clients_without_refusals_or_losses() {
    let plan = Plan {
        clients: 60,
        write_every: Duration::from_millis(200),
        drain_delay_ms: 300,
        drain_spread_ms: 1500,
        connection_rate: 100,
        pause: Duration::from_secs(1),
    };
    let report = rolling_restart(plan.clone()).await;
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    assert_eq!(report["client_errors"], 0, "clients got errors");
    for node in report["read_back"].as_array().expect("read_back") {
        assert_eq!(node["missing"], 0, "acknowledged writes lost: {node}");
    }
    assert!(report["acked_writes"].as_u64() > Some(0));
    for r in restarts(&report) {
        assert_eq!(r["exit_ok"], true, "{r}");
        // Every client of the leaving node was told to go with 1001, over the spread.
        let had = r["clients_at_sigterm"].as_u64().unwrap_or(0);
        assert!(had > 0, "{r}");
        assert_eq!(r["close_codes"]["1001"].as_u64(), Some(had), "{r}");
        let (first, last) = (
            r["first_close_s"].as_f64().unwrap_or(0.0),
            r["last_close_s"].as_f64().unwrap_or(0.0),
        );
        assert!(first >= 0.25, "closed before the drain delay: {r}");
        assert!(last - first >= 0.75, "closes not spread: {r}");
        // Nobody was turned away by a limiter, and no node admitted more than its rate.
        for to in r["to_nodes"].as_array().expect("to_nodes") {
            assert_eq!(to["node_rejected_total_delta"], 0.0, "{r}");
            assert!(to["max_per_second"].as_u64() <= Some(u64::from(plan.connection_rate)));
        }
        assert!(
            r["refused"]
                .as_object()
                .is_none_or(|m| m.keys().all(|k| !k.starts_with("429"))),
            "{r}"
        );
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `scripts/bench-drain`: 1,000 clients over three release nodes, the default drain. Run by
/// hand: `TOPGUN_NODE_BIN=target/release/topgun-node cargo test --release --test cluster_drain
/// -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench-drain runs it"]
async fn bench_rolling_restart_with_drains() {
    let plan = Plan {
        clients: env_or("TOPGUN_BENCH_CLIENTS", 1000),
        write_every: Duration::from_millis(env_or("TOPGUN_BENCH_WRITE_EVERY_MS", 1000)),
        drain_delay_ms: env_or("TOPGUN_BENCH_DRAIN_DELAY_MS", 5000),
        drain_spread_ms: env_or("TOPGUN_BENCH_DRAIN_SPREAD_MS", 10_000),
        connection_rate: env_or("TOPGUN_BENCH_CONNECTION_RATE", 100),
        pause: Duration::from_millis(env_or("TOPGUN_BENCH_PAUSE_MS", 5000)),
    };
    eprintln!("{plan:?}");
    let report = rolling_restart(plan).await;
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{text}");
    if let Ok(path) = std::env::var("TOPGUN_BENCH_OUT") {
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    for node in report["read_back"].as_array().expect("read_back") {
        assert_eq!(node["missing"], 0, "acknowledged writes lost: {node}");
    }
}
