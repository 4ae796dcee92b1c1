//! 64-bit Twitter-style order ids: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of node, and
//! 12 low bits split into an 8-bit sequence and a 4-bit shard *gene*.
//!
//! Written here rather than taken from a crate: the `snowflake` crate is not a Twitter-style id, and
//! none we found lets the low bits carry a gene. The gene is the item's Redis shard
//! ([`crate::keys::gene_of_item`]); it lets `GET /orders/{id}` find the order's record, which lives
//! in its item's hash slot, from the id alone, which keeps every script single-slot on Redis Cluster.
//!
//! One atomic word holds `(millis << 8) | sequence`; `next` is a CAS loop, so it is lock-free, ids
//! are strictly increasing per generator, and when the clock steps back the generator keeps counting
//! from where it was instead of repeating (it borrows from the future until the clock catches up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const NODE_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 8;
pub const GENE_BITS: u32 = 4;
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
pub const GENES: u64 = 1 << GENE_BITS;

const LOW_BITS: u32 = SEQ_BITS + GENE_BITS;
const TIME_SHIFT: u32 = NODE_BITS + LOW_BITS;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct Snowflake {
    node: AtomicU64,
    /// `(millis since EPOCH_MS) << SEQ_BITS | sequence` of the last id handed out.
    last: AtomicU64,
}

impl Snowflake {
    pub fn new(node: u16) -> Self {
        assert!(node <= MAX_NODE, "node id {node} is over {MAX_NODE}");
        Snowflake {
            node: AtomicU64::new(node as u64),
            last: AtomicU64::new(0),
        }
    }

    pub fn node(&self) -> u16 {
        self.node.load(Ordering::Relaxed) as u16
    }

    /// Switch to another node id (a lease was lost and another one taken). Time keeps moving
    /// forward, so ids stay unique across the switch.
    pub fn set_node(&self, node: u16) {
        assert!(node <= MAX_NODE);
        self.node.store(node as u64, Ordering::Relaxed);
    }

    /// Never issue a timestamp at or below `ms` (milliseconds since the Unix epoch): a node id
    /// taken over from a process that died must not repeat its ids even if our clock is behind.
    pub fn start_after(&self, ms: u64) {
        let floor = (ms.saturating_sub(EPOCH_MS) + 1) << SEQ_BITS;
        self.last.fetch_max(floor, Ordering::AcqRel);
    }

    /// The newest millisecond (since the Unix epoch) this generator has used.
    pub fn high_water_ms(&self) -> u64 {
        (self.last.load(Ordering::Acquire) >> SEQ_BITS) + EPOCH_MS
    }

    pub fn next(&self, gene: u8) -> u64 {
        let now = now_ms().saturating_sub(EPOCH_MS) << SEQ_BITS;
        let mut cur = self.last.load(Ordering::Acquire);
        loop {
            let cand = now.max(cur + 1);
            match self
                .last
                .compare_exchange_weak(cur, cand, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return self.compose(cand, gene),
                Err(actual) => cur = actual,
            }
        }
    }

    fn compose(&self, stamp: u64, gene: u8) -> u64 {
        let ms = stamp >> SEQ_BITS;
        let seq = stamp & ((1 << SEQ_BITS) - 1);
        (ms << TIME_SHIFT)
            | (self.node.load(Ordering::Relaxed) << LOW_BITS)
            | (seq << GENE_BITS)
            | (gene as u64 & (GENES - 1))
    }
}

/// The shard gene carried in an id's lowest bits.
pub fn gene_of(id: u64) -> u8 {
    (id & (GENES - 1)) as u8
}

/// Milliseconds since the Unix epoch at which an id was made.
pub fn millis_of(id: u64) -> u64 {
    (id >> TIME_SHIFT) + EPOCH_MS
}

pub fn node_of(id: u64) -> u16 {
    ((id >> LOW_BITS) & MAX_NODE as u64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn fields_round_trip() {
        let g = Snowflake::new(913);
        let before = now_ms();
        let id = g.next(11);
        assert_eq!(gene_of(id), 11);
        assert_eq!(node_of(id), 913);
        assert!(millis_of(id) >= before && millis_of(id) <= now_ms() + 1);
        assert!(id < i64::MAX as u64, "ids fit a signed BIGINT");
    }

    #[test]
    fn strictly_increasing_and_unique_across_threads() {
        let g = Arc::new(Snowflake::new(1));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let g = g.clone();
                std::thread::spawn(move || {
                    let mut prev = 0;
                    let mut ids = Vec::with_capacity(50_000);
                    for i in 0..50_000u32 {
                        let id = g.next(((t + i) % 16) as u8);
                        // the time+sequence part never goes back within a thread
                        assert!(id >> GENE_BITS > prev);
                        prev = id >> GENE_BITS;
                        ids.push(id);
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 200_000);
    }

    #[test]
    fn no_repeat_when_the_clock_is_behind_a_previous_owner() {
        let g = Snowflake::new(5);
        let future = now_ms() + 60_000;
        g.start_after(future);
        let id = g.next(0);
        assert!(millis_of(id) > future);
        let id2 = g.next(0);
        assert!(id2 > id);
    }
}
