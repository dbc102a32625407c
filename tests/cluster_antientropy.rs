//! Anti-entropy repairs replicas that diverged without any membership change or reconnection.
//!
//! The divergence is one a real grid makes: an offline client's write reaches the owner after
//! a delete of the same key that is newer, and the owner has already swept the tombstone (here
//! it keeps tombstones 1 s, its backup the default 7 days: two nodes configured apart). The
//! owner takes the old write as new and stores it live; its backup still has the newer
//! tombstone and keeps it. Both acknowledged, both links up, nothing to catch up: only
//! comparing the partitions finds it, and the merge both ways makes the delete win on both.
mod common;

use std::time::Duration;

use common::cluster::*;
use common::proto::*;
use common::*;
use rmpv::Value;

const MAP: &str = "zombies";

fn counter(m: &Member, name: &str) -> f64 {
    m.node.scrape().value_or_zero(name, &[])
}

fn tombstones(m: &Member) -> f64 {
    m.node
        .scrape()
        .value_or_zero("topgun_map_tombstones", &[("map", MAP)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_resurrected_on_one_holder_is_found_and_deleted_on_both() {
    let every = ["--anti-entropy-interval-ms", "500"];
    let a = start(
        "node-a",
        None,
        0,
        &[
            &every[..],
            &[
                "--tombstone-max-age-secs",
                "1",
                "--sweep-interval-ms",
                "200",
            ],
        ]
        .concat(),
    );
    let b = start("node-b", Some(a.cluster_port), 0, &every);
    wait_settled(&[&a, &b], Duration::from_secs(15));
    let version = |m: &Member| counter(m, "topgun_partition_table_version");
    let versions = (version(&a), version(&b));

    let keys = keys_owned_by(&a, 5).await;
    let mut c = connect(&a).await;
    let base = now_millis() - 60_000;
    for (i, key) in keys.iter().enumerate() {
        let put = put_op(
            &format!("put-{i}"),
            MAP,
            key,
            Value::from(1),
            &Ts::new(base + 1, 0, "c"),
        );
        write_acked(&mut c, "node-a", &client_op(put), &format!("put-{i}")).await;
        let del = remove_op(&format!("del-{i}"), MAP, key, &Ts::new(base + 3, 0, "c"));
        write_acked(&mut c, "node-a", &client_op(del), &format!("del-{i}")).await;
    }
    wait_for(
        "node-a swept its tombstones, node-b kept them",
        Duration::from_secs(10),
        || {
            let (ta, tb) = (tombstones(&a), tombstones(&b));
            if ta == 0.0 && tb == keys.len() as f64 {
                Ok(())
            } else {
                Err(format!("node-a {ta}, node-b {tb}"))
            }
        },
    );
    let repaired_before = counter(&a, "topgun_antientropy_repaired_total");
    let catch_ups = |m: &Member| {
        m.node
            .scrape()
            .value_or_zero("topgun_cluster_catch_ups_total", &[("outcome", "ok")])
    };
    let catch_ups_before = (catch_ups(&a), catch_ups(&b));
    // The offline client's writes from between the put and the delete arrive now.
    for (i, key) in keys.iter().enumerate() {
        let zombie = put_op(
            &format!("late-{i}"),
            MAP,
            key,
            Value::from("zombie"),
            &Ts::new(base + 2, 0, "offline"),
        );
        write_acked(&mut c, "node-a", &client_op(zombie), &format!("late-{i}")).await;
    }
    // Found and repaired: the newer delete wins on both holders.
    let took = wait_for(
        "both holders agree the keys are deleted",
        Duration::from_secs(15),
        || {
            let (ha, hb) = (held(&a, MAP), held(&b, MAP));
            let repaired = counter(&a, "topgun_antientropy_repaired_total") - repaired_before;
            if ha == 0.0 && hb == 0.0 && repaired >= 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "live on node-a {ha}, on node-b {hb}, repaired {repaired}"
                ))
            }
        },
    )
    .1;
    eprintln!("repaired {took:?} after the late writes");
    assert!(read_map(&a, MAP).await.is_empty(), "no zombie read back");
    let lines = lines_with(&a, "anti-entropy repair");
    assert!(
        lines
            .iter()
            .any(|l| l["peer"] == "node-b" && l["partition"].is_u64()),
        "{lines:#?}"
    );
    assert!(
        !lines_with(&b, "anti-entropy repair").is_empty(),
        "node-b merged node-a's copy"
    );
    // No membership change and no reconnection did it.
    assert_eq!(
        (version(&a), version(&b)),
        versions,
        "partition table versions"
    );
    assert_eq!(
        (catch_ups(&a), catch_ups(&b)),
        catch_ups_before,
        "no catch-up (no reconnection)"
    );
    // Converged: later rounds compare and find nothing to repair.
    let repaired = counter(&a, "topgun_antientropy_repaired_total");
    let rounds = counter(&a, "topgun_antientropy_rounds_total");
    wait_for(
        "three more anti-entropy rounds on node-a",
        Duration::from_secs(15),
        || match counter(&a, "topgun_antientropy_rounds_total") {
            n if n >= rounds + 3.0 => Ok(()),
            n => Err(format!("{} rounds since", n - rounds)),
        },
    );
    assert_eq!(
        counter(&a, "topgun_antientropy_repaired_total"),
        repaired,
        "a repair loop"
    );
}
