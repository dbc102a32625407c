//! A peer that stops reading (SIGSTOP, not yet declared down) while a node keeps sending it
//! writes: each link to it holds at most `--cluster-link-buffer-bytes` unsent, is cut
//! (`topgun_cluster_peer_errors_total{reason="backlog"}`, a warning), the sender's memory stays
//! flat, and once the peer resumes it catches up: it holds every acknowledged write.
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::proto::*;
use rmpv::Value;

const MAP: &str = "backlog";
const BOUND: u64 = 1 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_cut_off_memory_stays_flat_and_it_catches_up() {
    // Acknowledged by the owner alone, so the writes go on while the backup is frozen; the
    // cluster timeout and probe are long enough that neither TCP nor membership ends the link
    // during the freeze: only the byte bound does.
    let flags = [
        "--write-ack",
        "owner",
        "--cluster-link-buffer-bytes",
        &BOUND.to_string(),
        "--cluster-timeout-ms",
        "30000",
        "--cluster-probe-ms",
        "5000",
    ];
    let a = start("node-a", None, 0, &flags);
    let c = start("node-c", Some(a.cluster_port), 0, &flags);
    wait_settled(&[&a, &c], Duration::from_secs(30));
    // Partitions node-a owns and node-c backs up: node-a sends node-c a copy of each write.
    let keys = keys_owned_by(&a, 2_000).await;
    let value = "v".repeat(1_000);
    let mut writer = connect(&a).await;
    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    let mut n = 0usize;
    let mut write_for = async |writer: &mut common::Client, acked: &mut BTreeMap<_, _>, d| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let ops: Vec<Value> = (0..20)
                .map(|_| {
                    n += 1;
                    let key = &keys[n % keys.len()];
                    let v = Value::from(format!("{value}{n}"));
                    acked.insert(key.clone(), v.clone());
                    put(&format!("op-{n}"), MAP, key, &v, 0)
                })
                .collect();
            writer.send_acked(&op_batch(ops)).await;
        }
    };
    write_for(&mut writer, &mut acked, Duration::from_secs(2)).await;

    c.node.signal("STOP");
    let frozen = Instant::now();
    // The kernel buffers on both ends fill first; give them time, then measure.
    write_for(&mut writer, &mut acked, Duration::from_secs(3)).await;
    let rss_before = rss_bytes(a.node.pid());
    let mut peak_unsent = 0.0f64;
    let mut peak_rss = rss_before;
    for _ in 0..8 {
        write_for(&mut writer, &mut acked, Duration::from_secs(1)).await;
        let s = a.node.scrape();
        peak_unsent = peak_unsent.max(s.value_or_zero("topgun_cluster_link_unsent_bytes", &[]));
        peak_rss = peak_rss.max(rss_bytes(a.node.pid()));
    }
    let cut = a
        .node
        .scrape()
        .value_or_zero("topgun_cluster_peer_errors_total", &[("reason", "backlog")]);
    eprintln!(
        "frozen {:?}: {n} ops acked, links cut {cut}, peak unsent {peak_unsent} B, RSS {} -> peak {} MiB",
        frozen.elapsed(),
        rss_before >> 20,
        peak_rss >> 20
    );
    assert!(cut >= 1.0, "the link to the frozen peer was never cut");
    assert!(
        peak_unsent <= (4 * BOUND) as f64,
        "unsent bytes {peak_unsent} past the bound {BOUND} (a sweep of traffic allowed)"
    );
    assert!(
        peak_rss < rss_before + (32 << 20),
        "node-a grew from {} to {} MiB while its peer was frozen",
        rss_before >> 20,
        peak_rss >> 20
    );
    assert!(!lines_with(&a, "peer link cut: the peer does not read what it is sent").is_empty());

    c.node.signal("CONT");
    // node-c pulls what it missed when the link comes back: both hold every record.
    let want = acked.len() as f64;
    wait_for(
        "node-c holds every acknowledged write",
        Duration::from_secs(30),
        || {
            let (ha, hc) = (held(&a, MAP), held(&c, MAP));
            if ha == want && hc == want {
                Ok(())
            } else {
                Err(format!("node-a {ha}, node-c {hc}, want {want}"))
            }
        },
    );
    wait_keys(&c, MAP, &acked, Duration::from_secs(10)).await;
    let roots = (
        connect(&a).await.sync_root(MAP).await,
        connect(&c).await.sync_root(MAP).await,
    );
    assert_eq!(roots.0, roots.1, "Merkle roots");
}
