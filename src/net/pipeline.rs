//! In-order replies with pipelined requests. Each request a connection starts gets a sequence
//! number; answers may complete in any order (different shards), but leave in request order,
//! so an `OP_ACK` never overtakes the ack of an earlier batch (the client treats `lastId` as
//! "everything up to here is stored").
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Pipeline<T> {
    next_seq: u64,
    next_out: u64,
    done: BTreeMap<u64, T>,
}

impl<T> Default for Pipeline<T> {
    fn default() -> Self {
        Pipeline {
            next_seq: 0,
            next_out: 0,
            done: BTreeMap::new(),
        }
    }
}

impl<T> Pipeline<T> {
    /// A new request's sequence number.
    pub fn open(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Records a completion; returns every completion now due, in request order.
    pub fn complete(&mut self, seq: u64, value: T) -> Vec<T> {
        self.done.insert(seq, value);
        let mut due = Vec::new();
        while let Some(v) = self.done.remove(&self.next_out) {
            due.push(v);
            self.next_out += 1;
        }
        due
    }

    /// Requests opened and not yet released.
    pub fn in_flight(&self) -> u64 {
        self.next_seq - self.next_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_request_order() {
        let mut p = Pipeline::default();
        let a = p.open();
        let b = p.open();
        let c = p.open();
        assert!(p.complete(c, "c").is_empty());
        assert!(p.complete(b, "b").is_empty());
        assert_eq!(p.in_flight(), 3);
        assert_eq!(p.complete(a, "a"), vec!["a", "b", "c"]);
        assert_eq!(p.in_flight(), 0);
    }
}
