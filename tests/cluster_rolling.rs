//! A rolling restart under load: each of three nodes in turn gets SIGTERM and is started again
//! on its own disk, while writers keep writing through every node and move to another node
//! when theirs closes. The leaving node hands its partitions' differences to their backups
//! before it leaves, and leaves before it exits, so no acknowledged write is lost and no
//! client gets an error: only reconnects.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::proto::*;
use common::*;
use futures_util::SinkExt;
use rmpv::Value;
use tokio_tungstenite::tungstenite::Message;

const MAP: &str = "rolling";

/// What a reconnecting writer saw.
#[derive(Default, Debug)]
struct Seen {
    acked: BTreeMap<String, Value>,
    batches: usize,
    reconnects: usize,
    /// ERROR answers and ops refused: what a client would have to handle.
    errors: Vec<Value>,
}

/// Writes batches through `urls[start]`, and through the next URL each time its connection
/// ends, until `stop`.
async fn reconnecting_writer(
    label: String,
    urls: Vec<String>,
    start: usize,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut at = start;
    let mut n = 0usize;
    'connections: while !stop.load(Ordering::SeqCst) {
        let url = &urls[at % urls.len()];
        at += 1;
        let Ok(mut c) = Client::try_connect(url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            let (ops, batch, last_id) = next_batch(&label, MAP, &mut n);
            if c.ws
                .send(Message::Binary(encode(&op_batch(ops)).into()))
                .await
                .is_err()
            {
                seen.reconnects += 1;
                continue 'connections;
            }
            loop {
                let Some(v) = c.recv_within(ACK_WAIT).await else {
                    // Closed (the node is leaving) or silent: this batch is unacknowledged.
                    seen.reconnects += 1;
                    continue 'connections;
                };
                match msg_type(&v) {
                    "OP_ACK" if pstr(&v, "lastId") == Some(last_id.as_str()) => {
                        seen.acked.extend(batch);
                        seen.batches += 1;
                        // A steady load, not a flood: the keys are all read back at the end.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        break;
                    }
                    "ERROR" | "OP_REJECTED" => {
                        seen.errors.push(v);
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    seen
}

fn durable() -> NodeOptions {
    NodeOptions {
        memory_storage: false,
        ..Default::default()
    }
}

/// Every acknowledged key is read back in one answer.
const FLAGS: [&str; 2] = ["--query-max-results", "1000000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_clients_only_reconnect() {
    let a = launch("node-a", None, 0, &FLAGS, durable(), None);
    let b = launch("node-b", Some(a.cluster_port), 0, &FLAGS, durable(), None);
    let c = launch("node-c", Some(a.cluster_port), 0, &FLAGS, durable(), None);
    wait_settled(&[&a, &b, &c], Duration::from_secs(15));
    let mut nodes = [Some(a), Some(b), Some(c)];
    let urls: Vec<String> = nodes.iter().flatten().map(Member::url).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(reconnecting_writer(
                format!("w{i}"),
                urls.clone(),
                i,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    for i in [1usize, 2, 0] {
        let m = nodes[i].take().expect("node up");
        let (id, port) = (m.id.clone(), m.cluster_port);
        let seed = nodes
            .iter()
            .flatten()
            .next()
            .expect("another node")
            .cluster_port;
        let mut node = m.node;
        let t0 = Instant::now();
        let status = node
            .sigterm(Duration::from_secs(15))
            .expect("exits after SIGTERM");
        assert!(status.success(), "{id}: {status:?}");
        let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
        assert!(
            log.contains("partitions handed over before leaving"),
            "{id}: no handover line"
        );
        eprintln!("{id} left in {:?}", t0.elapsed());
        let back = launch(
            &id,
            Some(seed),
            port,
            &FLAGS,
            durable(),
            Some(node.into_dir()),
        );
        nodes[i] = Some(back);
        let all: Vec<&Member> = nodes.iter().flatten().collect();
        wait_settled(&all, Duration::from_secs(20));
        // Let the writers run on the whole grid between two restarts.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut want = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        let seen = w.await.expect("writer");
        eprintln!(
            "writer {i}: {} batches acked, {} reconnects, {} errors",
            seen.batches,
            seen.reconnects,
            seen.errors.len()
        );
        assert!(seen.batches > 0, "writer {i} wrote nothing");
        want.extend(seen.acked);
        errors.extend(seen.errors);
    }
    assert!(
        errors.is_empty(),
        "clients got errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    for m in nodes.iter().flatten() {
        wait_keys(m, MAP, &want, Duration::from_secs(10)).await;
    }
    eprintln!("{} acknowledged keys read back from every node", want.len());
}
