//! The cluster secret with real node processes: nodes that share it form one grid (membership
//! over sealed datagrams, writes and reads over authenticated links), a node with another
//! secret or none stays out and says why, and a rotation (new secret plus the previous one)
//! keeps every pair of nodes talking.
mod common;

use std::time::Duration;

use common::cluster::*;

const SECRET: &str = "the grid's shared secret";
const OTHER: &str = "some other grid's secret";
const NEXT: &str = "the grid's next secret!!";

fn counter(m: &Member, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.node.scrape().value_or_zero(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_that_share_the_secret_join_and_the_others_say_why() {
    let a = start("node-a", None, 0, &["--cluster-secret", SECRET]);
    let b = start(
        "node-b",
        Some(a.cluster_port),
        0,
        &["--cluster-secret", SECRET],
    );
    wait_settled(&[&a, &b], Duration::from_secs(10));
    // Keys of every partition: forwards to the owner and gathered reads use the links.
    let want = write_keys(&a, "m", "k", 40).await;
    wait_keys(&b, "m", &want, Duration::from_secs(10)).await;

    let quick = ["--cluster-join-timeout-ms", "1000"];
    let c = start(
        "node-c",
        Some(a.cluster_port),
        0,
        &[&["--cluster-secret", OTHER][..], &quick[..]].concat(),
    );
    let d = start("node-d", Some(a.cluster_port), 0, &quick);
    // The node with another secret learns it from the seed's handshake, in one error line.
    let line = wait_line(
        &c,
        "the seed does not share this node's cluster secret: this node cannot join",
        "err.type auth at level error (50)",
        |l| l["err"]["type"] == "auth" && l["level"] == 50,
    );
    eprintln!("node-c: {line}");
    assert!(
        counter(
            &c,
            "topgun_cluster_peer_errors_total",
            &[("reason", "auth")]
        ) >= 1.0
    );
    // The seed refuses both newcomers' datagrams before decoding them, and says so.
    wait_for(
        "node-a counts the refused datagrams",
        Duration::from_secs(10),
        || {
            let n = counter(&a, "topgun_cluster_invalid_datagrams_total", &[]);
            if n >= 2.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    );
    let refused = lines_with(
        &a,
        "cluster datagram refused: the sender does not share this node's cluster secret",
    );
    assert!(!refused.is_empty());
    // Well past their join timeout the grid is still the two that share the secret.
    holds(
        "the grid stays the two that share the secret",
        Duration::from_secs(2),
        || {
            let seen: Vec<f64> = [&a, &b, &c, &d]
                .iter()
                .map(|m| counter(m, "topgun_cluster_members", &[]))
                .collect();
            if seen == [2.0, 2.0, 1.0, 1.0] {
                Ok(())
            } else {
                Err(format!("members of a, b, c, d: {seen:?}"))
            }
        },
    );
    assert!(read_map(&c, "m").await.is_empty(), "node-c got no data");
    assert!(read_map(&d, "m").await.is_empty(), "node-d got no data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_nodes_with_the_old_secret_and_with_both_form_one_grid() {
    // Mid-rotation: node-a still has only the old secret, node-b and node-c were restarted
    // with the next one and the old one as previous.
    let rotated = [
        "--cluster-secret",
        NEXT,
        "--cluster-secret-previous",
        SECRET,
    ];
    let a = start("node-a", None, 0, &["--cluster-secret", SECRET]);
    let b = start("node-b", Some(a.cluster_port), 0, &rotated);
    let c = start("node-c", Some(a.cluster_port), 0, &rotated);
    wait_settled(&[&a, &b, &c], Duration::from_secs(15));
    let mut want = write_keys(&b, "m", "via-b", 30).await;
    want.extend(write_keys(&a, "m", "via-a", 30).await);
    for m in [&a, &b, &c] {
        wait_keys(m, "m", &want, Duration::from_secs(10)).await;
        assert_eq!(
            counter(m, "topgun_cluster_peer_errors_total", &[("reason", "auth")]),
            0.0,
            "{}: no refusal for the secret",
            m.id
        );
        assert_eq!(
            counter(m, "topgun_cluster_invalid_datagrams_total", &[]),
            0.0,
            "{}: no refused datagram",
            m.id
        );
    }
}
