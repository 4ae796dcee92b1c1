//! The public catalog's cache: what `GET /items/{item_id}` and `GET /items` show, kept per gateway
//! so that a crowd refreshing a product page costs Redis at most one read of the item per
//! [`TTL`], and the database one read of the list per [`TTL`], however many requests come in.
//!
//! A stale entry is refreshed by one request at a time (single flight, on a task of its own so a
//! client that hangs up cannot leave it half done): that request waits for the new value, the
//! others keep serving the last one meanwhile, or wait for the first one when there is none.
//! Unknown ids are cached too, and the number of entries is bounded, so a scan of random ids
//! neither reaches Redis at every request nor grows memory without bound. What depends on the
//! clock (the sale's state, `server_time`) is computed when serving, never cached.

use crate::api::SaleState;
use fred::prelude::*;
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use seckill_schema::entity::items;
use seckill_schema::{ItemId, Keys, SaleWindow};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a value is served before it is read again: the contract's "`remaining` may lag by up
/// to one second".
pub const TTL: Duration = Duration::from_secs(1);

/// Entries kept at most. Past it, entries that are stale or say "unknown" are swept out; a request
/// that still finds no room is served without the cache.
pub const MAX_ITEMS: usize = 10_000;

/// The list shows at most this many sales; a flash-sale catalog is far smaller.
pub const MAX_LISTED: usize = 1_000;

/// A refresh that takes longer is given up (Redis commands time out sooner already); waiters then
/// get the last value, or "unavailable".
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One sale as Redis (or, as a fallback for the list, the database) holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub item: ItemId,
    pub name: String,
    pub price_cents: i64,
    pub window: SaleWindow,
    pub remaining: i64,
}

impl Snapshot {
    /// The sale's state at `now_ms`: the window first, then the stock, as a purchase decides.
    pub fn state(&self, now_ms: i64) -> SaleState {
        if self.window.ended(now_ms) {
            SaleState::Ended
        } else if self.window.upcoming(now_ms) {
            SaleState::Upcoming
        } else if self.remaining <= 0 {
            SaleState::SoldOut
        } else {
            SaleState::Live
        }
    }

    fn of_row(m: &items::Model) -> Snapshot {
        Snapshot {
            item: ItemId(m.id as u64),
            name: m.name.clone(),
            price_cents: m.price_cents,
            window: m.window(),
            // What the database still has to sell: close to Redis's `remaining`, behind it by the
            // orders on their way.
            remaining: m.available,
        }
    }
}

/// What looking an item up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Looked {
    Item(Arc<Snapshot>),
    /// Neither Redis nor the database knows it.
    Unknown,
    /// Redis lost it and it is being rebuilt from the database.
    Recovering,
    /// Redis did not answer.
    Unavailable,
}

/// The sales that are not over, as the database listed them.
#[derive(Debug, Clone)]
pub enum Listing {
    Items(Arc<[Snapshot]>),
    Unavailable,
}

/// What a cached value needs to say about itself.
trait Cached: Clone + Send + Sync + 'static {
    /// What a refresh that failed (or timed out, or panicked) leaves when there was nothing before.
    fn failed() -> Self;
    fn is_failure(&self) -> bool;
    /// Swept first when the cache is full: a scan of random ids must not push real items out.
    fn is_negative(&self) -> bool {
        false
    }
}

impl Cached for Looked {
    fn failed() -> Self {
        Looked::Unavailable
    }

    fn is_failure(&self) -> bool {
        matches!(self, Looked::Unavailable)
    }

    fn is_negative(&self) -> bool {
        matches!(self, Looked::Unknown | Looked::Unavailable)
    }
}

impl Cached for Listing {
    fn failed() -> Self {
        Listing::Unavailable
    }

    fn is_failure(&self) -> bool {
        matches!(self, Listing::Unavailable)
    }
}

#[derive(Clone)]
struct Stamped<T> {
    /// When the read that produced the value started: its age is never underestimated.
    at: Instant,
    value: T,
}

/// One cached value, its refresh, and those waiting for its first value.
struct Slot<T> {
    value: watch::Sender<Option<Stamped<T>>>,
    refreshing: AtomicBool,
}

impl<T: Cached> Slot<T> {
    fn new() -> Slot<T> {
        Slot {
            value: watch::Sender::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The value, and whether it is fresh, without waiting.
    fn peek(&self, now: Instant, ttl: Duration) -> Option<(T, bool)> {
        self.value
            .borrow()
            .as_ref()
            .map(|s| (s.value.clone(), now.saturating_duration_since(s.at) < ttl))
    }

    fn evictable(&self, now: Instant, ttl: Duration) -> bool {
        if self.refreshing.load(Ordering::Relaxed) {
            return false;
        }
        match &*self.value.borrow() {
            None => true,
            Some(s) => s.value.is_negative() || now.saturating_duration_since(s.at) >= ttl,
        }
    }

    /// The value to serve. Fresh: the cached one. Stale: the request that refreshes waits for the
    /// new one (one read a second), the others serve the stale one meanwhile. None yet: every
    /// request waits for the first.
    async fn get<F, Fut>(self: &Arc<Self>, ttl: Duration, fetch: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        if let Some((value, fresh)) = self.peek(Instant::now(), ttl) {
            if fresh {
                return value;
            }
            return match self.refresh(fetch) {
                Some(mut rx) => match rx.changed().await {
                    Ok(()) => rx.borrow().as_ref().map_or(value, |s| s.value.clone()),
                    Err(_) => value,
                },
                None => value,
            };
        }
        // Subscribed before looking again: a first value stored meanwhile cannot slip by unseen.
        let mut rx = self
            .refresh(fetch)
            .unwrap_or_else(|| self.value.subscribe());
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.as_ref().map_or_else(T::failed, |s| s.value.clone()),
            Err(_) => T::failed(),
        }
    }

    /// Starts a refresh unless one is under way; if this call started it, a receiver that sees
    /// its result.
    fn refresh<F, Fut>(self: &Arc<Self>, fetch: F) -> Option<watch::Receiver<Option<Stamped<T>>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        if self
            .refreshing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let rx = self.value.subscribe();
        let refresh = Refresh {
            slot: self.clone(),
            at: Instant::now(),
            stored: false,
        };
        let fetching = fetch();
        tokio::spawn(async move {
            let fresh = tokio::time::timeout(FETCH_TIMEOUT, fetching)
                .await
                .unwrap_or_else(|_| T::failed());
            refresh.store(fresh);
        });
        Some(rx)
    }
}

/// A refresh under way. Dropped, it frees the slot for the next one, and if it never stored a
/// value (its fetch panicked) it still wakes those waiting, with the last value or a failure.
struct Refresh<T: Cached> {
    slot: Arc<Slot<T>>,
    at: Instant,
    stored: bool,
}

impl<T: Cached> Refresh<T> {
    fn store(mut self, fresh: T) {
        let at = self.at;
        self.slot.value.send_modify(|v| match v {
            // The source failed: the last value stays, re-stamped, so the source is asked again
            // in a second rather than at every request while it is down.
            Some(last) if fresh.is_failure() => last.at = at,
            _ => *v = Some(Stamped { at, value: fresh }),
        });
        self.stored = true;
    }
}

impl<T: Cached> Drop for Refresh<T> {
    fn drop(&mut self) {
        if !self.stored {
            let at = self.at;
            self.slot.value.send_modify(|v| match v {
                Some(last) => last.at = at,
                None => {
                    *v = Some(Stamped {
                        at,
                        value: T::failed(),
                    })
                }
            });
        }
        self.slot.refreshing.store(false, Ordering::Release);
    }
}

struct Items {
    map: HashMap<ItemId, Arc<Slot<Looked>>>,
    /// When a full map that a sweep could not free is worth sweeping again.
    next_sweep: Instant,
}

/// The per-gateway cache of the public catalog.
pub struct Catalog {
    items: RwLock<Items>,
    listing: Arc<Slot<Listing>>,
    capacity: usize,
    ttl: Duration,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new(MAX_ITEMS, TTL)
    }
}

impl Catalog {
    /// At most `capacity` items, each read again once `ttl` old.
    pub fn new(capacity: usize, ttl: Duration) -> Catalog {
        Catalog {
            items: RwLock::new(Items {
                map: HashMap::new(),
                next_sweep: Instant::now(),
            }),
            listing: Arc::new(Slot::new()),
            capacity,
            ttl,
        }
    }

    /// The item as last read, read again by `fetch` (one call per TTL at most, on a task of its
    /// own) when stale.
    pub async fn item<F, Fut>(&self, item: ItemId, fetch: F) -> Looked
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Looked> + Send + 'static,
    {
        // The hit path: a shared lock, a lookup and an `Arc` clone; no Redis, no allocation.
        let found = {
            let items = self.items.read().unwrap_or_else(PoisonError::into_inner);
            match items.map.get(&item) {
                Some(slot) => match slot.peek(Instant::now(), self.ttl) {
                    Some((value, true)) => return value,
                    _ => Some(slot.clone()),
                },
                None => None,
            }
        };
        match found.or_else(|| self.slot_for(item)) {
            Some(slot) => slot.get(self.ttl, fetch).await,
            // Full of entries in use: served, uncached, rather than evicting a live item's.
            None => tokio::time::timeout(FETCH_TIMEOUT, fetch())
                .await
                .unwrap_or(Looked::Unavailable),
        }
    }

    /// The sales not over yet, as last listed, listed again by `fetch` when stale.
    pub async fn listing<F, Fut>(&self, fetch: F) -> Listing
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Listing> + Send + 'static,
    {
        self.listing.get(self.ttl, fetch).await
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.items
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn is_refreshing(&self, item: ItemId) -> bool {
        let items = self.items.read().unwrap_or_else(PoisonError::into_inner);
        items
            .map
            .get(&item)
            .is_some_and(|slot| slot.refreshing.load(Ordering::Acquire))
    }

    /// The item's slot, made if there is room; `None` if the map is full of entries in use.
    fn slot_for(&self, item: ItemId) -> Option<Arc<Slot<Looked>>> {
        let mut items = self.items.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = items.map.get(&item) {
            return Some(slot.clone());
        }
        if items.map.len() >= self.capacity {
            let now = Instant::now();
            if now < items.next_sweep {
                return None;
            }
            items.map.retain(|_, slot| !slot.evictable(now, self.ttl));
            if items.map.len() >= self.capacity {
                // Every entry is in use: sweeping again at every request would cost a pass over
                // the whole map each time.
                items.next_sweep = now + self.ttl;
                return None;
            }
        }
        let slot = Arc::new(Slot::new());
        items.map.insert(item, slot.clone());
        Some(slot)
    }
}

/// Reads the item's hash: one `HMGET` (and, for an item of several shards, the others'
/// remaining and in-transfer units, summed). `None` when Redis holds no hash for it.
pub async fn read_item(
    redis: &Pool,
    keys: &Keys,
    item: ItemId,
) -> Result<Option<Snapshot>, fred::error::Error> {
    type Fields = (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<u8>,
    );
    let (remaining, price, starts, ends, name, shards): Fields = redis
        .hmget(
            keys.item(item),
            vec!["remaining", "price", "starts", "ends", "name", "shards"],
        )
        .await?;
    let Some(mut remaining) = remaining else {
        return Ok(None);
    };
    let shards = shards.unwrap_or(1);
    if shards > 1 {
        remaining = sharded_remaining(redis, keys, item, shards).await?;
    }
    Ok(Some(Snapshot {
        item,
        name: name.unwrap_or_default(),
        price_cents: price.unwrap_or_default(),
        window: SaleWindow::from_hash(starts, ends),
        remaining,
    }))
}

/// The units an item of several shards has left: every shard's remaining (a product page may lag
/// by a second and miss units in transfer for a moment: it needs no consistent read).
pub async fn sharded_remaining(
    redis: &Pool,
    keys: &Keys,
    item: ItemId,
    shards: u8,
) -> Result<i64, fred::error::Error> {
    let mut total = 0;
    for s in 0..shards {
        let remaining: Option<i64> = redis
            .hget(
                keys.item_in(item, seckill_schema::keys::shard_gene(item, s)),
                "remaining",
            )
            .await?;
        total += remaining.unwrap_or(0).max(0);
    }
    Ok(total)
}

/// The sales not over at `now_ms`, soonest first, at most [`MAX_LISTED`].
pub async fn read_listing(db: &DatabaseConnection, now_ms: i64) -> Result<Vec<Snapshot>, DbErr> {
    use sea_orm::{QueryOrder, QuerySelect};
    let rows = items::Entity::find()
        .filter(
            Condition::any()
                .add(items::Column::EndsAtMs.is_null())
                .add(items::Column::EndsAtMs.gt(now_ms)),
        )
        .order_by_asc(items::Column::Id)
        .limit(MAX_LISTED as u64)
        .all(db)
        .await?;
    let mut listed: Vec<Snapshot> = rows.iter().map(Snapshot::of_row).collect();
    // In Rust: the backends disagree on where an open start (NULL) sorts.
    listed.sort_by_key(|s| (s.window.starts_at_ms.unwrap_or(0), s.item));
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn snapshot(item: u64, remaining: i64) -> Looked {
        Looked::Item(Arc::new(Snapshot {
            item: ItemId(item),
            name: format!("item {item}"),
            price_cents: 990,
            window: SaleWindow::default(),
            remaining,
        }))
    }

    /// A fetch that counts its calls and answers `remaining` = the call's number.
    fn counting(
        calls: &Arc<AtomicUsize>,
        item: u64,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Looked> + Send>> + use<> {
        let calls = calls.clone();
        move || {
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::task::yield_now().await;
                snapshot(item, n as i64)
            })
        }
    }

    fn remaining(l: &Looked) -> i64 {
        match l {
            Looked::Item(s) => s.remaining,
            other => panic!("an item, not {other:?}"),
        }
    }

    #[test]
    fn the_state_follows_the_window_then_the_stock() {
        let s = |starts, ends, remaining| Snapshot {
            item: ItemId(1),
            name: "x".into(),
            price_cents: 1,
            window: SaleWindow {
                starts_at_ms: starts,
                ends_at_ms: ends,
            },
            remaining,
        };
        assert_eq!(s(None, None, 1).state(5), SaleState::Live);
        assert_eq!(s(None, None, 0).state(5), SaleState::SoldOut);
        assert_eq!(s(Some(6), None, 1).state(5), SaleState::Upcoming);
        assert_eq!(s(Some(5), None, 1).state(5), SaleState::Live);
        assert_eq!(s(None, Some(5), 1).state(5), SaleState::Ended);
        assert_eq!(s(None, Some(6), 0).state(5), SaleState::SoldOut);
        assert_eq!(s(Some(6), Some(7), 0).state(8), SaleState::Ended);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crowd_triggers_one_fetch_and_all_get_its_value() {
        let catalog = Arc::new(Catalog::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let crowd = (0..100).map(|_| {
            let catalog = catalog.clone();
            let fetch = counting(&calls, 7);
            tokio::spawn(async move { catalog.item(ItemId(7), fetch).await })
        });
        for answer in futures_util::future::join_all(crowd).await {
            assert_eq!(remaining(&answer.unwrap()), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Every value is stale at once.
    fn always_stale() -> Catalog {
        Catalog::new(MAX_ITEMS, Duration::ZERO)
    }

    fn never_stale(capacity: usize) -> Catalog {
        Catalog::new(capacity, Duration::from_secs(3600))
    }

    /// A never-stale catalog of `capacity` entries holding items 1 and 2, and its count of
    /// fetches.
    async fn holding_two(capacity: usize) -> (Catalog, Arc<AtomicUsize>) {
        let catalog = never_stale(capacity);
        let calls = Arc::new(AtomicUsize::new(0));
        for item in 1..=2 {
            catalog.item(ItemId(item), counting(&calls, item)).await;
        }
        (catalog, calls)
    }

    async fn boom() -> Looked {
        panic!("the fetch panics")
    }

    #[tokio::test]
    async fn a_fresh_value_is_served_without_a_fetch() {
        let catalog = never_stale(MAX_ITEMS);
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            assert_eq!(
                remaining(&catalog.item(ItemId(3), counting(&calls, 3)).await),
                1
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_value_is_served_while_one_refresh_runs() {
        let catalog = Arc::new(always_stale());
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            remaining(&catalog.item(ItemId(3), counting(&calls, 3)).await),
            1
        );
        // Stale: one request refreshes, held here until the gate opens...
        let gate = Arc::new(tokio::sync::Notify::new());
        let refreshing = {
            let (catalog, gate) = (catalog.clone(), gate.clone());
            tokio::spawn(async move {
                catalog
                    .item(ItemId(3), move || async move {
                        gate.notified().await;
                        snapshot(3, 2)
                    })
                    .await
            })
        };
        while !catalog.is_refreshing(ItemId(3)) {
            tokio::task::yield_now().await;
        }
        // ...while the others are served the stale value, and start no fetch of their own.
        for _ in 0..10 {
            assert_eq!(
                remaining(&catalog.item(ItemId(3), counting(&calls, 3)).await),
                1
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        gate.notify_one();
        assert_eq!(remaining(&refreshing.await.unwrap()), 2);
        // The next stale request refreshes again, and waits for its own read.
        assert_eq!(
            remaining(&catalog.item(ItemId(3), counting(&calls, 3)).await),
            2
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_value_and_a_first_failure_is_unavailable() {
        let catalog = always_stale();
        let fail = || async { Looked::Unavailable };
        assert_eq!(catalog.item(ItemId(1), fail).await, Looked::Unavailable);
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            catalog.item(ItemId(2), counting(&calls, 2)).await,
            snapshot(2, 1)
        );
        assert_eq!(catalog.item(ItemId(2), fail).await, snapshot(2, 1));
        assert_eq!(catalog.item(ItemId(2), fail).await, snapshot(2, 1));
    }

    #[tokio::test]
    async fn a_panicking_fetch_leaves_no_waiter_hanging() {
        let catalog = always_stale();
        assert_eq!(catalog.item(ItemId(1), boom).await, Looked::Unavailable);
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            catalog.item(ItemId(1), counting(&calls, 1)).await,
            snapshot(1, 1),
            "the slot is free for the next refresh"
        );
        assert_eq!(
            catalog.item(ItemId(1), boom).await,
            snapshot(1, 1),
            "a refresh that panics leaves the last value"
        );
    }

    #[tokio::test]
    async fn the_map_is_bounded_and_unknown_ids_make_room_first() {
        let (catalog, calls) = holding_two(4).await;
        for item in 100..110 {
            assert_eq!(
                catalog
                    .item(ItemId(item), || async { Looked::Unknown })
                    .await,
                Looked::Unknown
            );
            assert!(catalog.len() <= 4, "{} entries", catalog.len());
        }
        // The real items stayed, fresh: no second fetch.
        for item in 1..=2 {
            assert_eq!(
                catalog.item(ItemId(item), counting(&calls, item)).await,
                snapshot(item, item as i64)
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_map_of_live_items_serves_uncached() {
        let (catalog, _) = holding_two(2).await;
        let other = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            assert_eq!(
                remaining(&catalog.item(ItemId(9), counting(&other, 9)).await),
                other.load(Ordering::SeqCst) as i64
            );
        }
        assert_eq!(other.load(Ordering::SeqCst), 3, "one fetch per request");
        assert_eq!(catalog.len(), 2);
    }
}
