//! The cluster harness shared by the cluster test suites: real node processes, each on its own
//! cluster port (and, for fault tests, its own loopback address), bounded waits that panic with
//! what they saw last, and readers and writers that keep what was acknowledged.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message;

use super::proto::*;
use super::*;

pub const PROBE_MS: &str = "200";
/// `fnv1a(key) % 271`, as in protocol.md and src/shard/fnv.rs.
pub const PARTITIONS: usize = 271;
/// The default `--backup-count`.
pub const BACKUPS: usize = 1;
/// Ops per OP_BATCH of the background writers: small, so a kill lands between many batches.
pub const BATCH: usize = 5;
/// How long a writer waits for the OP_ACK of one batch before it gives up on its connection.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

// ---- processes ------------------------------------------------------------------------------

/// One cluster member: the process, its node id and its cluster port (UDP membership and TCP
/// node-to-node traffic share the number), on the node's own address.
pub struct Member {
    pub id: String,
    pub node: Node,
    pub cluster_port: u16,
}

impl Member {
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// Where its peers reach it (`--seed-nodes` of the others).
    pub fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::new(self.node.host, self.cluster_port)
    }
}

/// Starts `id` on `cluster_port` (0 = the OS chooses), joining `seed` when given. Returns once
/// `/ready` answers 200, which for a joining node means it found its seeds and finished its
/// initial migration.
pub fn start(id: &str, seed: Option<u16>, cluster_port: u16, extra: &[&str]) -> Member {
    launch(id, seed, cluster_port, extra, NodeOptions::default(), None)
}

/// [`start`] with a base `options` (storage) and, for a restart, the node's old directory.
pub fn launch(
    id: &str,
    seed: Option<u16>,
    cluster_port: u16,
    extra: &[&str],
    options: NodeOptions,
    dir: Option<tempfile::TempDir>,
) -> Member {
    let seeds: Vec<SocketAddr> = seed
        .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
        .into_iter()
        .collect();
    launch_on(id, &seeds, cluster_port, extra, options, dir)
}

/// Starts `id` on the address in `options.host` (every listener binds it), seeded with
/// `seeds`.
pub fn launch_on(
    id: &str,
    seeds: &[SocketAddr],
    cluster_port: u16,
    extra: &[&str],
    options: NodeOptions,
    dir: Option<tempfile::TempDir>,
) -> Member {
    let mut options = options
        .args(&["--node-id", id, "--cluster-port", &cluster_port.to_string()])
        .args(extra);
    if !extra.contains(&"--cluster-probe-ms") {
        options = options.args(&["--cluster-probe-ms", PROBE_MS]);
    }
    if !seeds.is_empty() {
        let list: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
        options = options.args(&["--seed-nodes", &list.join(",")]);
    }
    eprintln!(
        "starting {id} on {} (seeds {seeds:?}, cluster port {cluster_port})",
        options.host
    );
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
    let mut node = Node::start_in(dir, options);
    let cluster_port = if cluster_port == 0 {
        let out = node.stdout.as_mut().expect("stdout kept");
        read_port(out, "CLUSTER_PORT")
            .unwrap_or_else(|| panic!("{id}: no CLUSTER_PORT= after PORT="))
    } else {
        cluster_port
    };
    Member {
        id: id.to_owned(),
        node,
        cluster_port,
    }
}

/// `N` nodes `node-a`, `node-b`, ... on 127.0.0.(first+2) and the next addresses, each seeded
/// with all of them, started together and settled.
pub fn apart<const N: usize>(first: usize, extra: &[&str]) -> [Member; N] {
    apart_seeding::<N>(first, extra, |_| true)
}

/// [`apart`], where only the nodes `seeded(i)` get seeds (the others wait to be found).
pub fn apart_seeding<const N: usize>(
    first: usize,
    extra: &[&str],
    seeded: impl Fn(usize) -> bool + Sync,
) -> [Member; N] {
    // scripts/bench-heal also measures with other probe periods (the default 1000 ms).
    let probe = std::env::var("TOPGUN_TEST_PROBE_MS").unwrap_or_else(|_| PROBE_MS.into());
    let mut extra: Vec<&str> = extra.to_vec();
    extra.extend(["--cluster-probe-ms", probe.as_str()]);
    let extra = extra.as_slice();
    let hosts: Vec<IpAddr> = (first..first + N).map(node_host).collect();
    let ports: Vec<u16> = hosts.iter().map(|h| free_cluster_port(*h)).collect();
    let seeds: Vec<SocketAddr> = hosts
        .iter()
        .zip(&ports)
        .map(|(h, p)| SocketAddr::new(*h, *p))
        .collect();
    let members: Vec<Member> = std::thread::scope(|s| {
        let ids: Vec<String> = (0..N)
            .map(|i| format!("node-{}", char::from(b'a' + i as u8)))
            .collect();
        let started: Vec<_> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let none: &[SocketAddr] = &[];
                let seeds = if seeded(i) { seeds.as_slice() } else { none };
                let (extra, port) = (extra, ports[i]);
                let options = NodeOptions {
                    host: hosts[i],
                    ..Default::default()
                };
                s.spawn(move || launch_on(&id, seeds, port, extra, options, None))
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("node started"))
            .collect()
    });
    let members: [Member; N] = members.try_into().ok().expect("N members");
    let refs: Vec<&Member> = members.iter().collect();
    let took = wait_settled(&refs, Duration::from_secs(15));
    eprintln!("{N} nodes settled {took:?} after the last one was ready");
    members
}

/// The loopback address of the `i`-th node of a fault test: 127.0.0.2, 127.0.0.3, ...
pub fn node_host(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
}

/// A UDP and TCP port free on `host` (the cluster port binds both), so every node can be given
/// every node's address as a seed before any of them starts.
pub fn free_cluster_port(host: IpAddr) -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((host, 0)).expect("bind UDP on the test address");
        let port = udp.local_addr().expect("local addr").port();
        if std::net::TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {host}");
}

/// `N` nodes `node-a`, `node-b`, ... all seeded with `node-a`, waited on until membership and
/// the partition counts have settled.
pub fn cluster<const N: usize>(extra: &[&str]) -> [Member; N] {
    let mut seed = None;
    let members: [Member; N] = std::array::from_fn(|i| {
        let id = format!("node-{}", char::from(b'a' + i as u8));
        let m = start(&id, seed, 0, extra);
        seed.get_or_insert(m.cluster_port);
        m
    });
    let refs: Vec<&Member> = members.iter().collect();
    let took = wait_settled(&refs, Duration::from_secs(10));
    eprintln!("{N} nodes settled {took:?} after the last one was ready");
    members
}

// ---- waiting --------------------------------------------------------------------------------

/// Calls `probe` every 100 ms until it returns `Ok`; after `within`, panics with `what` and the
/// last `Err` (what was seen). Returns the value and how long it took.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        match probe() {
            Ok(v) => return (v, t0.elapsed()),
            Err(seen) if t0.elapsed() >= within => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Calls `probe` every 100 ms for `period` and panics with `what` and what was seen the first
/// time it fails: a claim that nothing changes is checked throughout, not at one instant after
/// a sleep.
pub fn holds(what: &str, period: Duration, mut probe: impl FnMut() -> Result<(), String>) {
    let t0 = Instant::now();
    loop {
        if let Err(seen) = probe() {
            panic!("{what}: broke after {:?}; seen: {seen}", t0.elapsed());
        }
        if t0.elapsed() >= period {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sum of every series of a family (a counter with labels, or a plain gauge); 0 when absent.
pub fn family_sum(s: &Scrape, name: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .fold(0.0, |sum, v| sum + v)
}

/// The cluster gauges of one node, for waits and panic messages.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in panic messages
pub struct Status {
    pub id: String,
    pub members: Option<f64>,
    pub owned: Option<f64>,
    pub backup: Option<f64>,
    pub version: Option<f64>,
}

pub fn status(m: &Member) -> Status {
    let s = m.node.scrape();
    Status {
        id: m.id.clone(),
        members: s.value("topgun_cluster_members", &[]),
        owned: s.value("topgun_partitions_owned", &[]),
        backup: s.value("topgun_partitions_backup", &[]),
        version: s.value("topgun_partition_table_version", &[]),
    }
}

pub fn wait_members(ms: &[&Member], want: usize, within: Duration) -> Duration {
    let what = format!("topgun_cluster_members == {want} on every node");
    wait_for(&what, within, || {
        let seen: Vec<Status> = ms.iter().map(|m| status(m)).collect();
        if seen.iter().all(|s| s.members == Some(want as f64)) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .1
}

/// Until the partitions are all owned again: sum of `topgun_partitions_owned` over `ms` is 271.
pub fn wait_owned_sum(ms: &[&Member], within: Duration) -> Duration {
    wait_for("sum of topgun_partitions_owned == 271", within, || {
        let seen: Vec<Status> = ms.iter().map(|m| status(m)).collect();
        let sum = seen.iter().filter_map(|s| s.owned).fold(0.0, |a, b| a + b);
        if sum == PARTITIONS as f64 {
            Ok(())
        } else {
            Err(format!("sum {sum}; {seen:?}"))
        }
    })
    .1
}

/// Until `ms` is a settled cluster of exactly these nodes: each counts them all as members, the
/// owned partitions add up to 271, the backups to 271 per backup copy, and every node owns
/// some.
pub fn wait_settled(ms: &[&Member], within: Duration) -> Duration {
    let n = ms.len();
    let backups = PARTITIONS * BACKUPS.min(n - 1);
    let what = format!(
        "{n} nodes settled (members {n} each, owned sum {PARTITIONS}, backup sum {backups}, \
         every node owning > 0)"
    );
    wait_for(&what, within, || {
        let seen: Vec<Status> = ms.iter().map(|m| status(m)).collect();
        let owned = seen.iter().filter_map(|s| s.owned).fold(0.0, |a, b| a + b);
        let backup = seen.iter().filter_map(|s| s.backup).fold(0.0, |a, b| a + b);
        let ok = seen.iter().all(|s| s.members == Some(n as f64))
            && owned == PARTITIONS as f64
            && backup == backups as f64
            && seen.iter().all(|s| s.owned.is_some_and(|o| o > 0.0));
        if ok {
            Ok(())
        } else {
            Err(format!("owned sum {owned}, backup sum {backup}; {seen:?}"))
        }
    })
    .1
}

// ---- logs -----------------------------------------------------------------------------------

/// The node's complete log lines so far (a last line still being written is left out).
pub fn log_lines(m: &Member) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(&m.node.log_path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: log line is not JSON ({e}): {l}", m.id))
        })
        .collect()
}

pub fn lines_with(m: &Member, msg: &str) -> Vec<serde_json::Value> {
    log_lines(m)
        .into_iter()
        .filter(|l| l["msg"] == msg)
        .collect()
}

/// Waits for a line `msg` satisfying `pred` (`what` describes `pred` for the panic message,
/// which shows the last lines with that `msg`, not the whole debug log).
pub fn wait_line(
    m: &Member,
    msg: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let title = format!("{}: log line {msg:?} with {what}", m.id);
    wait_for(&title, Duration::from_secs(10), || {
        let lines = lines_with(m, msg);
        match lines.iter().find(|l| pred(l)) {
            Some(l) => Ok(l.clone()),
            None => Err(format!(
                "{} lines with that msg; the last ones: {:#?}",
                lines.len(),
                &lines[lines.len().saturating_sub(5)..]
            )),
        }
    })
    .0
}

pub async fn connect(m: &Member) -> Client {
    Client::try_connect(&m.url())
        .await
        .unwrap_or_else(|e| panic!("{}: connect {}: {e}", m.id, m.url()))
}

// ---- reading and writing data ---------------------------------------------------------------

/// Query ids for one-shot reads, unique per process so no reply is mistaken for another's.
pub static READS: AtomicUsize = AtomicUsize::new(0);

/// Every live key of `map_name` on one node: a QUERY_SUB without filter on a fresh connection.
///
/// A node closes connections with live queries (1013 `resync`) when it has been away from its
/// peers, so that clients subscribe again; this reader does what a client does: it reconnects
/// and asks again.
pub async fn read_map(m: &Member, map_name: &str) -> BTreeMap<String, Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut closes = Vec::new();
    let (mut c, resp) = 'ask: loop {
        let mut c = connect(m).await;
        let qid = format!("read-{}", READS.fetch_add(1, Ordering::SeqCst));
        c.send(&query_sub(&qid, map_name, map(&[]))).await;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(v) = c.recv_within(left).await else {
                match c.closed.take() {
                    Some(close) if !left.is_zero() => {
                        closes.push(format!("{close:?}"));
                        continue 'ask;
                    }
                    _ => panic!(
                        "{}: no QUERY_RESP for {map_name} within 10 s (closes before: {closes:?})",
                        m.id
                    ),
                }
            };
            if msg_type(&v) == "QUERY_RESP" && pstr(&v, "queryId") == Some(qid.as_str()) {
                break 'ask (c, v);
            }
        }
    };
    assert!(
        get(payload(&resp), "hasMore").and_then(Value::as_bool) != Some(true),
        "{}: {map_name} has more rows than one QUERY_RESP carries (raise the test's cap)",
        m.id
    );
    let _ = c.ws.close(None).await;
    results(&resp).into_iter().collect()
}

/// `None` when every wanted key is in `found` with its value; else a short account of the
/// missing and wrong ones.
pub fn diff(want: &BTreeMap<String, Value>, found: &BTreeMap<String, Value>) -> Option<String> {
    let missing: Vec<&String> = want.keys().filter(|k| !found.contains_key(*k)).collect();
    let wrong: Vec<String> = want
        .iter()
        .filter_map(|(k, v)| {
            found
                .get(k)
                .filter(|f| *f != v)
                .map(|f| format!("{k}: want {v}, got {f}"))
        })
        .collect();
    if missing.is_empty() && wrong.is_empty() {
        return None;
    }
    Some(format!(
        "{} of {} keys missing (e.g. {:?}), {} with a wrong value (e.g. {:?}); \
         {} keys found",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)],
        wrong.len(),
        &wrong[..wrong.len().min(3)],
        found.len()
    ))
}

/// Writes `n` keys `{prefix}-{i}` = `i` to `map_name` through `via`, one acknowledged op at a
/// time, and returns them.
pub async fn write_keys(
    via: &Member,
    map_name: &str,
    prefix: &str,
    n: usize,
) -> BTreeMap<String, Value> {
    let mut c = connect(via).await;
    let mut want = BTreeMap::new();
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        let value = Value::from(i as i64);
        let id = format!("{prefix}-op-{i}");
        write_acked(
            &mut c,
            &via.id,
            &client_op(put(&id, map_name, &key, &value, 0)),
            &id,
        )
        .await;
        want.insert(key, value);
    }
    want
}

/// Polls `read_map` until every wanted key reads back with its value.
pub async fn wait_keys(
    m: &Member,
    map_name: &str,
    want: &BTreeMap<String, Value>,
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let found = read_map(m, map_name).await;
        match diff(want, &found) {
            None => return t0.elapsed(),
            Some(d) if t0.elapsed() >= within => {
                panic!("{}: {map_name} not readable within {within:?}: {d}", m.id)
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A PUT op with its own id and a fresh timestamp (distinct keys: LWW never decides).
pub fn put(id: &str, map_name: &str, key: &str, value: &Value, counter: u32) -> Value {
    put_op(
        id,
        map_name,
        key,
        value.clone(),
        &Ts::new(now_millis(), counter, "cluster-test"),
    )
}

/// Sends one frame and checks that its OP_ACK names `last_id`.
pub async fn write_acked(c: &mut Client, who: &str, frame: &Value, last_id: &str) {
    let seen = c.send_acked(frame).await;
    let ack = seen.last().expect("send_acked returns the ack");
    assert_eq!(
        pstr(ack, "lastId"),
        Some(last_id),
        "{who}: OP_ACK for the wrong op: {ack:?}"
    );
}

/// What one background writer did.
#[derive(Default)]
pub struct Written {
    pub acked: BTreeMap<String, Value>,
    pub batches_acked: usize,
    pub batches_refused: usize,
    /// The ERROR that refused the latest refused batch, for the summary line.
    pub last_refusal: Option<Value>,
    pub ended: String,
}

pub enum Ack {
    Acked,
    Refused(Value),
    Lost(String),
}

pub async fn await_ack(c: &mut Client, last_id: &str) -> Ack {
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_within(left).await else {
            return Ack::Lost(if c.closed.is_some() {
                "connection closed".into()
            } else {
                format!("no OP_ACK within {ACK_WAIT:?} (or the connection broke)")
            });
        };
        match msg_type(&v) {
            "OP_ACK" if pstr(&v, "lastId") == Some(last_id) => return Ack::Acked,
            "ERROR" => return Ack::Refused(v),
            // Live events or an ack that is not ours: not this batch's answer.
            _ => continue,
        }
    }
}

/// Writes OP_BATCHes of `BATCH` PUTs through one connection until stopped, out of time or out
/// of ops. Only a batch whose OP_ACK arrived counts: a refused, lost or timed-out batch is
/// never recorded, so it need not survive anything.
pub async fn write_batches(
    label: String,
    url: String,
    map_name: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    max_ops: usize,
    deadline: Instant,
) -> Written {
    let mut w = Written::default();
    let mut c = match Client::try_connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            w.ended = format!("connect failed: {e}");
            return w;
        }
    };
    let mut n = 0usize;
    w.ended = loop {
        if stop.load(Ordering::SeqCst) {
            break "stopped".into();
        }
        if Instant::now() >= deadline {
            break "time budget used".into();
        }
        if sent.fetch_add(BATCH, Ordering::SeqCst) + BATCH > max_ops {
            break "op budget used".into();
        }
        let (ops, batch, last_id) = next_batch(&label, &map_name, &mut n);
        let frame = Message::Binary(encode(&op_batch(ops)).into());
        if let Err(e) = c.ws.send(frame).await {
            break format!("send failed: {e}");
        }
        match await_ack(&mut c, &last_id).await {
            Ack::Acked => {
                w.acked.extend(batch);
                w.batches_acked += 1;
            }
            Ack::Refused(error) => {
                w.batches_refused += 1;
                w.last_refusal = Some(error);
            }
            Ack::Lost(why) => break why,
        }
    };
    w
}

/// `topgun_map_size_items{map}` of one node: the records of the map it holds.
pub fn held(m: &Member, map_name: &str) -> f64 {
    m.node
        .scrape()
        .value_or_zero("topgun_map_size_items", &[("map", map_name)])
}

/// Waits until the nodes hold `total` records of the map between them (the size gauges are
/// reported on an interval); what each holds.
pub fn wait_held_sum(ms: &[&Member], map_name: &str, total: f64) -> Vec<f64> {
    wait_for(
        &format!("{total} records of {map_name} held in all"),
        Duration::from_secs(20),
        || {
            let each: Vec<f64> = ms.iter().map(|m| held(m, map_name)).collect();
            if each.iter().sum::<f64>() == total {
                Ok(each)
            } else {
                Err(format!("held per node: {each:?}"))
            }
        },
    )
    .0
}

/// One node's `PARTITION_MAP` message, asked for on a fresh connection.
pub async fn request_partition_map(m: &Member) -> Value {
    let mut c = connect(m).await;
    c.send(&map(&[("type", "PARTITION_MAP_REQUEST".into())]))
        .await;
    c.recv_type_within("PARTITION_MAP", Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{}: no PARTITION_MAP within 10 s", m.id))
}

/// Keys whose partition `owner` owns, by the PARTITION_MAP it sends.
pub async fn keys_owned_by(owner: &Member, n: usize) -> Vec<String> {
    let reply = request_partition_map(owner).await;
    let partitions = get(payload(&reply), "partitions")
        .and_then(Value::as_array)
        .expect("PARTITION_MAP partitions");
    let mut owned = vec![false; PARTITIONS];
    for p in partitions {
        let id = get(p, "partitionId").and_then(Value::as_u64).expect("id") as usize;
        owned[id] = get(p, "ownerNodeId").and_then(Value::as_str) == Some(owner.id.as_str());
    }
    (0..)
        .map(|i| format!("k{i:06}"))
        .filter(|k| owned[(fnv1a(k) % PARTITIONS as u32) as usize])
        .take(n)
        .collect()
}

/// The next `BATCH` PUTs of a writer labelled `label` (keys `{label}-{n:05}`, values
/// `{label}:{n}`, ids `{label}-op-{n}`): the ops, each key with its value, and the last op id.
pub fn next_batch(
    label: &str,
    map_name: &str,
    n: &mut usize,
) -> (Vec<Value>, Vec<(String, Value)>, String) {
    let mut ops = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let key = format!("{label}-{:05}", *n);
        let value = Value::from(format!("{label}:{}", *n));
        ops.push(put(
            &format!("{label}-op-{}", *n),
            map_name,
            &key,
            &value,
            *n as u32,
        ));
        batch.push((key, value));
        *n += 1;
    }
    (ops, batch, format!("{label}-op-{}", *n - 1))
}

/// Background writers, one connection per target node.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicUsize>,
    pub tasks: Vec<(String, tokio::task::JoinHandle<Written>)>,
}

impl Load {
    pub fn start(targets: &[&Member], map_name: &str, max_ops: usize, budget: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + budget;
        let tasks = targets
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let label = format!("w{i}-via-{}", m.id);
                let task = tokio::spawn(write_batches(
                    label.clone(),
                    m.url(),
                    map_name.to_owned(),
                    stop.clone(),
                    sent.clone(),
                    max_ops,
                    deadline,
                ));
                (label, task)
            })
            .collect();
        Load { stop, sent, tasks }
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops the writers and returns every acked key → value.
    pub async fn finish(self) -> BTreeMap<String, Value> {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Lets the writers run out of time or ops; returns every acked key → value.
    pub async fn join(self) -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        for (label, task) in self.tasks {
            let w = task.await.expect("writer task");
            eprintln!(
                "writer {label}: {} batches acked ({} keys), {} refused (last: {:?}), ended: {}",
                w.batches_acked,
                w.acked.len(),
                w.batches_refused,
                w.last_refusal,
                w.ended
            );
            all.extend(w.acked);
        }
        all
    }
}
