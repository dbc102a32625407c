//! Which of a client's write ops the node takes in, before they are routed: none that add data
//! while the memory budget is exceeded (deletes still go through: they are how an operator
//! makes room), and none that name a new map once the node holds `--max-maps` of them. The
//! WebSocket and `/sync` paths both ask here, so a refusal reads the same on either.
//!
//! Peers' writes are not asked about: the node a client wrote to decided already, and a
//! replica refused would leave copies that differ.
use crate::protocol::{ClientOp, OpRejected};

use super::budget::MemoryBudget;
use super::ops::op_label;
use crate::shard::catalog::MapCatalog;

/// `OP_REJECTED.code` and `ERROR.code` of a write refused for the memory budget.
pub const MEMORY_REFUSAL_CODE: u32 = 507;
/// ... and of one that names a map past `--max-maps`.
pub const MAPS_REFUSAL_CODE: u32 = 429;

/// A client's batch after the intake.
#[derive(Debug, Default)]
pub struct Admission {
    /// What goes on to be applied, in the client's order.
    pub ops: Vec<ClientOp>,
    pub refused: Vec<OpRejected>,
    /// Refused ops per limit (`memory`, `maps`), for `topgun_limits_exceeded_total`.
    pub refused_for_memory: u64,
    pub refused_for_maps: u64,
    /// The `ERROR` a refusing batch also answers (the TS client only logs `OP_REJECTED`
    /// per op; this says why once): (code, message).
    pub error: Option<(u32, String)>,
}

pub fn admit(budget: &MemoryBudget, maps: &MapCatalog, ops: Vec<ClientOp>) -> Admission {
    let over_budget = budget.exceeded();
    let maps_full = maps.len() >= maps.max();
    if !over_budget && !maps_full {
        return Admission {
            ops,
            ..Admission::default()
        };
    }
    let mut admission = Admission::default();
    let memory_reason = || {
        format!(
            "memory budget exhausted: this node holds {} bytes, its budget is {} \
             (--max-memory); writes that add data are refused until it is under {}%, \
             deletes still work",
            budget.used(),
            budget.limit(),
            super::budget::RESUME_PERCENT
        )
    };
    let maps_reason = || {
        format!(
            "this node holds {} maps, the most it may (--max-maps): write to a map it has",
            maps.max()
        )
    };
    for op in ops {
        let adds_data = op_label(&op) != "DELETE";
        let refusal = if over_budget && adds_data {
            admission.refused_for_memory += 1;
            Some((MEMORY_REFUSAL_CODE, memory_reason()))
        } else if maps_full && !maps.admits(&op.map_name) {
            admission.refused_for_maps += 1;
            Some((MAPS_REFUSAL_CODE, maps_reason()))
        } else {
            None
        };
        match refusal {
            Some((code, reason)) => {
                admission.refused.push(OpRejected {
                    op_id: op.id.unwrap_or_else(|| "unknown".into()),
                    reason: reason.clone(),
                    code: Some(code),
                });
                admission.error.get_or_insert((code, reason));
            }
            None => admission.ops.push(op),
        }
    }
    admission
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{LwwRecord, Timestamp};

    fn op(id: &str, map: &str, value: Option<i64>) -> ClientOp {
        ClientOp {
            id: Some(id.into()),
            map_name: map.into(),
            key: "k".into(),
            op_type: Some(if value.is_some() { "PUT" } else { "REMOVE" }.into()),
            record: Some(Some(LwwRecord {
                value: value.map_or(rmpv::Value::Nil, rmpv::Value::from),
                timestamp: Timestamp {
                    millis: 1,
                    counter: 0,
                    node_id: "c".into(),
                },
                ttl_ms: None,
            })),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        }
    }

    fn ids(ops: &[ClientOp]) -> Vec<&str> {
        ops.iter().filter_map(|o| o.id.as_deref()).collect()
    }

    #[test]
    fn under_every_limit_everything_passes() {
        let a = admit(
            &MemoryBudget::new(100),
            &MapCatalog::new(10),
            vec![op("1", "m", Some(1)), op("2", "n", None)],
        );
        assert_eq!(ids(&a.ops), ["1", "2"]);
        assert!(a.refused.is_empty() && a.error.is_none());
    }

    #[test]
    fn over_budget_only_deletes_pass() {
        let budget = MemoryBudget::new(100);
        budget.observe(100);
        let a = admit(
            &budget,
            &MapCatalog::new(10),
            vec![
                op("1", "m", Some(1)),
                op("2", "m", None),
                op("3", "m", Some(3)),
            ],
        );
        assert_eq!(ids(&a.ops), ["2"]);
        let refused: Vec<_> = a.refused.iter().map(|r| r.op_id.as_str()).collect();
        assert_eq!(refused, ["1", "3"]);
        assert!(a
            .refused
            .iter()
            .all(|r| r.code == Some(MEMORY_REFUSAL_CODE)));
        assert_eq!(a.refused_for_memory, 2);
        let (code, message) = a.error.expect("an ERROR says why");
        assert_eq!(code, MEMORY_REFUSAL_CODE);
        assert!(message.contains("--max-memory"), "{message}");
    }

    #[test]
    fn a_full_catalog_refuses_new_maps_only() {
        let maps = MapCatalog::new(1);
        maps.register(["m"]);
        let a = admit(
            &MemoryBudget::new(0),
            &maps,
            vec![
                op("1", "m", Some(1)),
                op("2", "new", Some(2)),
                op("3", "new", None),
            ],
        );
        assert_eq!(ids(&a.ops), ["1"]);
        assert_eq!(a.refused_for_maps, 2);
        assert!(a.refused.iter().all(|r| r.code == Some(MAPS_REFUSAL_CODE)));
    }
}
