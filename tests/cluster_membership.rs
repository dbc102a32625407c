//! Cluster membership (issue 8, first layer): real node processes on 127.0.0.1 forming a
//! cluster over their UDP cluster ports, failure detection after `kill -9`, rejoin after a
//! restart on the same port, a graceful leave on SIGTERM, and garbage on the cluster port.
//! A short probe period (`--cluster-probe-ms 200`) keeps every test well under 30 s.
mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::cluster::holds;
use common::{http_get, read_port, Node, NodeOptions};

const PROBE_MS: &str = "200";

/// Starts a node named `name`, joining `seed` when given, on `cluster_port` (0 = OS chooses).
/// Returns the node and its cluster port.
fn start(name: &str, seed: Option<u16>, cluster_port: u16) -> (Node, u16) {
    let mut options = NodeOptions::default().args(&[
        "--node-id",
        name,
        "--cluster-probe-ms",
        PROBE_MS,
        "--cluster-port",
        &cluster_port.to_string(),
    ]);
    if let Some(seed) = seed {
        options = options.args(&["--seed-nodes", &format!("127.0.0.1:{seed}")]);
    }
    let mut node = Node::start_with(options);
    let port = if cluster_port == 0 {
        let out = node.stdout.as_mut().expect("stdout kept");
        read_port(out, "CLUSTER_PORT").expect("CLUSTER_PORT= after PORT=")
    } else {
        cluster_port
    };
    (node, port)
}

fn members(node: &Node) -> Option<f64> {
    node.scrape().value("topgun_cluster_members", &[])
}

/// Waits until every node reports `want` members; panics with what each saw at the deadline.
fn wait_members(nodes: &[&Node], want: f64, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let seen: Vec<Option<f64>> = nodes.iter().map(|n| members(n)).collect();
        if seen.iter().all(|m| *m == Some(want)) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "topgun_cluster_members: want {want} on every node within {within:?}, saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn three() -> [(Node, u16); 3] {
    let a = start("node-a", None, 0);
    let b = start("node-b", Some(a.1), 0);
    let c = start("node-c", Some(a.1), 0);
    [a, b, c]
}

#[test]
fn a_lone_node_is_a_cluster_of_one() {
    let (node, _) = start("node-a", None, 0);
    holds(
        "a lone node counts one member",
        Duration::from_millis(600),
        || match members(&node) {
            Some(1.0) => Ok(()),
            seen => Err(format!("{seen:?}")),
        },
    );
    let s = node.scrape();
    assert_eq!(
        s.value("topgun_cluster_invalid_datagrams_total", &[]),
        Some(0.0)
    );
    assert!(
        s.value("topgun_actor_messages_total", &[("actor", "cluster")])
            .is_some(),
        "per-actor stats for actor=cluster"
    );
}

#[test]
fn three_nodes_join_detect_a_kill_and_take_back_a_restart() {
    let [(a, _), (b, b_port), (mut c, c_port)] = three();
    wait_members(&[&a, &b, &c], 3.0, Duration::from_secs(10));
    let joined = a.wait_log("member joined", |l| l["peer"] == "node-c");
    assert_eq!(joined["actor"], "cluster");
    assert!(joined["addr"]
        .as_str()
        .is_some_and(|s| s.ends_with(&format!(":{c_port}"))));

    c.kill9();
    let took = wait_members(&[&a, &b], 2.0, Duration::from_secs(10));
    eprintln!("kill -9 detected in {took:?}");
    // A failure, not a leave: suspected first, then down (on whichever node saw it first hand).
    let logged = |msg: &str| {
        [&a, &b].iter().any(|n| {
            n.logs()
                .iter()
                .any(|l| l["msg"] == msg && l["peer"] == "node-c")
        })
    };
    assert!(
        logged("member suspected"),
        "no 'member suspected' for node-c"
    );
    assert!(logged("member down"), "no 'member down' for node-c");

    // Restarted on the same cluster port: a newer generation of the same address.
    let (c2, _) = start("node-c", Some(b_port), c_port);
    let took = wait_members(&[&a, &b, &c2], 3.0, Duration::from_secs(10));
    eprintln!("restart rejoined in {took:?}");
}

#[test]
fn sigterm_leaves_the_cluster_at_once() {
    let [(a, _), (mut b, _), (c, _)] = three();
    wait_members(&[&a, &b, &c], 3.0, Duration::from_secs(10));
    let status = b.sigterm(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    // Well before failure detection would (suspicion alone takes 3 probe periods).
    let took = wait_members(&[&a, &c], 2.0, Duration::from_secs(3));
    eprintln!("leave seen in {took:?}");
    a.wait_log("member left", |l| l["peer"] == "node-b");
    c.wait_log("member left", |l| l["peer"] == "node-b");
}

#[test]
fn garbage_on_the_cluster_port_is_counted_and_the_node_keeps_serving() {
    let (a, a_port) = start("node-a", None, 0);
    let (b, _) = start("node-b", Some(a_port), 0);
    wait_members(&[&a, &b], 2.0, Duration::from_secs(10));

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{a_port}");
    let garbage: [&[u8]; 5] = [
        b"hello",
        b"",
        b"TG\x63rest-of-a-future-version",
        b"TG\x01\x05abc",
        &[0xff; 1500],
    ];
    for _ in 0..20 {
        for g in garbage {
            sock.send_to(g, &target).expect("send");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = a
            .scrape()
            .value("topgun_cluster_invalid_datagrams_total", &[])
            .unwrap_or(0.0);
        if n >= 100.0 {
            break;
        }
        assert!(Instant::now() < deadline, "invalid datagrams counted: {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = a.wait_log("invalid cluster datagram", |_| true);
    assert!(line["reason"].is_string(), "{line}");
    // Rate-limited: 100 bad datagrams, one line (plus at most one more after 10 s).
    let lines = a
        .logs()
        .into_iter()
        .filter(|l| l["msg"] == "invalid cluster datagram")
        .count();
    assert!(lines <= 2, "{lines} lines for 100 datagrams");
    assert_eq!(http_get(a.port, "/ready").expect("ready").0, 200);
    holds(
        "membership unharmed",
        Duration::from_millis(600),
        || match (members(&a), members(&b)) {
            (Some(2.0), Some(2.0)) => Ok(()),
            seen => Err(format!("{seen:?}")),
        },
    );
}

#[test]
fn a_seed_that_does_not_answer_leaves_a_working_cluster_of_one() {
    let dead = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let options = NodeOptions::default().args(&[
        "--cluster-probe-ms",
        PROBE_MS,
        "--seed-nodes",
        &format!("127.0.0.1:{dead},no-such-host.invalid:9080"),
        "--cluster-join-timeout-ms",
        "3000",
    ]);
    let t0 = Instant::now();
    // The harness returns once /ready is 200: not before the join timeout, because a load
    // balancer must not send clients to a node that may be missing the cluster's data.
    let node = Node::start_with(options);
    assert!(
        t0.elapsed() >= Duration::from_millis(3000),
        "ready after {:?}, before the 3 s join timeout",
        t0.elapsed()
    );
    node.wait_log(
        "no cluster member known; announcing to seeds and former members",
        |l| l["actor"] == "cluster",
    );
    node.wait_log("seed does not resolve", |l| {
        l["seed"] == "no-such-host.invalid:9080"
    });
    assert_eq!(members(&node), Some(1.0));
    node.wait_log(
        "cluster join timed out: serving with this node's data",
        |l| l["actor"] == "cluster",
    );
    assert_eq!(http_get(node.port, "/ready").expect("ready").0, 200);
}

#[test]
fn a_node_id_clash_is_logged() {
    let (a, a_port) = start("node-x", None, 0);
    let (b, _) = start("node-x", Some(a_port), 0);
    wait_members(&[&a, &b], 2.0, Duration::from_secs(10));
    a.wait_log("node id clash", |l| l["peer"] == "node-x");
}
