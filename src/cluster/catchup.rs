//! When to catch up from a peer: plain data, no actix, so the schedule is unit-tested.
//!
//! A peer sends this node every write over its own link to this node. While that link was
//! missing (the peer did not have this node in its table yet, the network was split, this
//! node was paused, the connection broke), the peer's writes did not arrive, and nothing
//! resends them. So each time a peer (re)connects to this node (its HELLO on an inbound
//! connection), this node pulls from it what it holds, and the CRDT merge keeps what is newer.
//!
//! Rules, so that a rejoin costs one catch-up and a flapping link never a loop:
//! - connections that come up together (both directions after a rejoin, within [`SETTLE`])
//!   share one catch-up;
//! - a connection while a catch-up runs asks for one more after it, never a parallel one;
//! - two catch-ups from one peer start at least [`MIN_GAP`] apart;
//! - a failed catch-up is retried with a doubling backoff up to [`MAX_BACKOFF`];
//! - a peer that is not a member (yet) is parked until the partition table lists it;
//! - a catch-up skips the partitions a pull asked of that peer at least [`SETTLE`] after it
//!   connected ([`PullLog`]): that pull's export holds what a catch-up at that time would
//!   (the peer dials this node once its table has it, and writes it routed by its older table
//!   just before land within that margin), so a node that just joined does not receive its
//!   data a second time.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub const SETTLE: Duration = Duration::from_millis(200);
pub const MIN_GAP: Duration = Duration::from_secs(1);
pub const FIRST_BACKOFF: Duration = Duration::from_millis(300);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Peers tracked at most: a node id only enters by a completed HELLO, but a client of the
/// cluster port could send many; the idle and parked ones are forgotten first.
const MAX_PEERS: usize = 1024;

#[derive(Debug, Default)]
struct Peer {
    /// A connection came since the last catch-up started.
    wanted: bool,
    running: bool,
    scheduled: bool,
    last_start: Option<Instant>,
    failures: u32,
}

#[derive(Debug, Default)]
pub struct CatchUps {
    peers: HashMap<String, Peer>,
}

impl CatchUps {
    /// `peer` connected to this node. `Some(at)`: schedule [`CatchUps::begin`] at `at`; `None`:
    /// one is scheduled or running already and will cover this connection.
    pub fn request(&mut self, peer: &str, now: Instant) -> Option<Instant> {
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_PEERS {
            // Parked ones go too: node ids a client of the cluster port made up stay parked
            // for ever (they never become members).
            self.peers.retain(|_, p| p.running || p.scheduled);
        }
        let p = self.peers.entry(peer.to_owned()).or_default();
        p.wanted = true;
        schedule(p, now, SETTLE)
    }

    /// The peer became a member: a parked catch-up may be scheduled now.
    pub fn member_now(&mut self, peer: &str, now: Instant) -> Option<Instant> {
        let p = self.peers.get_mut(peer)?;
        if p.wanted {
            schedule(p, now, SETTLE)
        } else {
            None
        }
    }

    /// The scheduled time came. `true`: start the pull now. With `is_member` false the
    /// catch-up is parked (kept wanted) until [`CatchUps::member_now`].
    pub fn begin(&mut self, peer: &str, is_member: bool, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        p.scheduled = false;
        if p.running || !p.wanted || !is_member {
            return false;
        }
        p.wanted = false;
        p.running = true;
        p.last_start = Some(now);
        true
    }

    /// The pull ended. `Some(at)`: schedule the next one (a connection came meanwhile, or a
    /// retry after a failure).
    pub fn ended(&mut self, peer: &str, ok: bool, now: Instant) -> Option<Instant> {
        let p = self.peers.get_mut(peer)?;
        p.running = false;
        let delay = if ok {
            p.failures = 0;
            SETTLE
        } else {
            p.failures += 1;
            p.wanted = true;
            backoff(p.failures)
        };
        if p.wanted {
            schedule(p, now, delay)
        } else {
            None
        }
    }

    /// No catch-up runs or waits for its time.
    pub fn idle(&self) -> bool {
        self.peers.values().all(|p| !p.running && !p.scheduled)
    }

    /// Failures in a row of the catch-ups from `peer`.
    pub fn failures(&self, peer: &str) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.failures)
    }
}

fn schedule(p: &mut Peer, now: Instant, delay: Duration) -> Option<Instant> {
    if p.running || p.scheduled {
        return None;
    }
    let mut at = now + delay;
    if let Some(last) = p.last_start {
        at = at.max(last + MIN_GAP);
    }
    p.scheduled = true;
    Some(at)
}

/// When each peer last connected to this node (its HELLO) and when a pull last asked it for
/// each partition.
#[derive(Debug, Default)]
pub struct PullLog {
    peers: HashMap<String, PeerPulls>,
}

#[derive(Debug, Default)]
struct PeerPulls {
    connected: Option<Instant>,
    /// By partition id: when a pull asked for it.
    asked: HashMap<u16, Instant>,
    /// Partitions of a pull that will ask for them once the peer connected and [`SETTLE`]
    /// passed (`ClusterState::wait_connected`).
    planned: HashSet<u16>,
}

impl PullLog {
    /// `peer`'s connection to this node was accepted at `at`.
    pub fn connected(&mut self, peer: &str, at: Instant) {
        self.entry(peer).connected = Some(at);
    }

    pub fn connected_at(&self, peer: &str) -> Option<Instant> {
        self.peers.get(peer).and_then(|p| p.connected)
    }

    /// A pull will ask `peer` for `partitions` (at least [`SETTLE`] after it connected).
    pub fn planned(&mut self, peer: &str, partitions: &[u16]) {
        self.entry(peer).planned.extend(partitions.iter().copied());
    }

    /// A pull asked `peer` for `partitions` at `at`.
    pub fn asked(&mut self, peer: &str, partitions: &[u16], at: Instant) {
        let p = self.entry(peer);
        for &partition in partitions {
            p.planned.remove(&partition);
            p.asked.insert(partition, at);
        }
    }

    /// A pull of `partitions` from `peer` did not complete them: they are not covered.
    pub fn forget(&mut self, peer: &str, partitions: &[u16]) {
        if let Some(p) = self.peers.get_mut(peer) {
            for partition in partitions {
                p.asked.remove(partition);
                p.planned.remove(partition);
            }
        }
    }

    /// Of `partitions`, the ones no pull asked or will ask `peer` for at least [`SETTLE`]
    /// after its latest connection.
    pub fn not_covered(&self, peer: &str, partitions: &[u16]) -> Vec<u16> {
        let Some(p) = self.peers.get(peer) else {
            return partitions.to_vec();
        };
        let Some(connected) = p.connected else {
            return partitions.to_vec();
        };
        partitions
            .iter()
            .copied()
            .filter(|q| {
                !p.planned.contains(q) && p.asked.get(q).is_none_or(|at| *at < connected + SETTLE)
            })
            .collect()
    }

    fn entry(&mut self, peer: &str) -> &mut PeerPulls {
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_PEERS {
            // Made-up node ids of a client of the cluster port: the ones never pulled from go.
            self.peers
                .retain(|_, p| !p.asked.is_empty() || !p.planned.is_empty());
        }
        self.peers.entry(peer.to_owned()).or_default()
    }
}

/// 300 ms, 600 ms, 1.2 s, ... up to [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_skips_what_a_pull_asked_of_the_peer_since_it_connected() {
        let mut log = PullLog::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(log.not_covered("b", &[1, 2, 3]), vec![1, 2, 3]);
        // Asked before b ever connected: nothing covered.
        log.asked("b", &[1], ms(0));
        log.connected("b", ms(10));
        assert_eq!(log.not_covered("b", &[1, 2, 3]), vec![1, 2, 3]);
        // Asked right after it connected: writes it routed by its older table may still land.
        log.asked("b", &[1, 2], ms(20));
        assert_eq!(log.not_covered("b", &[1, 2, 3]), vec![1, 2, 3]);
        let settled = |n: u64| ms(10) + SETTLE + Duration::from_millis(n);
        log.asked("b", &[1, 2], settled(0));
        assert_eq!(log.not_covered("b", &[1, 2, 3]), vec![3]);
        // Another peer's pulls cover nothing of b's.
        assert_eq!(log.not_covered("c", &[1, 2]), vec![1, 2]);
        // b reconnected after the pull: what it applied meanwhile may be missing again.
        log.connected("b", settled(10));
        assert_eq!(log.not_covered("b", &[1, 2, 3]), vec![1, 2, 3]);
        log.asked("b", &[1, 2, 3], settled(10) + SETTLE);
        log.forget("b", &[2]);
        assert_eq!(log.not_covered("b", &[1, 2, 3]), vec![2]);
    }

    #[test]
    fn a_pull_about_to_ask_covers_the_catch_up_until_it_fails() {
        let mut log = PullLog::default();
        let t0 = Instant::now();
        log.planned("b", &[4, 5]);
        log.connected("b", t0);
        assert_eq!(log.not_covered("b", &[4, 5, 6]), vec![6]);
        log.asked("b", &[4, 5], t0 + SETTLE);
        assert_eq!(log.not_covered("b", &[4, 5, 6]), vec![6]);
        // Partition 5 was not completed: a catch-up must bring it.
        log.forget("b", &[5]);
        assert_eq!(log.not_covered("b", &[4, 5, 6]), vec![5, 6]);
        log.planned("b", &[7]);
        log.forget("b", &[7]);
        assert_eq!(log.not_covered("b", &[7]), vec![7]);
    }

    #[test]
    fn connections_that_come_together_share_one_catch_up() {
        let mut c = CatchUps::default();
        let t0 = Instant::now();
        let at = c.request("b", t0).expect("first connection schedules");
        assert_eq!(at, t0 + SETTLE);
        // The other direction, 50 ms later: covered by the scheduled one.
        assert_eq!(c.request("b", t0 + Duration::from_millis(50)), None);
        assert!(c.begin("b", true, at));
        assert_eq!(c.ended("b", true, at + Duration::from_millis(400)), None);
    }

    #[test]
    fn a_connection_during_a_catch_up_asks_for_exactly_one_more_after_a_gap() {
        let mut c = CatchUps::default();
        let t0 = Instant::now();
        let at = c.request("b", t0).unwrap();
        assert!(c.begin("b", true, at));
        // Two reconnects while it runs: no parallel pull.
        assert_eq!(c.request("b", at + Duration::from_millis(10)), None);
        assert_eq!(c.request("b", at + Duration::from_millis(20)), None);
        let next = c
            .ended("b", true, at + Duration::from_millis(100))
            .expect("one more");
        assert_eq!(next, at + MIN_GAP, "not before the minimum gap");
        assert!(c.begin("b", true, next));
        assert_eq!(c.ended("b", true, next + Duration::from_millis(10)), None);
    }

    #[test]
    fn a_failed_catch_up_is_retried_with_backoff_until_it_succeeds() {
        let mut c = CatchUps::default();
        let mut now = Instant::now();
        let mut at = c.request("b", now).unwrap();
        let mut delays = Vec::new();
        for _ in 0..6 {
            assert!(c.begin("b", true, at));
            now = at + Duration::from_millis(1);
            let next = c.ended("b", false, now).expect("retried");
            delays.push(next.duration_since(now));
            at = next;
        }
        assert_eq!(c.failures("b"), 6);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF), "{delays:?}");
        assert!(c.begin("b", true, at));
        assert_eq!(c.ended("b", true, at), None);
        assert_eq!(c.failures("b"), 0);
    }

    #[test]
    fn a_peer_that_is_not_a_member_yet_is_parked_until_it_is() {
        let mut c = CatchUps::default();
        let t0 = Instant::now();
        let at = c.request("d", t0).unwrap();
        assert!(!c.begin("d", false, at), "not a member: parked");
        let at = c.member_now("d", at).expect("scheduled once a member");
        assert!(c.begin("d", true, at));
        assert_eq!(c.member_now("d", at), None, "running: nothing more");
    }

    #[test]
    fn made_up_peers_cannot_grow_the_table_without_bound() {
        let mut c = CatchUps::default();
        let t0 = Instant::now();
        for i in 0..(3 * MAX_PEERS) {
            let id = format!("fake-{i}");
            let at = c.request(&id, t0).unwrap();
            assert!(!c.begin(&id, false, at), "never a member: parked");
        }
        assert!(c.peers.len() <= MAX_PEERS, "{} tracked", c.peers.len());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
