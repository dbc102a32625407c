//! The drain (lame duck) of a shutdown, against the real binary. The bug it guards: SIGTERM
//! closed every client at once, so a load balancer still sent new clients to a node that was
//! leaving, and all of its clients reconnected to the other nodes in the same second, past
//! their connection limiters. Now `/ready` turns 503 at once and new connections get a 503,
//! the open clients are still served for the drain delay, then closed with 1001 in small
//! groups over the drain spread; a second signal skips the rest of the drain and loses no
//! acknowledged write; the node exits 0 within its shutdown timeout, shortening a drain that
//! would not fit.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{diff, next_batch, read_map, Member};
use common::proto::*;
use common::*;
use futures_util::SinkExt;
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message;

const MAP: &str = "drain";

fn line<'a>(logs: &'a [serde_json::Value], msg: &str) -> &'a serde_json::Value {
    logs.iter()
        .find(|l| l["msg"] == msg)
        .unwrap_or_else(|| panic!("no log line {msg:?} in {logs:#?}"))
}

/// The shutdown's lines, one per step with its time since the signal, for the test output.
fn print_timeline(logs: &[serde_json::Value]) {
    let Some(start) = logs.iter().position(|l| l["msg"] == "shutdown started") else {
        return;
    };
    let t0 = logs[start]["time"].as_u64().unwrap_or(0);
    for l in &logs[start..] {
        if l["level"].as_u64() >= Some(30) {
            let t = l["time"].as_u64().unwrap_or(0).saturating_sub(t0);
            eprintln!("  {t:>6} ms  {}", l["msg"].as_str().unwrap_or(""));
        }
    }
}

/// Polls `/ready` until it is not 200; the time it took and the body.
fn wait_not_ready(node: &Node, t0: Instant) -> (Duration, u16, String) {
    loop {
        let (status, body) = http_get(node.http_addr(), "/ready").expect("/ready answers");
        if status != 200 {
            return (t0.elapsed(), status, body);
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "/ready still 200");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One write of one key, acknowledged.
async fn write_one(c: &mut Client, key: &str, n: u32) {
    let id = format!("op-{key}");
    let t = Ts::new(now_millis(), n, "drain-test");
    let seen = c
        .send_acked(&client_op(put_op(&id, MAP, key, Value::from(n), &t)))
        .await;
    let ack = seen.last().expect("ack");
    assert_eq!(pstr(ack, "lastId"), Some(id.as_str()), "{ack:?}");
}

/// Each client waits for its Close frame; answers (code, time since `t0`) per client.
fn await_closes(
    clients: Vec<Client>,
    t0: Arc<std::sync::OnceLock<Instant>>,
    limit: Duration,
) -> Vec<tokio::task::JoinHandle<(u16, Duration)>> {
    clients
        .into_iter()
        .map(|mut c| {
            let t0 = t0.clone();
            tokio::spawn(async move {
                let (code, _) = c.expect_close(limit).await;
                let at = t0.get().map_or(Duration::ZERO, |t| t.elapsed());
                (code, at)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_503_at_once_while_clients_keep_their_acks_during_the_delay() {
    let mut node = Node::start_with(NodeOptions::default().args(&[
        "--drain-delay-ms",
        "1500",
        "--drain-spread-ms",
        "0",
    ]));
    let mut c = node.authed_client().await;
    write_one(&mut c, "before", 0).await;
    let scrape = node.scrape();
    assert_eq!(scrape.value("topgun_draining", &[]), Some(0.0));

    let t0 = Instant::now();
    node.signal("TERM");
    let (took, status, body) = wait_not_ready(&node, t0);
    eprintln!("/ready {status} {took:?} after SIGTERM: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(
        took <= Duration::from_millis(100),
        "/ready 503 after {took:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["status"], "draining", "{body}");

    // The open client is still served: every write acknowledged during the delay.
    for n in 1..=5u32 {
        write_one(&mut c, &format!("during-{n}"), n).await;
    }
    // A new connection is turned away with a 503 that says why.
    match Client::try_connect(&node.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            let text = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(text.contains("draining"), "{text}");
        }
        Err(e) => panic!("new connection during the drain: {e}"),
        Ok(_) => panic!("new connection accepted during the drain"),
    }
    let s = wait_scrape(&node, "topgun_draining 1", |s| {
        s.value("topgun_draining", &[]) == Some(1.0)
    });
    // Turned away by the drain, not by the rate limiter (whose alert would fire).
    assert_eq!(s.value("topgun_connections_rejected_total", &[]), Some(0.0));
    let writes_done = t0.elapsed();
    assert!(
        writes_done < Duration::from_millis(1400),
        "the delay's writes took until {writes_done:?}"
    );

    let (code, reason) = c.expect_close(Duration::from_secs(5)).await;
    let closed = t0.elapsed();
    eprintln!("client closed {code} ({reason}) {closed:?} after SIGTERM");
    assert_eq!(code, 1001, "{reason}");
    assert!(
        closed >= Duration::from_millis(1450),
        "closed at {closed:?}"
    );

    let status = node.wait_exit(Duration::from_secs(25)).expect("exits");
    assert!(status.success(), "{status:?}");
    eprintln!("exit 0 {:?} after SIGTERM", t0.elapsed());
    let logs = node.logs();
    print_timeline(&logs);
    let started = line(
        &logs,
        "draining: /ready answers 503 and new connections are turned away",
    );
    assert_eq!(started["delayMs"], 1500);
    assert_eq!(started["connections"], 1);
    assert!(line(&logs, "drain delay over: closing clients")["atMs"].as_u64() >= Some(1500));
    assert_eq!(
        line(&logs, "connection refused: the node is draining")["err"]["type"],
        "draining"
    );
    line(&logs, "shutdown complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_closed_with_1001_evenly_over_the_spread() {
    const CLIENTS: usize = 50;
    const SPREAD: Duration = Duration::from_millis(2000);
    let mut node = Node::start_with(NodeOptions::default().args(&[
        "--drain-delay-ms",
        "0",
        "--drain-spread-ms",
        "2000",
    ]));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = node.authed_client().await;
        c.ping_pong().await;
        clients.push(c);
    }
    node.wait_metric("topgun_connected_clients", &[], CLIENTS as f64);
    let t0 = Arc::new(std::sync::OnceLock::new());
    let waits = await_closes(clients, t0.clone(), Duration::from_secs(10));
    let _ = t0.set(Instant::now());
    node.signal("TERM");
    let mut at = Vec::new();
    for w in waits {
        let (code, when) = w.await.expect("close waiter");
        assert_eq!(code, 1001);
        at.push(when);
    }
    at.sort();
    let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
    eprintln!("close times (ms after SIGTERM): {ms:?}");
    let (first, last) = (at[0], at[CLIENTS - 1]);
    assert!(
        first < Duration::from_millis(500),
        "first close at {first:?}"
    );
    assert!(
        last - first >= SPREAD * 3 / 4,
        "closes from {first:?} to {last:?}: not spread over {SPREAD:?}"
    );
    assert!(
        last < SPREAD + Duration::from_millis(700),
        "last close at {last:?}"
    );
    // No burst: at an even pace a quarter of the window holds about 12 of the 50; at once it
    // would hold all of them.
    let window = SPREAD / 4;
    let busiest = at
        .iter()
        .map(|&start| {
            at.iter()
                .filter(|&&t| t >= start && t < start + window)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!("busiest {window:?}: {busiest} closes");
    assert!(busiest <= 20, "{busiest} closes within {window:?}: {ms:?}");

    let status = node.wait_exit(Duration::from_secs(25)).expect("exits");
    assert!(status.success(), "{status:?}");
    let logs = node.logs();
    print_timeline(&logs);
    let closing = line(&logs, "closing client connections");
    assert_eq!(closing["connections"], CLIENTS);
    assert_eq!(closing["spreadMs"], 2000);
    assert_eq!(line(&logs, "clients closed")["stillOpen"], 0);
}

/// A writer that writes batches until its connection closes; what was acknowledged, and how
/// many acks came after `after` was set.
async fn write_until_closed(
    mut c: Client,
    label: String,
    after: Arc<AtomicBool>,
    acked_after: Arc<AtomicUsize>,
) -> (BTreeMap<String, Value>, Option<u16>) {
    let mut acked = BTreeMap::new();
    let mut n = 0usize;
    'batches: loop {
        let (ops, batch, last_id) = next_batch(&label, MAP, &mut n);
        if c.ws
            .send(Message::Binary(encode(&op_batch(ops)).into()))
            .await
            .is_err()
        {
            break;
        }
        loop {
            let Some(v) = c.recv_within(Duration::from_secs(10)).await else {
                break 'batches;
            };
            if msg_type(&v) == "OP_ACK" && pstr(&v, "lastId") == Some(last_id.as_str()) {
                acked.extend(batch);
                if after.load(Ordering::SeqCst) {
                    acked_after.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                break;
            }
        }
    }
    let code = c.closed.clone().flatten().map(|f| u16::from(f.code));
    (acked, code)
}

/// SIGTERM, then `second` while the drain of `drain_args` is in `phase`: the rest of the drain
/// is skipped, every client closed with 1001 at once, the node exits 0 promptly, and every
/// acknowledged write reads back after a restart on the same disk.
async fn second_signal_ends_the_drain(
    drain_args: &[&str],
    wait: Duration,
    second: &str,
    phase: &str,
) {
    const WRITERS: usize = 4;
    let options = NodeOptions {
        memory_storage: false,
        ..Default::default()
    }
    .args(drain_args)
    .args(&[
        "--shutdown-timeout-secs",
        "90",
        "--query-max-results",
        "1000000",
    ]);
    let mut node = Node::start_with(options.clone());
    let after = Arc::new(AtomicBool::new(false));
    let acked_after = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let c = node.authed_client().await;
        writers.push(tokio::spawn(write_until_closed(
            c,
            format!("w{i}"),
            after.clone(),
            acked_after.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    after.store(true, Ordering::SeqCst);
    node.signal("TERM");
    tokio::time::sleep(wait).await;
    let t1 = Instant::now();
    node.signal(second);
    let mut want = BTreeMap::new();
    let mut closed_at = Vec::new();
    for w in writers {
        let (acked, code) = w.await.expect("writer");
        closed_at.push(t1.elapsed());
        assert_eq!(code, Some(1001));
        want.extend(acked);
    }
    let exit = node.wait_exit(Duration::from_secs(20)).expect("exits");
    let exited = t1.elapsed();
    eprintln!(
        "{second} after {wait:?} of the drain: writers closed by {:?}, exit {exit:?} after {exited:?}; {} keys acked, {} batches during the drain",
        closed_at.iter().max(),
        want.len(),
        acked_after.load(Ordering::SeqCst)
    );
    assert!(exit.success(), "{exit:?}");
    // Promptly: the drain left was far longer (at least 20 s).
    assert!(
        exited < Duration::from_secs(5),
        "exit {exited:?} after {second}"
    );
    assert!(
        closed_at.iter().all(|t| *t < Duration::from_secs(2)),
        "closes after {second}: {closed_at:?}"
    );
    assert!(
        acked_after.load(Ordering::SeqCst) > 0,
        "no ack during the drain"
    );
    let logs = node.logs();
    print_timeline(&logs);
    let cut = line(
        &logs,
        "second signal: the rest of the drain is skipped, every client is closed now",
    );
    assert_eq!(cut["phase"], phase);
    // Every writer told to close once, by the spread or by the second signal.
    assert_eq!(line(&logs, "clients closed")["told"], WRITERS);
    assert_eq!(cut["signal"], format!("SIG{second}"));
    line(&logs, "storage flushed");
    line(&logs, "shutdown complete");

    let back = Member {
        id: "restarted".into(),
        node: Node::start_in(node.into_dir(), options),
        cluster_port: 0,
    };
    let found = read_map(&back, MAP).await;
    assert_eq!(diff(&want, &found), None);
    eprintln!(
        "{} acknowledged keys read back after the restart",
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_in_the_delay_skips_the_drain_and_loses_no_acked_write() {
    second_signal_ends_the_drain(
        &["--drain-delay-ms", "30000", "--drain-spread-ms", "30000"],
        Duration::from_millis(700),
        "TERM",
        "delay",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigint_in_the_spread_closes_the_rest_at_once_and_loses_no_acked_write() {
    // Four writers over 20 s: the first is closed at once, the others 5 s apart.
    second_signal_ends_the_drain(
        &["--drain-delay-ms", "0", "--drain-spread-ms", "20000"],
        Duration::from_millis(700),
        "INT",
        "spread",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_the_timeout_is_shortened_and_the_node_exits_0_in_time() {
    let mut node = Node::start_with(NodeOptions::default().args(&[
        "--shutdown-timeout-secs",
        "10",
        "--drain-delay-ms",
        "4000",
        "--drain-spread-ms",
        "8000",
    ]));
    let logs = node.logs();
    let cut = line(
        &logs,
        "drain delay and spread shortened to fit the shutdown timeout",
    );
    // 10 s less the 8 s kept for the steps after the drain: 2 s, shared 1:2 as configured.
    assert_eq!(cut["delayMs"], 666);
    assert_eq!(cut["spreadMs"], 1334);
    assert_eq!(cut["configuredDelayMs"], 4000);
    assert_eq!(cut["reservedMs"], 8000);
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(node.authed_client().await);
    }
    let t0 = Instant::now();
    let status = node.sigterm(Duration::from_secs(12)).expect("exits");
    let took = t0.elapsed();
    eprintln!("exit {status:?} {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    for mut c in clients {
        assert_eq!(c.expect_close(Duration::from_secs(1)).await.0, 1001);
    }
    let logs = node.logs();
    print_timeline(&logs);
    let started = line(
        &logs,
        "draining: /ready answers 503 and new connections are turned away",
    );
    assert_eq!(started["delayMs"], 666);
    assert_eq!(started["spreadMs"], 1334);
}
