//! Which outbound links the cluster actor keeps, as plain decisions over the partition table
//! and the links it has, so they are unit-tested; `actor.rs` dials, closes and logs.
//!
//! One link per other member of the table, to the generation the table lists (or a newer
//! one: the member rejoined and this node's table has not caught up yet). A member alive
//! without a link for [`LINK_GRACE`] is a fault this node reports.
use std::time::{Duration, Instant};

use super::table::{PartitionTable, TableMember};

/// How long a member may be alive without a link before that is a fault (logged, `/ready`):
/// a dial and its handshake take well under it, so a link missing longer will not come alone.
pub const LINK_GRACE: Duration = Duration::from_secs(3);

/// What a new table asks of the outbound links.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LinkChanges<'a> {
    /// Dials (links or attempts) to close: of members the table no longer lists, or to an
    /// older generation than the table's (the member restarted; the old process is gone).
    pub close: Vec<String>,
    /// Members to dial (by node id): listed, and no dial kept for them.
    pub dial: Vec<&'a TableMember>,
}

/// The changes `table` asks of the dials this node (`me`) has, given as (node id, the oldest
/// generation the dial accepts).
pub fn link_changes<'a, 'd>(
    table: &'a PartitionTable,
    me: &str,
    dialled: impl IntoIterator<Item = (&'d str, u64)>,
) -> LinkChanges<'a> {
    let mut kept: Vec<&str> = Vec::new();
    let mut close = Vec::new();
    for (id, generation) in dialled {
        match table.member(id) {
            Some(m) if id != me && m.generation <= generation => kept.push(id),
            _ => close.push(id.to_owned()),
        }
    }
    close.sort_unstable();
    let dial = table
        .members()
        .iter()
        .filter(|m| m.node_id != me && !kept.contains(&m.node_id.as_str()))
        .collect();
    LinkChanges { close, dial }
}

/// Since when a member counts as missing its link: its dial has had no link since
/// `down_since`, it is a member, and that lasted [`LINK_GRACE`] by `now`.
pub fn missing_since(
    down_since: Option<Instant>,
    is_member: bool,
    now: Instant,
) -> Option<Instant> {
    let since = down_since?;
    (is_member && now.duration_since(since) >= LINK_GRACE).then_some(since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn member(id: &str, generation: u64) -> TableMember {
        TableMember {
            node_id: id.to_owned(),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            generation,
            ws_url: String::new(),
        }
    }

    fn table(members: &[(&str, u64)]) -> PartitionTable {
        PartitionTable::compute(members.iter().map(|&(id, g)| member(id, g)).collect(), 1, 1)
    }

    fn ids(dial: &[&TableMember]) -> Vec<String> {
        dial.iter().map(|m| m.node_id.clone()).collect()
    }

    #[test]
    fn every_other_member_is_dialled_once() {
        let t = table(&[("a", 1), ("b", 1), ("c", 1)]);
        let fresh = link_changes(&t, "a", []);
        assert!(fresh.close.is_empty());
        assert_eq!(ids(&fresh.dial), ["b", "c"], "never a link to itself");
        let settled = link_changes(&t, "a", [("b", 1), ("c", 1)]);
        assert_eq!(settled, LinkChanges::default(), "nothing to do");
    }

    #[test]
    fn a_member_gone_from_the_table_loses_its_link() {
        let t = table(&[("a", 1), ("c", 1)]);
        let changes = link_changes(&t, "a", [("b", 1), ("c", 1)]);
        assert_eq!(changes.close, ["b"]);
        assert!(changes.dial.is_empty());
    }

    #[test]
    fn a_restarted_member_is_dialled_again_and_a_newer_link_is_kept() {
        // b restarted: the table lists generation 7, the dial accepts 1 and up (the old run).
        let t = table(&[("a", 1), ("b", 7), ("c", 3)]);
        // c's link answered with generation 4: c rejoined and this table has not caught up.
        let changes = link_changes(&t, "a", [("b", 1), ("c", 4)]);
        assert_eq!(changes.close, ["b"]);
        assert_eq!(ids(&changes.dial), ["b"]);
        assert_eq!(
            changes.dial[0].generation, 7,
            "dialled at the table's generation"
        );
    }

    #[test]
    fn a_missing_link_is_a_fault_only_for_a_member_past_the_grace() {
        let t0 = Instant::now();
        let later = |d: Duration| t0 + d;
        assert_eq!(
            missing_since(None, true, later(LINK_GRACE * 10)),
            None,
            "link up"
        );
        assert_eq!(missing_since(Some(t0), true, later(LINK_GRACE / 2)), None);
        assert_eq!(missing_since(Some(t0), true, later(LINK_GRACE)), Some(t0));
        assert_eq!(missing_since(Some(t0), false, later(LINK_GRACE * 10)), None);
    }
}
