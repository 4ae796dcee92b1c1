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
//!
//! A generator on a leased node id is *fenced*: it mints only until a deadline on the process's
//! monotonic clock, which each confirmed renewal of the lease moves forward. A process that cannot
//! renew (Redis unreachable, or the process paused) stops minting before its lease could pass to
//! another process, so two processes never mint on one node id at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Milliseconds on this process's monotonic clock (since its first reading).
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The generator's node lease is not known to be its own now: no id was minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the snowflake node id's lease is not confirmed: no id is minted until it is")]
pub struct Fenced;

#[derive(Debug)]
pub struct Snowflake {
    node: AtomicU64,
    /// `(millis since EPOCH_MS) << SEQ_BITS | sequence` of the last id handed out.
    last: AtomicU64,
    /// Ids are minted while [`monotonic_ms`] is below this.
    minting_until: AtomicU64,
}

impl Snowflake {
    /// A generator on a node id of its own for good (`SECKILL_NODE_ID`): never fenced.
    pub fn new(node: u16) -> Self {
        Snowflake::with_fence(node, u64::MAX)
    }

    /// A generator on a leased node id: it mints nothing until [`Snowflake::confirm_until`].
    pub fn fenced(node: u16) -> Self {
        Snowflake::with_fence(node, 0)
    }

    fn with_fence(node: u16, minting_until: u64) -> Self {
        assert!(node <= MAX_NODE, "node id {node} is over {MAX_NODE}");
        Snowflake {
            node: AtomicU64::new(node as u64),
            last: AtomicU64::new(0),
            minting_until: AtomicU64::new(minting_until),
        }
    }

    /// The lease is confirmed: mint until `confirmed_at` (a [`monotonic_ms`] read before the
    /// confirmation was asked for) plus `fence`.
    pub fn confirm_until(&self, confirmed_at: u64, fence: Duration) {
        let until = confirmed_at.saturating_add(fence.as_millis() as u64);
        self.minting_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Stops minting at once (the lease was found taken by another process).
    pub fn fence_now(&self) {
        self.minting_until.store(0, Ordering::Release);
    }

    /// Whether an id would be minted now.
    pub fn is_minting(&self) -> bool {
        monotonic_ms() < self.minting_until.load(Ordering::Acquire)
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

    /// The next id, with `gene` in its low bits; [`Fenced`] while the node's lease is not
    /// confirmed.
    pub fn next(&self, gene: u8) -> Result<u64, Fenced> {
        let until = self.minting_until.load(Ordering::Acquire);
        if until != u64::MAX && monotonic_ms() >= until {
            return Err(Fenced);
        }
        let now = now_ms().saturating_sub(EPOCH_MS) << SEQ_BITS;
        let mut cur = self.last.load(Ordering::Acquire);
        loop {
            let cand = now.max(cur + 1);
            match self
                .last
                .compare_exchange_weak(cur, cand, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(self.compose(cand, gene)),
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
        let id = g.next(11).unwrap();
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
                        let id = g.next(((t + i) % 16) as u8).unwrap();
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
        let id = g.next(0).unwrap();
        assert!(millis_of(id) > future);
        let id2 = g.next(0).unwrap();
        assert!(id2 > id);
    }

    #[test]
    fn a_leased_generator_mints_only_while_its_lease_is_confirmed() {
        let g = Snowflake::fenced(9);
        assert_eq!(g.next(0), Err(Fenced));
        g.confirm_until(monotonic_ms(), Duration::from_secs(60));
        assert!(g.next(0).is_ok());
        g.fence_now();
        assert_eq!(g.next(0), Err(Fenced));
        // A confirmation that has run out mints nothing.
        g.confirm_until(monotonic_ms(), Duration::ZERO);
        assert_eq!(g.next(0), Err(Fenced));
        assert!(Snowflake::new(9).next(0).is_ok());
    }
}
