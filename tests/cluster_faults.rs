//! Faults a real network makes, and what the grid must do after each (issue 22): three node
//! processes, each on its own loopback address (127.0.0.x), every node seeded with all three.
//!
//! - A network split (iptables DROP between node A and the others) long enough for both sides
//!   to declare the other down, writes acknowledged on both sides meanwhile, some keys written
//!   on both sides; then the network heals.
//! - A pause (SIGSTOP) of node A past failure detection, writes acknowledged by the others
//!   meanwhile; then SIGCONT.
//! - TCP alone cut between two nodes while membership (UDP) still sees them alive: the missing
//!   link is loud (metric, rate-limited log, `/ready` body), and heals.
//!
//! After each heal or resume, within 10 s: every node counts three members and has its two
//! peer links up, every acknowledged write reads back from every node with the value of the
//! newer HLC where both sides wrote a key, the Merkle roots are equal, no refusal keeps
//! happening, and the nodes that were never cut off kept their generation. Each catch-up
//! happens once per rejoin, not in a loop.
//!
//! The split test prints `heal converged in <ms> ms`; `scripts/bench-heal` runs it five times
//! and reports the median.
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::firewall::{self, Cut};
use common::proto::*;
use common::*;
use rmpv::Value;

/// The bound of the issue: from heal (or SIGCONT) to a converged cluster.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);
const MAP: &str = "faults";

/// Three nodes `node-a`, `node-b`, `node-c` on 127.0.0.(first+2) and the next two addresses,
/// each seeded with all three (as an operator lists them), started together and settled.
fn three_apart(first: usize, extra: &[&str]) -> [Member; 3] {
    apart::<3>(first, extra)
}

/// The local and remote address of every TCP connection the process `pid` holds open
/// (IPv4), read from /proc: its socket inodes, matched against /proc/net/tcp.
fn tcp_connections(pid: u32) -> Vec<(SocketAddr, SocketAddr)> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let addr = |hex: &str| -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // /proc/net/tcp prints the address in host byte order of a little-endian word.
        Some(SocketAddr::from((ip.to_le_bytes(), port)))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // State 01 is ESTABLISHED; field 9 is the inode.
            if f.len() > 9 && f[3] == "01" && inodes.contains(f[9]) {
                Some((addr(f[1])?, addr(f[2])?))
            } else {
                None
            }
        })
        .collect()
}

/// Every connection `m` dialled to a peer's cluster port leaves from `m`'s own address.
fn assert_dials_from_own_address(m: &Member, peers: &[&Member]) {
    let conns = tcp_connections(m.node.pid());
    let dialled: Vec<&(SocketAddr, SocketAddr)> = conns
        .iter()
        .filter(|(_, remote)| peers.iter().any(|p| *remote == p.cluster_addr()))
        .collect();
    assert_eq!(
        dialled.len(),
        peers.len(),
        "{}: one outbound link per peer: {conns:?}",
        m.id
    );
    for (local, remote) in dialled {
        assert_eq!(
            local.ip(),
            host(m),
            "{}: its link to {remote} leaves from {local}, not from its --host",
            m.id
        );
    }
}

fn host(m: &Member) -> IpAddr {
    m.node.host
}

fn links(m: &Member) -> Option<f64> {
    m.node.scrape().value("topgun_cluster_peer_links", &[])
}

fn peer_errors(m: &Member, reason: &str) -> f64 {
    m.node
        .scrape()
        .value_or_zero("topgun_cluster_peer_errors_total", &[("reason", reason)])
}

/// The membership story of `m` (joins, suspicions, downs, rejoins), for panic messages.
fn membership_lines(m: &Member) -> Vec<String> {
    log_lines(m)
        .into_iter()
        .filter(|l| {
            let msg = l["msg"].as_str().unwrap_or("");
            msg.starts_with("member ") || msg.starts_with("cluster ")
        })
        .map(|l| l.to_string())
        .collect()
}

/// The link and catch-up story of `m`, for panic messages.
fn link_lines(m: &Member) -> Vec<String> {
    log_lines(m)
        .into_iter()
        .filter(|l| {
            let msg = l["msg"].as_str().unwrap_or("");
            msg.starts_with("catch-up")
                || msg.starts_with("peer ")
                || msg.starts_with("cluster rejoined")
                || msg.starts_with("member ")
                || msg == "partitions rebalanced"
        })
        .map(|l| {
            let mut l = l;
            for k in ["hostname", "pid", "level", "actor", "nodeId"] {
                l.as_object_mut().map(|o| o.remove(k));
            }
            l.to_string()
        })
        .collect()
}

/// How many times `msg` was logged by `m`.
fn count_lines(m: &Member, msg: &str) -> usize {
    lines_with(m, msg).len()
}

/// Writes `keys` (key → (value, timestamp)) through `m` in acked batches of ten.
async fn write_all(m: &Member, keys: &BTreeMap<String, (Value, Ts)>) {
    let mut c = connect(m).await;
    let entries: Vec<_> = keys.iter().collect();
    for (i, chunk) in entries.chunks(10).enumerate() {
        let ops: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(j, (k, (v, t)))| put_op(&format!("{}-{i}-{j}", m.id), MAP, k, v.clone(), t))
            .collect();
        let last = format!("{}-{i}-{}", m.id, chunk.len() - 1);
        write_acked(&mut c, &m.id, &op_batch(ops), &last).await;
    }
}

/// `n` fresh keys `prefix-000..` with distinct values, stamped now by `node`.
fn fresh(prefix: &str, n: usize, node: &str) -> BTreeMap<String, (Value, Ts)> {
    let now = now_millis();
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-{i:03}"),
                (
                    Value::from(format!("{prefix}:{i}")),
                    Ts::new(now, i as u32, node),
                ),
            )
        })
        .collect()
}

/// What a converged cluster reads: the value of the newest write of each key.
fn expected(writes: &[&BTreeMap<String, (Value, Ts)>]) -> BTreeMap<String, Value> {
    let mut newest: BTreeMap<String, (Value, Ts)> = BTreeMap::new();
    for w in writes {
        for (k, (v, t)) in w.iter() {
            if newest.get(k).is_none_or(|(_, old)| t > old) {
                newest.insert(k.clone(), (v.clone(), t.clone()));
            }
        }
    }
    newest.into_iter().map(|(k, (v, _))| (k, v)).collect()
}

/// Why `ms` is not converged on `want`, or `None`: every node counts them all as members and
/// has a link to each other one, reads every wanted key with its value, and one Merkle root.
async fn not_converged(ms: &[&Member], want: &BTreeMap<String, Value>) -> Option<String> {
    let n = ms.len() as f64;
    for m in ms {
        let s = status(m);
        let l = links(m);
        if s.members != Some(n) || l != Some(n - 1.0) {
            return Some(format!("{}: members {:?}, links {l:?}", m.id, s.members));
        }
    }
    for m in ms {
        if let Some(d) = diff(want, &read_map(m, MAP).await) {
            return Some(format!("{}: {d}", m.id));
        }
    }
    let mut roots = Vec::new();
    for m in ms {
        roots.push((m.id.clone(), connect(m).await.sync_root(MAP).await));
    }
    if roots.windows(2).any(|w| w[0].1 != w[1].1) {
        return Some(format!("Merkle roots differ: {roots:?}"));
    }
    None
}

/// Polls until converged; panics after [`CONVERGE_WITHIN`] with what it saw last. Returns how
/// long it took from `since`.
async fn wait_converged(
    ms: &[&Member],
    want: &BTreeMap<String, Value>,
    since: Instant,
    what: &str,
) -> Duration {
    loop {
        match not_converged(ms, want).await {
            None => return since.elapsed(),
            Some(seen) if since.elapsed() >= CONVERGE_WITHIN => {
                for m in ms {
                    eprintln!("{}: {:#?}", m.id, link_lines(m));
                }
                panic!("{what}: not converged within {CONVERGE_WITHIN:?}; last seen: {seen}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The counters that must stop growing once the cluster is whole: refusals, and catch-ups.
fn churn(ms: &[&Member]) -> Vec<(String, f64, usize, usize)> {
    ms.iter()
        .map(|m| {
            (
                m.id.clone(),
                peer_errors(m, "bad_hello") + peer_errors(m, "node_id_clash"),
                count_lines(m, "catch-up started"),
                count_lines(m, "cluster rejoined as a new generation"),
            )
        })
        .collect()
}

/// Nothing keeps happening: once a catch-up asked for during the heal had its turn (they are at
/// least a second apart), the churn counters are the same two seconds apart.
fn assert_quiet(ms: &[&Member]) {
    std::thread::sleep(Duration::from_millis(1500));
    let before = churn(ms);
    std::thread::sleep(Duration::from_secs(2));
    let after = churn(ms);
    if before != after {
        for m in ms {
            eprintln!("{}: {:#?}", m.id, link_lines(m));
        }
    }
    assert_eq!(
        before, after,
        "refusals (bad_hello + node_id_clash), catch-ups or rejoins still happening after \
         convergence: (node, refusals, catch-ups, rejoins) before / after 2 s"
    );
}

/// How many catch-ups each node started so far (the baseline of [`assert_catch_ups_bounded`]).
fn catch_up_counts(ms: &[&Member]) -> Vec<usize> {
    ms.iter()
        .map(|m| count_lines(m, "catch-up started"))
        .collect()
}

/// Every catch-up a node started after the fault, per peer: at most `max` each (one per
/// rejoin, plus one for a link that broke meanwhile), never a loop.
fn assert_catch_ups_bounded(m: &Member, since_line: usize, max: usize) {
    let lines = lines_with(m, "catch-up started");
    let mut per_peer: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines[since_line.min(lines.len())..] {
        *per_peer
            .entry(l["peer"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert!(
        per_peer.values().all(|&n| n <= max),
        "{}: catch-ups per peer after the fault {per_peer:?} (at most {max} each)",
        m.id
    );
}

// ---- a network split ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_network_split_replicates_again_and_merges_both_sides() {
    if !firewall::available() {
        return;
    }
    let [a, b, c] = three_apart(0, &[]);
    // The cut matches source addresses: it only holds if each node dials from its own.
    assert_dials_from_own_address(&a, &[&b, &c]);
    assert_dials_from_own_address(&b, &[&a, &c]);
    let took = one_cut_off_then_healed(&a, &b, &c).await;
    eprintln!("heal converged in {} ms", took.as_millis());
}

/// The same split where the node cut off has no seeds of its own (the first node of a cluster,
/// which the others were seeded with): it must find the others again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_seeds_cut_off_finds_the_cluster_again() {
    if !firewall::available() {
        return;
    }
    let [a, b, c] = apart_seeding::<3>(14, &[], |i| i != 0);
    let took = one_cut_off_then_healed(&a, &b, &c).await;
    eprintln!("seedless heal converged in {} ms", took.as_millis());
}

/// The same split with partitioned placement: each side keeps only its partitions' records, and
/// after the heal the reads, gathered from the holders, and the gathered Merkle roots agree;
/// what a node stored for partitions it no longer keeps is handed over and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_split_converges_with_partitioned_placement_too() {
    if !firewall::available() {
        return;
    }
    let [a, b, c] = three_apart(17, &["--placement", "partitioned"]);
    let took = one_cut_off_then_healed(&a, &b, &c).await;
    eprintln!("partitioned heal converged in {} ms", took.as_millis());
    // 100 before + 200 + 200 on the two sides + 20 on both: 520 keys, two copies each.
    let all = [&a, &b, &c];
    wait_for(
        "two copies of every record",
        Duration::from_secs(20),
        || {
            let held: Vec<f64> = all
                .iter()
                .map(|m| {
                    m.node
                        .scrape()
                        .value_or_zero("topgun_map_size_items", &[("map", MAP)])
                })
                .collect();
            if held.iter().sum::<f64>() == 1040.0 {
                Ok(())
            } else {
                Err(format!("held per node: {held:?}"))
            }
        },
    );
}

/// Cuts `a` from `b` and `c` until both sides declared the other down, writes on both sides
/// (some keys on both), heals, and checks everything issue 22 asks for; the time from heal to
/// converged.
async fn one_cut_off_then_healed(a: &Member, b: &Member, c: &Member) -> Duration {
    let all = [a, b, c];
    let before = fresh("before", 100, "t");
    write_all(a, &before).await;

    let cut = Cut::between(&[host(a)], &[host(b), host(c)]);
    // Both sides declare the other down: A alone owns every partition, B and C share them.
    let took = wait_for("A alone, B and C a pair", Duration::from_secs(10), || {
        let seen: Vec<Status> = all.iter().map(|m| status(m)).collect();
        let ok = seen[0].members == Some(1.0)
            && seen[0].owned == Some(PARTITIONS as f64)
            && seen[1..].iter().all(|s| s.members == Some(2.0))
            && seen[1].owned.zip(seen[2].owned).map(|(x, y)| x + y) == Some(PARTITIONS as f64);
        if ok {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .1;
    eprintln!("split detected on both sides after {took:?}");
    let catch_ups = catch_up_counts(&all);

    let on_a = fresh("side-a", 200, "writer-a");
    let on_b = fresh("side-b", 200, "writer-b");
    // Written on both sides; A's write is the newer for even keys, B's for odd ones.
    let base = now_millis();
    let (mut both_a, mut both_b) = (BTreeMap::new(), BTreeMap::new());
    for i in 0..20u64 {
        let key = format!("both-{i:02}");
        let (ta, tb) = if i % 2 == 0 {
            (base + 1_000, base)
        } else {
            (base, base + 1_000)
        };
        both_a.insert(key.clone(), ("from-a".into(), Ts::new(ta, 0, "writer-a")));
        both_b.insert(key, ("from-b".into(), Ts::new(tb, 0, "writer-b")));
    }
    write_all(a, &on_a).await;
    write_all(a, &both_a).await;
    write_all(b, &on_b).await;
    write_all(b, &both_b).await;

    let healed = Instant::now();
    cut.heal();
    let want = expected(&[&before, &on_a, &on_b, &both_a, &both_b]);
    let took = wait_converged(&all, &want, healed, "after the split healed").await;

    assert_quiet(&all);
    for m in [b, c] {
        assert_eq!(
            count_lines(m, "cluster rejoined as a new generation"),
            0,
            "{}: was never cut off from the majority, yet changed generation: {:#?}",
            m.id,
            membership_lines(m)
        );
    }
    assert!(
        count_lines(a, "cluster rejoined as a new generation") <= 1,
        "node-a rejoined more than once"
    );
    // The heal is said: a line on each side and the counter.
    for m in all.iter() {
        let healed = wait_for(
            &format!("{}: topgun_cluster_heals_total >= 1", m.id),
            Duration::from_secs(5),
            || {
                let n = m
                    .node
                    .scrape()
                    .value_or_zero("topgun_cluster_heals_total", &[]);
                if n >= 1.0 {
                    Ok(n)
                } else {
                    Err(format!("{n}"))
                }
            },
        )
        .0;
        assert!(healed <= 2.0, "{}: one heal counted {healed} times", m.id);
        assert!(count_lines(m, "cluster split healed") >= 1, "{}", m.id);
    }
    for (m, since) in all.iter().zip(catch_ups) {
        assert_catch_ups_bounded(m, since, 2);
    }
    // The end of every fault test: every acknowledged write, from every node.
    for m in all {
        assert_eq!(diff(&want, &read_map(m, MAP).await), None, "{}", m.id);
    }
    took
}

// ---- a paused node --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resumed_after_sigstop_catches_up_once() {
    if !firewall::available() {
        return;
    }
    let [a, b, c] = three_apart(3, &[]);
    let all = [&a, &b, &c];
    let before = fresh("before", 100, "t");
    write_all(&b, &before).await;

    a.node.signal("STOP");
    let took = wait_for(
        "B and C declare the paused A down",
        Duration::from_secs(10),
        || {
            let seen: Vec<Status> = [&b, &c].iter().map(|m| status(m)).collect();
            if seen.iter().all(|s| s.members == Some(2.0)) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .1;
    eprintln!("pause detected after {took:?}");
    let catch_ups = catch_up_counts(&all);
    let on_b = fresh("paused-b", 200, "writer-b");
    let on_c = fresh("paused-c", 200, "writer-c");
    write_all(&b, &on_b).await;
    write_all(&c, &on_c).await;

    let resumed = Instant::now();
    a.node.signal("CONT");
    let want = expected(&[&before, &on_b, &on_c]);
    let took = wait_converged(&all, &want, resumed, "after SIGCONT").await;
    eprintln!("resume converged in {} ms", took.as_millis());

    assert_quiet(&all);
    for m in [&b, &c] {
        assert_eq!(
            count_lines(m, "cluster rejoined as a new generation"),
            0,
            "{}: was never paused, yet changed generation: {:#?}",
            m.id,
            membership_lines(m)
        );
    }
    for (m, since) in all.iter().zip(catch_ups) {
        assert_catch_ups_bounded(m, since, 2);
    }
    for m in all {
        assert_eq!(diff(&want, &read_map(m, MAP).await), None, "{}", m.id);
    }
}

// ---- a link cut while membership sees the member alive --------------------------------------

/// Sends every key as its own OP_BATCH without waiting, then collects the answers for up to
/// `within`: the keys whose OP_ACK came back (some writes cannot be confirmed while a link is
/// cut; they get ERROR or no answer, and are not recorded).
async fn write_pipelined(
    m: &Member,
    keys: &BTreeMap<String, (Value, Ts)>,
    within: Duration,
) -> BTreeMap<String, (Value, Ts)> {
    let mut c = connect(m).await;
    let mut by_id = BTreeMap::new();
    for (i, (k, (v, t))) in keys.iter().enumerate() {
        let id = format!("{}-p-{i}", m.id);
        c.send(&op_batch(vec![put_op(&id, MAP, k, v.clone(), t)]))
            .await;
        by_id.insert(id, k.clone());
    }
    let mut acked = BTreeMap::new();
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + within;
    while acked.len() + refused < keys.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = c.recv_within(left).await else {
            break;
        };
        match msg_type(&v) {
            "OP_ACK" => {
                if let Some(k) = pstr(&v, "lastId").and_then(|id| by_id.get(id)) {
                    acked.insert(k.clone(), keys[k].clone());
                }
            }
            "ERROR" => refused += 1,
            _ => {}
        }
    }
    eprintln!(
        "{}: {} of {} pipelined writes acked, {refused} refused",
        m.id,
        acked.len(),
        keys.len()
    );
    acked
}

fn ready_body(m: &Member) -> (u16, serde_json::Value) {
    let (status, body) = m.node.get("/ready");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{}: /ready body is not JSON ({e}): {body}", m.id));
    (status, json)
}

/// The node ids `/ready` lists as missing links.
fn missing_in_ready(m: &Member) -> (u16, String, Vec<String>) {
    let (status, body) = ready_body(m);
    let missing = body["missingLinks"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x["nodeId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (
        status,
        body["status"].as_str().unwrap_or("").to_owned(),
        missing,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_while_the_member_is_alive_is_loud_and_heals() {
    if !firewall::available() {
        return;
    }
    let [a, b, c] = three_apart(6, &[]);
    let all = [&a, &b, &c];
    let before = fresh("before", 50, "t");
    write_all(&c, &before).await;

    // Membership (UDP) still sees everyone; the TCP links between A and B die (keepalive) and
    // cannot be redialled.
    let cut = Cut::tcp_between(&[host(&a)], &[host(&b)]);
    let took = wait_for(
        "A and B report each other as a missing link",
        Duration::from_secs(20),
        || {
            let seen: Vec<_> = [(&a, "node-b"), (&b, "node-a")]
                .iter()
                .map(|(m, other)| {
                    let (status, state, missing) = missing_in_ready(m);
                    let members = status_of(m);
                    let ok = status == 200
                        && state == "degraded"
                        && missing == [other.to_string()]
                        && members == (Some(3.0), Some(1.0));
                    (m.id.clone(), ok, status, state, missing, members)
                })
                .collect();
            if seen.iter().all(|s| s.1) {
                Ok(())
            } else {
                Err(format!(
                    "(node, ok, /ready status, state, missing, (members, links)): {seen:?}"
                ))
            }
        },
    )
    .1;
    eprintln!("missing links reported after {took:?}");
    let (status, state, missing) = missing_in_ready(&c);
    assert_eq!(
        (status, state.as_str(), missing.len()),
        (200, "ready", 0),
        "node-c has both its links"
    );
    for (m, other) in [(&a, "node-b"), (&b, "node-a")] {
        let line = wait_line(
            m,
            "peer link missing while the member is alive",
            "its peer",
            |l| l["peer"] == other,
        );
        assert_eq!(line["level"], 40, "{}: a warning: {line}", m.id);
        assert!(line["err"].is_object(), "{}: carries err: {line}", m.id);
        assert!(
            peer_errors(m, "connect") > 0.0,
            "{}: failed dials are counted",
            m.id
        );
    }

    // Writes meanwhile: those whose owner and backup are A and B cannot be confirmed; the
    // others are, and A's or B's copies for the other one of the pair are lost on the way.
    let on_a = write_pipelined(&a, &fresh("cut-a", 60, "writer-a"), Duration::from_secs(12)).await;
    let on_c = write_pipelined(&c, &fresh("cut-c", 60, "writer-c"), Duration::from_secs(12)).await;
    assert!(
        !on_a.is_empty() && !on_c.is_empty(),
        "some writes are acknowledged while the A-B link is cut"
    );

    let healed = Instant::now();
    let warnings: Vec<usize> = [&a, &b]
        .iter()
        .map(|m| count_lines(m, "peer link missing while the member is alive"))
        .collect();
    cut.heal();
    let want = expected(&[&before, &on_a, &on_c]);
    let took = wait_converged(&all, &want, healed, "after the TCP cut healed").await;
    eprintln!("link cut converged in {} ms", took.as_millis());
    for m in all {
        let (status, state, missing) = missing_in_ready(m);
        assert_eq!(
            (status, state.as_str(), missing),
            (200, "ready", Vec::<String>::new()),
            "{}: /ready after the links are back",
            m.id
        );
    }
    for (m, other) in [(&a, "node-b"), (&b, "node-a")] {
        wait_line(m, "peer link restored", "its peer", |l| l["peer"] == other);
    }
    // The warning is rate-limited: the cut lasted far less than its interval.
    for (m, n) in [&a, &b].iter().zip(warnings) {
        assert_eq!(
            n, 1,
            "{}: one missing-link warning per peer per minute",
            m.id
        );
    }
    assert_quiet(&all);
    for m in all {
        assert_eq!(diff(&want, &read_map(m, MAP).await), None, "{}", m.id);
    }
}

/// (members, links) of one node.
fn status_of(m: &Member) -> (Option<f64>, Option<f64>) {
    (status(m).members, links(m))
}

// ---- a split with several nodes on each side ------------------------------------------------

/// Three against two: both sides keep serving, and after the heal everything written on either
/// side is everywhere. The minority nodes rejoin once each; the majority keeps its generation
/// even though a minority node that has not rejoined yet tells one that has that the majority
/// is down (a fresh view does not believe down claims for a few probe periods).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_three_two_split_converges() {
    if !firewall::available() {
        return;
    }
    let nodes = apart::<5>(9, &[]);
    let all: Vec<&Member> = nodes.iter().collect();
    let (minority, majority) = all.split_at(2);
    let cut = Cut::between(
        &minority.iter().map(|m| host(m)).collect::<Vec<_>>(),
        &majority.iter().map(|m| host(m)).collect::<Vec<_>>(),
    );
    wait_for(
        "2 and 3 members on the two sides",
        Duration::from_secs(15),
        || {
            let seen: Vec<Status> = all.iter().map(|m| status(m)).collect();
            let ok = seen[..2].iter().all(|s| s.members == Some(2.0))
                && seen[2..].iter().all(|s| s.members == Some(3.0));
            if ok {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    );
    let on_minority = fresh("minority", 100, "writer-a");
    let on_majority = fresh("majority", 100, "writer-c");
    write_all(minority[0], &on_minority).await;
    write_all(majority[0], &on_majority).await;
    let healed = Instant::now();
    cut.heal();
    let want = expected(&[&on_minority, &on_majority]);
    let took = wait_converged(&all, &want, healed, "after the 3-2 split healed").await;
    eprintln!("3-2 heal converged in {} ms", took.as_millis());
    let rejoins: Vec<(String, usize)> = all
        .iter()
        .map(|m| {
            let n = count_lines(m, "cluster rejoined as a new generation");
            (m.id.clone(), n)
        })
        .collect();
    eprintln!("rejoins per node (a, b were the minority): {rejoins:?}");
    for (m, (_, n)) in all.iter().zip(&rejoins) {
        let most = if minority.iter().any(|x| x.id == m.id) {
            1
        } else {
            0
        };
        assert!(
            *n <= most,
            "{}: {n} rejoins (a minority node rejoins once, the majority keeps its generation): \
             {:#?}",
            m.id,
            membership_lines(m)
        );
    }
    assert_quiet(&all);
    for m in &all {
        assert_eq!(diff(&want, &read_map(m, MAP).await), None, "{}", m.id);
    }
}
