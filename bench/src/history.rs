//! A history checker in the manner of Jepsen's, for the fault tests: purchases go through a
//! recording [`Client`] while servers are killed, paused, partitioned or power-cut; each request
//! becomes one [`Op`] of a [`History`] (who asked for what, when it was invoked and answered, and
//! the answer), the answers nobody could read are settled afterwards through `GET /orders/{id}`
//! ([`Client::settle`]), and [`check`] holds the history against the database.
//!
//! ```no_run
//! # async fn fault_test(config: seckill_infra::Config, gateway: String) -> anyhow::Result<()> {
//! use seckill_bench::history::{self, Client, History};
//! use seckill_schema::{ItemId, UserId};
//! use std::time::Duration;
//!
//! let item = ItemId(42);
//! let history = History::new();
//! let client = Client::new(&history, &config, &gateway).with_timeout(Duration::from_secs(2));
//! let buys = (1..=300).map(|u| {
//!     let client = client.clone();
//!     tokio::spawn(async move { client.buy(UserId(u), item, 1, None).await })
//! });
//! // ... kill, pause or partition something meanwhile, then bring it back ...
//! futures_util::future::join_all(buys).await;
//! client.settle(Duration::from_secs(30)).await;
//! let _ = history::wait_for_orders(&history, &config, item, Duration::from_secs(60)).await;
//! let checks = history::check(&history, &config, item).await?;
//! let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
//! assert!(failed.is_empty(), "{failed:#?}\n{}", history.to_json());
//! # Ok(())
//! # }
//! ```
//!
//! The rules ([`judge`], a pure function of the ops, the stored rows and the item):
//!
//! - **accepted_stored** (invariant 3): every order id answered `202` is stored exactly once,
//!   with the op's user, item and quantity (for a retry with an `Idempotency-Key`, the quantity
//!   of any op of that key, since a replay answers the first request's order), and
//!   `amount_cents` = the item's price × the stored quantity.
//! - **answer_ids_unique** (invariant 4): ops answered with the same order id (`202` or
//!   `outcome_unknown`) are all of one user and item and carry one and the same
//!   `Idempotency-Key`: two requests without a key, or with different keys, never share an id.
//! - **idempotent_retries** (invariant 4): the ops of one user, item and key name at most one
//!   sold order between them: their `202` ids and their `outcome_unknown` ids settled `200`.
//! - **outcome_unknown_settled** (invariant 3): every `503 outcome_unknown` was settled; settled
//!   `200`, its id is stored with the op's user, item, quantity and a right amount; settled `404`
//!   (final), it is not stored.
//! - **no_order_from_nowhere** (invariant 3): every stored order of the item is answered `202`,
//!   or is the id of an `outcome_unknown`, or else is explained by a request of its user for the
//!   item that was cut off (`Indeterminate`, or a `5xx` other than the documented ones, whose
//!   order may exist under an id nobody saw), asking for its quantity, at the right amount.
//!   Each cut-off request explains at most one order, and cut-off requests sharing a key at most
//!   one together (none if that key's order is known from a `202` or a settled `200`).
//! - **limit_reached_truthful** (invariant 0: the answers): a `409 limit_reached` naming an
//!   order names one of that user and item, stored or answered `202`. One naming none (the
//!   quantity alone is over the limit in force then) is not checked: the limit may have been
//!   changed meanwhile.
//! - **sold_out_truthful** (invariant 0): a `409 sold_out` for `q` units answered at time `c`
//!   needs `taken + q > stock_floor`, where `taken` is the units of every order that could have
//!   taken stock by `c`: the stored orders of the item in any status (a closed order took its
//!   units before it gave them back; counting it is the same as "the orders still holding hold
//!   at least the stock minus the units closed orders returned"), the `202` ids not stored and
//!   the `outcome_unknown` ids neither stored nor settled `404`, each counted when some request
//!   of its user for the item was invoked at or before `c` (or always, for a user who sent none),
//!   and `stock_floor` is the item's stock less every unit operators added during the run
//!   (restocks), the least the stock can have been. Units returned by closed orders are never
//!   subtracted from `taken`, since when they came back is not known: the rule may miss a lie,
//!   never flag a truthful answer. The gateway's sold-out cache (up to 500 ms) is covered: it
//!   only answers after the script found nothing left, and `taken` only grows.
//! - **unknown_item_truthful** (invariant 0): no `404 unknown_item` for an item the database
//!   holds once the item is known to be loaded: invoked after another op for it was answered
//!   by the purchase script (`202`, `sold_out`, `limit_reached`, `not_started`, `ended`).
//!   Before that, the item may have been in the database and not yet in Redis.
//! - **orders_within_stock**, **orders_within_user_limit** (invariant 1): the units of the
//!   stored orders holding stock are at most the stock, and at most the per-user limit per user.
//! - **order_ids_unique** (invariant 4): no order id stored twice.
//!
//! [`check`] adds the bench's own [`audit::audit`] of the item, with the `202`s and the cut-off
//! requests counted as [`audit::Accepted`] (see [`accepted`]).

use crate::audit::{self, Check};
use crate::http::HttpClient;
use anyhow::Context;
use bytes::Bytes;
use fred::prelude::*;
use http::{Method, StatusCode};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use seckill_infra::Config;
use seckill_infra::auth::Jwt;
use seckill_schema::entity::{inventory_history, items, orders};
use seckill_schema::snowflake::now_ms;
use seckill_schema::{ItemId, Keys, OrderId, OrderStatus, UserId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a request may go unanswered before the client gives up on it (`Indeterminate`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the user tokens the client mints are good for.
const TOKEN_TTL_SECS: i64 = 3600;
/// The longest pause between two rounds of polling.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// Ids per `IN (...)` list when reading orders by id.
const IDS_PER_QUERY: usize = 500;

/// What one `POST /seckill` was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// `202`: the order's id.
    Accepted(OrderId),
    /// `409 sold_out`.
    SoldOut,
    /// `409 limit_reached`, with the user's existing order when the answer named one.
    LimitReached(Option<OrderId>),
    /// `409 not_started`.
    NotStarted,
    /// `409 ended`.
    Ended,
    /// `404 unknown_item`.
    UnknownItem,
    /// `503 unavailable`: nothing was sold.
    Unavailable,
    /// `503 recovering`: nothing was sold.
    Recovering,
    /// `503 outcome_unknown`: the id the order has if it sold; [`Client::settle`] asks.
    OutcomeUnknown(OrderId),
    /// `429 rate_limited`.
    RateLimited,
    /// No answer: the connection failed or the request timed out (or was dropped) first. The
    /// order may or may not exist, under an id nobody saw.
    Indeterminate,
    /// Any other answer: its status and its error code (empty when the body had none).
    Other(u16, String),
}

impl Outcome {
    /// The order id the answer gives as this request's own (not `limit_reached`'s, which names
    /// another request's order).
    pub fn order_id(&self) -> Option<OrderId> {
        match self {
            Outcome::Accepted(id) | Outcome::OutcomeUnknown(id) => Some(*id),
            _ => None,
        }
    }

    /// The request may have sold under an id nobody saw: it was cut off, or answered a server
    /// error none of the documented answers explains (`500 internal` may follow a script that
    /// ran).
    pub fn cut_off(&self) -> bool {
        match self {
            Outcome::Indeterminate => true,
            Outcome::Other(status, _) => *status >= 500,
            _ => false,
        }
    }

    /// Answered by the purchase script (or after it, from the sold-out cache): the item was in
    /// Redis then.
    fn item_loaded(&self) -> bool {
        matches!(
            self,
            Outcome::Accepted(_)
                | Outcome::SoldOut
                | Outcome::LimitReached(_)
                | Outcome::NotStarted
                | Outcome::Ended
        )
    }

    /// Reads an answer of `POST /seckill`.
    pub fn from_answer(status: StatusCode, body: &[u8]) -> Outcome {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let code = v.get("error").and_then(|c| c.as_str()).unwrap_or("");
        let id = v
            .get("order_id")
            .and_then(|id| id.as_str())
            .and_then(|id| id.parse().ok())
            .map(OrderId);
        match (status.as_u16(), code, id) {
            (202, _, Some(id)) => Outcome::Accepted(id),
            (409, "sold_out", _) => Outcome::SoldOut,
            (409, "limit_reached", id) => Outcome::LimitReached(id),
            (409, "not_started", _) => Outcome::NotStarted,
            (409, "ended", _) => Outcome::Ended,
            (404, "unknown_item", _) => Outcome::UnknownItem,
            (503, "unavailable", _) => Outcome::Unavailable,
            (503, "recovering", _) => Outcome::Recovering,
            (503, "outcome_unknown", Some(id)) => Outcome::OutcomeUnknown(id),
            (429, _, _) => Outcome::RateLimited,
            (status, code, _) => Outcome::Other(status, code.to_owned()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Accepted(id) => write!(f, "202 order {id}"),
            Outcome::SoldOut => f.write_str("409 sold_out"),
            Outcome::LimitReached(Some(id)) => write!(f, "409 limit_reached (order {id})"),
            Outcome::LimitReached(None) => f.write_str("409 limit_reached"),
            Outcome::NotStarted => f.write_str("409 not_started"),
            Outcome::Ended => f.write_str("409 ended"),
            Outcome::UnknownItem => f.write_str("404 unknown_item"),
            Outcome::Unavailable => f.write_str("503 unavailable"),
            Outcome::Recovering => f.write_str("503 recovering"),
            Outcome::OutcomeUnknown(id) => write!(f, "503 outcome_unknown (order {id})"),
            Outcome::RateLimited => f.write_str("429 rate_limited"),
            Outcome::Indeterminate => f.write_str("no answer"),
            Outcome::Other(status, code) => write!(f, "{status} {code}"),
        }
    }
}

/// What `GET /orders/{id}` told the owner of an `outcome_unknown` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settled {
    /// `200` (it sold); `false`: `404`, which is final.
    pub found: bool,
    /// When the answer came, wall ms.
    pub wall_ms: u64,
}

/// When an op was sent and when it was answered (or cut off), on both of the history's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Monotonic ms since the history began ([`History::now_ms`]).
    pub invoked_ms: u64,
    pub completed_ms: u64,
    /// The same instants, in ms since the Unix epoch.
    pub invoked_wall_ms: u64,
    pub completed_wall_ms: u64,
}

impl Span {
    /// Invoked at `(ms, wall_ms)`, and completed then too until [`Span::complete`].
    fn at((ms, wall_ms): (u64, u64)) -> Span {
        Span {
            invoked_ms: ms,
            completed_ms: ms,
            invoked_wall_ms: wall_ms,
            completed_wall_ms: wall_ms,
        }
    }

    fn complete(&mut self, (ms, wall_ms): (u64, u64)) {
        self.completed_ms = ms;
        self.completed_wall_ms = wall_ms;
    }
}

/// One `POST /seckill`, from its invocation to its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// Its place in the history, in the order the ops were invoked.
    pub seq: usize,
    pub user: UserId,
    pub item: ItemId,
    pub quantity: u32,
    /// The `Idempotency-Key` it was sent with; retries are separate ops with the same key.
    pub key: Option<String>,
    /// When it was sent and when it was answered (or cut off); its fields stand in the op's own
    /// JSON object.
    #[serde(flatten)]
    pub span: Span,
    pub outcome: Outcome,
    /// For an `outcome_unknown`: what `GET /orders/{id}` said, once settled.
    pub settled: Option<Settled>,
    /// What went wrong for an `Indeterminate` op (the transport error), or the body of an
    /// `Other` answer; for people.
    pub note: Option<String>,
    /// The gateway it was sent to.
    pub gateway: String,
}

impl Op {
    /// For details: `op #3 (user 5, 1 unit, key k5, +12..15 ms: 202 order 7)`.
    pub fn describe(&self) -> String {
        let key = self
            .key
            .as_deref()
            .map(|k| format!(", key {k}"))
            .unwrap_or_default();
        let units = if self.quantity == 1 { "unit" } else { "units" };
        format!(
            "op #{} (user {}, {} {units}{key}, +{}..{} ms: {})",
            self.seq,
            self.user,
            self.quantity,
            self.span.invoked_ms,
            self.span.completed_ms,
            self.outcome
        )
    }

    fn settled_found(&self) -> Option<bool> {
        self.settled.map(|s| s.found)
    }
}

struct Slot {
    op: Op,
    done: bool,
}

struct Inner {
    epoch: Instant,
    slots: Mutex<Vec<Slot>>,
}

/// The ops recorded so far; clones share them, and any task may record.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("ops", &self.len()).finish()
    }
}

impl History {
    pub fn new() -> History {
        History {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                slots: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Monotonic ms since the history began, the clock of `invoked_ms` and `completed_ms`.
    pub fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Now on both clocks of a [`Span`]: [`History::now_ms`] and ms since the Unix epoch.
    fn now(&self) -> (u64, u64) {
        (self.now_ms(), now_ms())
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every op, in the order they were invoked. An op still in flight shows as `Indeterminate`,
    /// completed now.
    pub fn ops(&self) -> Vec<Op> {
        let now = self.now();
        self.slots()
            .iter()
            .map(|s| {
                let mut op = s.op.clone();
                if !s.done {
                    op.span.complete(now);
                    op.note = Some("still in flight".into());
                }
                op
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history as JSON, one op per array element: for a failed test's output.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.ops()).unwrap_or_default()
    }

    fn invoke(
        &self,
        user: UserId,
        item: ItemId,
        quantity: u32,
        key: Option<&str>,
        gateway: &str,
    ) -> usize {
        let now = self.now();
        let mut slots = self.slots();
        let seq = slots.len();
        slots.push(Slot {
            op: Op {
                seq,
                user,
                item,
                quantity,
                key: key.map(str::to_owned),
                span: Span::at(now),
                outcome: Outcome::Indeterminate,
                settled: None,
                note: None,
                gateway: gateway.to_owned(),
            },
            done: false,
        });
        seq
    }

    fn complete(&self, seq: usize, outcome: Outcome, note: Option<String>) {
        let now = self.now();
        let mut slots = self.slots();
        let slot = &mut slots[seq];
        if slot.done {
            return;
        }
        slot.done = true;
        slot.op.span.complete(now);
        slot.op.outcome = outcome;
        slot.op.note = note;
    }

    /// The `outcome_unknown` ops not settled yet: (seq, owner, order).
    fn unsettled(&self) -> Vec<(usize, UserId, OrderId)> {
        self.slots()
            .iter()
            .filter(|s| s.done && s.op.settled.is_none())
            .filter_map(|s| match s.op.outcome {
                Outcome::OutcomeUnknown(id) => Some((s.op.seq, s.op.user, id)),
                _ => None,
            })
            .collect()
    }

    fn settle_op(&self, seq: usize, found: bool) {
        self.slots()[seq].op.settled = Some(Settled {
            found,
            wall_ms: now_ms(),
        });
    }
}

/// Marks its op `Indeterminate` if the request's future is dropped before its answer.
struct InFlight<'a> {
    history: &'a History,
    seq: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // A no-op once the op is complete.
        self.history.complete(
            self.seq,
            Outcome::Indeterminate,
            Some("the request was dropped before its answer".into()),
        );
    }
}

/// What [`Client::settle`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settle {
    /// `outcome_unknown` ops settled by this call.
    pub settled: usize,
    /// Those still unsettled at the deadline.
    pub unsettled: usize,
    /// The last answer or error that did not settle one, if any.
    pub last_error: Option<String>,
}

/// A recording client of one gateway: each `POST /seckill` through it becomes an [`Op`] of its
/// history. Cheap to clone; clients of several gateways may share one history.
#[derive(Clone)]
pub struct Client {
    http: HttpClient,
    gateway: Arc<str>,
    history: History,
    jwt: Jwt,
    timeout: Duration,
}

impl Client {
    /// `gateway`: its base URL, e.g. `http://127.0.0.1:8080`. Buyers authenticate with JWTs
    /// signed with the configuration's `jwt_secret`.
    pub fn new(history: &History, config: &Config, gateway: &str) -> Client {
        Client {
            http: HttpClient::default(),
            gateway: gateway.trim_end_matches('/').into(),
            history: history.clone(),
            jwt: Jwt::new(&config.jwt_secret),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Gives up on a request unanswered after `timeout` (at most the bench client's 10 s):
    /// recorded `Indeterminate`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// A buyer with a token of their own, for many purchases by one user.
    pub fn buyer(&self, user: UserId) -> Buyer {
        Buyer {
            client: self.clone(),
            user,
            token: self.jwt.mint(user, TOKEN_TTL_SECS),
        }
    }

    /// `POST /seckill` as `user`, recorded; the outcome is also the op's.
    pub async fn buy(
        &self,
        user: UserId,
        item: ItemId,
        quantity: u32,
        key: Option<&str>,
    ) -> Outcome {
        let token = self.jwt.mint(user, TOKEN_TTL_SECS);
        self.buy_with(&token, user, item, quantity, key).await
    }

    async fn buy_with(
        &self,
        token: &str,
        user: UserId,
        item: ItemId,
        quantity: u32,
        key: Option<&str>,
    ) -> Outcome {
        let url = format!("{}/seckill", self.gateway);
        let auth = format!("Bearer {token}");
        let mut headers = vec![
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        let body = serde_json::json!({"item_id": item.0, "quantity": quantity});
        let body = Bytes::from(body.to_string());
        let seq = self
            .history
            .invoke(user, item, quantity, key, &self.gateway);
        let guard = InFlight {
            history: &self.history,
            seq,
        };
        let answer = tokio::time::timeout(
            self.timeout,
            self.http.send(Method::POST, &url, &headers, body),
        )
        .await;
        let (outcome, note) = match answer {
            Err(_) => (
                Outcome::Indeterminate,
                Some(format!("no answer within {:?}", self.timeout)),
            ),
            Ok(Err(e)) => (Outcome::Indeterminate, Some(format!("{e:#}"))),
            Ok(Ok((status, body))) => {
                let outcome = Outcome::from_answer(status, &body);
                let note = matches!(outcome, Outcome::Other(..))
                    .then(|| String::from_utf8_lossy(&body).chars().take(200).collect());
                (outcome, note)
            }
        };
        self.history.complete(seq, outcome.clone(), note);
        drop(guard);
        outcome
    }

    /// Settles every `outcome_unknown` of the history not settled yet: `GET /orders/{id}` as its
    /// owner, through this client's gateway, recording `200` (it sold) or `404` (it did not, and
    /// never will). Other answers and failures (the system is still down) are retried, each
    /// round after a pause that grows to 500 ms, until each is settled or `within` has passed.
    pub async fn settle(&self, within: Duration) -> Settle {
        let deadline = Instant::now() + within;
        let mut pending = self.history.unsettled();
        let mut report = Settle::default();
        let mut pause = Duration::from_millis(20);
        loop {
            let rounds = pending.iter().map(|&(seq, user, id)| async move {
                let answer = self.lookup(user, id, deadline).await;
                (seq, answer)
            });
            let answers = futures_util::future::join_all(rounds).await;
            let mut still = Vec::new();
            for ((seq, answer), p) in answers.into_iter().zip(&pending) {
                match answer {
                    Ok(found) => {
                        self.history.settle_op(seq, found);
                        report.settled += 1;
                    }
                    Err(e) => {
                        report.last_error = Some(e);
                        still.push(*p);
                    }
                }
            }
            pending = still;
            let left = deadline.saturating_duration_since(Instant::now());
            if pending.is_empty() || left.is_zero() {
                break;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        report.unsettled = pending.len();
        report
    }

    /// `Ok(true)`: 200; `Ok(false)`: 404; `Err`: anything else.
    async fn lookup(&self, user: UserId, id: OrderId, deadline: Instant) -> Result<bool, String> {
        let url = format!("{}/orders/{id}", self.gateway);
        let auth = format!("Bearer {}", self.jwt.mint(user, TOKEN_TTL_SECS));
        let wait = self
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(100));
        let answer = tokio::time::timeout(
            wait,
            self.http
                .send(Method::GET, &url, &[("authorization", &auth)], Bytes::new()),
        )
        .await;
        match answer {
            Ok(Ok((StatusCode::OK, _))) => Ok(true),
            Ok(Ok((StatusCode::NOT_FOUND, _))) => Ok(false),
            Ok(Ok((status, body))) => Err(format!(
                "GET /orders/{id}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("GET /orders/{id}: no answer within {wait:?}")),
        }
    }
}

/// One user's purchases through a [`Client`], with one token.
#[derive(Clone)]
pub struct Buyer {
    client: Client,
    user: UserId,
    token: String,
}

impl Buyer {
    pub fn user(&self) -> UserId {
        self.user
    }

    /// `POST /seckill` as this buyer, recorded.
    pub async fn buy(&self, item: ItemId, quantity: u32, key: Option<&str>) -> Outcome {
        self.client
            .buy_with(&self.token, self.user, item, quantity, key)
            .await
    }
}

/// What the database holds of one item, read once.
#[derive(Debug, Clone)]
pub struct Stored {
    pub item: items::Model,
    /// The item's orders, and any other order an op of the item named.
    pub orders: Vec<orders::Model>,
    /// Units operators added to the item's stock (its restocks, from the inventory history).
    pub restocked: i64,
}

impl Stored {
    /// Reads the item, its orders, the orders its ops named, and its restocks.
    pub async fn load(config: &Config, item: ItemId, ops: &[Op]) -> anyhow::Result<Stored> {
        let db = crate::db::connect(&config.database_url).await?;
        let stored = Stored::read(&db, item, ops).await;
        let _ = db.close().await;
        stored
    }

    async fn read(db: &DatabaseConnection, item: ItemId, ops: &[Op]) -> anyhow::Result<Stored> {
        let (item_row, mut orders) = crate::db::item_and_orders(db, item).await?;
        let have: BTreeSet<i64> = orders.iter().map(|o| o.id).collect();
        let named: Vec<i64> = ops
            .iter()
            .filter(|op| op.item == item)
            .filter_map(|op| match op.outcome {
                Outcome::Accepted(o)
                | Outcome::OutcomeUnknown(o)
                | Outcome::LimitReached(Some(o)) => Some(o.0 as i64),
                _ => None,
            })
            .filter(|o| !have.contains(o))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for chunk in named.chunks(IDS_PER_QUERY) {
            let more = orders::Entity::find()
                .filter(orders::Column::Id.is_in(chunk.iter().copied()))
                .all(db)
                .await
                .context("reading the orders the ops named")?;
            orders.extend(more);
        }
        let restocked = inventory_history::Entity::find()
            .filter(inventory_history::Column::ItemId.eq(item.0 as i64))
            .filter(inventory_history::Column::AdjustmentId.is_not_null())
            .all(db)
            .await
            .context("reading the item's stock adjustments")?
            .iter()
            .map(|h| (h.available_after - h.available_before).max(0))
            .sum();
        Ok(Stored {
            item: item_row,
            orders,
            restocked,
        })
    }
}

/// Waits until the pipeline has carried the item's orders as far as [`check`] and the audit need:
/// the database holds every order the history knows sold (answered `202`, or `outcome_unknown`
/// settled `200`), none of the item's stored orders is still on its way through the workers
/// (`CREATED`, `STOCK_LOCKED`), and Redis's read model shows each as the database does. Polls,
/// each round after a pause that grows to 500 ms; at the deadline, an error that says what is
/// still missing (the checks can be run anyway: they say what is wrong).
pub async fn wait_for_orders(
    history: &History,
    config: &Config,
    item: ItemId,
    within: Duration,
) -> anyhow::Result<()> {
    wait_for_orders_except(history, config, item, &BTreeSet::new(), within).await
}

/// [`wait_for_orders`], not waiting for the orders of `lost` (sold, and known to be gone, as after
/// a power cut) to be stored.
pub async fn wait_for_orders_except(
    history: &History,
    config: &Config,
    item: ItemId,
    lost: &BTreeSet<OrderId>,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let want: BTreeSet<i64> = history
        .ops()
        .iter()
        .filter(|op| op.item == item)
        .filter_map(|op| match op.outcome {
            Outcome::Accepted(id) => Some(id),
            Outcome::OutcomeUnknown(id) if op.settled_found() == Some(true) => Some(id),
            _ => None,
        })
        .filter(|id| !lost.contains(id))
        .map(|id| id.0 as i64)
        .collect();
    let keys = Keys::new(&config.namespace);
    let mut db: Option<DatabaseConnection> = None;
    let mut redis: Option<fred::prelude::Client> = None;
    let mut pause = Duration::from_millis(20);
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let round = async {
            if db.is_none() {
                db = Some(crate::db::connect(&config.database_url).await?);
            }
            if redis.is_none() {
                redis = Some(seckill_infra::redis::client(&config.redis_url).await?);
            }
            let (Some(conn), Some(redis)) = (db.as_ref(), redis.as_ref()) else {
                anyhow::bail!("not connected");
            };
            let rows =
                crate::db::rows_of_item(conn, item, orders::Column::ItemId, orders::Column::Id)
                    .await
                    .context("reading the item's orders")?;
            let have: BTreeSet<i64> = rows.iter().map(|o| o.id).collect();
            let absent = want.difference(&have).count();
            let moving = on_their_way(&rows);
            let statuses = rows.iter().map(|o| {
                let key = keys.order(OrderId(o.id as u64));
                async move {
                    let status: Option<String> = redis.hget(key, "status").await?;
                    Ok::<_, fred::error::Error>(status.as_deref() != Some(o.status.as_str()))
                }
            });
            let lagging = futures_util::future::try_join_all(statuses)
                .await
                .context("reading the read model")?
                .into_iter()
                .filter(|lags| *lags)
                .count();
            anyhow::Ok(match (absent, moving, lagging) {
                (0, 0, 0) => None,
                _ => Some(format!(
                    "{absent} of {} sold orders not stored, {moving} stored orders still on \
                     their way, {lagging} not shown in Redis as stored",
                    want.len()
                )),
            })
        };
        let last = match tokio::time::timeout(left.max(Duration::from_millis(100)), round).await {
            Ok(Ok(None)) => break Ok(()),
            Ok(Ok(Some(what))) => what,
            Ok(Err(e)) => {
                // Connect afresh next round.
                if let Some(conn) = db.take() {
                    let _ = conn.close().await;
                }
                if let Some(r) = redis.take() {
                    let _ = r.quit().await;
                }
                format!("{e:#}")
            }
            Err(_) => "a round of reads did not finish in time".to_owned(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(anyhow::anyhow!(
                "item {item}'s orders after {within:?}: {last}"
            ));
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    };
    if let Some(conn) = db {
        let _ = conn.close().await;
    }
    if let Some(r) = redis {
        let _ = r.quit().await;
    }
    outcome
}

/// How many of `rows` are still on their way through the workers (`PENDING`, `CREATED`,
/// `STOCK_LOCKED`): neither awaiting payment nor further on.
pub fn on_their_way(rows: &[orders::Model]) -> usize {
    rows.iter()
        .filter(|o| {
            matches!(
                o.status.parse(),
                Ok(OrderStatus::Pending | OrderStatus::Created | OrderStatus::StockLocked)
            )
        })
        .count()
}

/// The history's checks of `item` against the database (see the module's rules), then the
/// bench's own audit of the item. Run it once the pipeline is drained ([`wait_for_orders`]) and
/// the `outcome_unknown`s are settled ([`Client::settle`]).
pub async fn check(history: &History, config: &Config, item: ItemId) -> anyhow::Result<Vec<Check>> {
    let ops = history.ops();
    let stored = Stored::load(config, item, &ops).await?;
    let mut checks = judge(&ops, &stored);
    checks.extend(audit::audit(config, item, accepted(&ops, item)).await?);
    Ok(checks)
}

/// What the audit's `accepted_orders_stored` is told: `answered` = the distinct orders the history
/// knows sold (`202` ids, and `outcome_unknown` ids settled `200`); `cut_off` = the ops that may
/// have sold unseen (cut off, or an undocumented `5xx`) and the `outcome_unknown`s never settled.
pub fn accepted(ops: &[Op], item: ItemId) -> audit::Accepted {
    let ops: Vec<&Op> = ops.iter().filter(|op| op.item == item).collect();
    let answered = ops
        .iter()
        .filter_map(|op| match op.outcome {
            Outcome::Accepted(id) => Some(id),
            Outcome::OutcomeUnknown(id) if op.settled_found() == Some(true) => Some(id),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .len() as u64;
    let cut_off = ops
        .iter()
        .filter(|op| {
            op.outcome.cut_off()
                || matches!(op.outcome, Outcome::OutcomeUnknown(_)) && op.settled.is_none()
        })
        .count() as u64;
    audit::Accepted { answered, cut_off }
}

/// The rules of the module's documentation, over the ops of `stored.item` and the stored rows:
/// a pure function, so that each rule can be shown to fail.
pub fn judge(ops: &[Op], stored: &Stored) -> Vec<Check> {
    let j = Judge::new(ops, stored);
    vec![
        j.accepted_stored(),
        j.answer_ids_unique(),
        j.idempotent_retries(),
        j.outcome_unknown_settled(),
        j.no_order_from_nowhere(),
        j.limit_reached_truthful(),
        j.sold_out_truthful(),
        j.unknown_item_truthful(),
        j.orders_within_stock(),
        j.orders_within_user_limit(),
        j.order_ids_unique(),
    ]
}

struct Judge<'a> {
    item: &'a items::Model,
    restocked: i64,
    /// The ops of the item, in invocation order.
    ops: Vec<&'a Op>,
    /// Every stored row read, by id (more than one: a duplicate).
    by_id: HashMap<i64, Vec<&'a orders::Model>>,
    /// The stored rows of the item, by id.
    rows: Vec<&'a orders::Model>,
}

fn units(n: i64) -> &'static str {
    if n == 1 { "unit" } else { "units" }
}

impl<'a> Judge<'a> {
    fn new(ops: &'a [Op], stored: &'a Stored) -> Judge<'a> {
        let item_id = stored.item.id;
        let mut ops: Vec<&Op> = ops
            .iter()
            .filter(|op| op.item.0 as i64 == item_id)
            .collect();
        ops.sort_by_key(|op| (op.span.invoked_ms, op.seq));
        let mut by_id: HashMap<i64, Vec<&orders::Model>> = HashMap::new();
        for o in &stored.orders {
            by_id.entry(o.id).or_default().push(o);
        }
        let mut rows: Vec<&orders::Model> = stored
            .orders
            .iter()
            .filter(|o| o.item_id == item_id)
            .collect();
        rows.sort_by_key(|o| o.id);
        Judge {
            item: &stored.item,
            restocked: stored.restocked,
            ops,
            by_id,
            rows,
        }
    }

    /// The ops answered `outcome`.
    fn answered(&self, outcome: &Outcome) -> Vec<&'a Op> {
        self.ops
            .iter()
            .copied()
            .filter(|op| op.outcome == *outcome)
            .collect()
    }

    /// The ops whose answer `id_of` takes an order id from, with that id.
    fn answered_ids(&self, id_of: fn(&Outcome) -> Option<OrderId>) -> Vec<(&'a Op, OrderId)> {
        self.ops
            .iter()
            .filter_map(|op| Some((*op, id_of(&op.outcome)?)))
            .collect()
    }

    fn amount(&self, quantity: i64) -> i128 {
        i128::from(self.item.price_cents) * i128::from(quantity)
    }

    /// The quantities a stored order answered to `op` may have: the op's own, or any op's of
    /// the same user, item and key (a replay answers the first request's order).
    fn quantities(&self, op: &Op) -> BTreeSet<u32> {
        match &op.key {
            None => BTreeSet::from([op.quantity]),
            Some(key) => self
                .ops
                .iter()
                .filter(|o| o.user == op.user && o.key.as_deref() == Some(key))
                .map(|o| o.quantity)
                .collect(),
        }
    }

    /// How the stored row of an id answered to `op` differs from what was asked, if it does.
    fn mismatch(&self, op: &Op, row: &orders::Model) -> Option<String> {
        let mut wrong = Vec::new();
        if row.user_id != op.user.0 as i64 {
            wrong.push(format!("user {}", row.user_id));
        }
        if row.item_id != op.item.0 as i64 {
            wrong.push(format!("item {}", row.item_id));
        }
        let quantities = self.quantities(op);
        if !u32::try_from(row.quantity).is_ok_and(|q| quantities.contains(&q)) {
            wrong.push(format!(
                "{} {}",
                row.quantity,
                units(i64::from(row.quantity))
            ));
        }
        let want = self.amount(i64::from(row.quantity));
        if i128::from(row.amount_cents) != want {
            wrong.push(format!("{} cents, not {want}", row.amount_cents));
        }
        (!wrong.is_empty()).then(|| format!("stored with {}", wrong.join(", ")))
    }

    /// What is wrong with the stored order `id` answered to `op`: absent, stored twice, or not
    /// as asked.
    fn stored_as_answered(&self, op: &Op, id: OrderId) -> Option<String> {
        match self.by_id.get(&(id.0 as i64)).map(Vec::as_slice) {
            None | Some([]) => Some("not in the database".into()),
            Some([row]) => self.mismatch(op, row),
            Some(rows) => Some(format!("stored {} times", rows.len())),
        }
    }

    fn accepted_stored(&self) -> Check {
        let accepted = self.answered_ids(|outcome| match outcome {
            Outcome::Accepted(id) => Some(*id),
            _ => None,
        });
        let mut seen = BTreeSet::new();
        let mut problems = Vec::new();
        for &(op, id) in &accepted {
            if !seen.insert(id) {
                continue;
            }
            if let Some(wrong) = self.stored_as_answered(op, id) {
                problems.push(format!("{}: order {id} {wrong}", op.describe()));
            }
        }
        Check::new(
            3,
            "accepted_stored",
            problems,
            format!(
                "{} orders answered 202 ({} answers) stored once each, as asked",
                seen.len(),
                accepted.len()
            ),
        )
    }

    fn answer_ids_unique(&self) -> Check {
        let mut by_id: BTreeMap<OrderId, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            if let Some(id) = op.outcome.order_id() {
                by_id.entry(id).or_default().push(op);
            }
        }
        let problems = by_id
            .iter()
            .filter(|(_, ops)| {
                let first = ops[0];
                first.key.is_none() && ops.len() > 1
                    || ops
                        .iter()
                        .any(|op| op.user != first.user || op.key != first.key)
            })
            .map(|(id, ops)| {
                let named: Vec<String> = ops.iter().take(3).map(|op| op.describe()).collect();
                format!(
                    "order {id} answered to {} requests not retries of one another: {}",
                    ops.len(),
                    named.join(", ")
                )
            })
            .collect();
        Check::new(
            4,
            "answer_ids_unique",
            problems,
            format!(
                "{} order ids, each answered to one request or its retries",
                by_id.len()
            ),
        )
    }

    fn idempotent_retries(&self) -> Check {
        let mut by_key: BTreeMap<(UserId, &str), Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            if let Some(key) = &op.key {
                by_key.entry((op.user, key)).or_default().push(op);
            }
        }
        let mut problems = Vec::new();
        for ((user, key), ops) in &by_key {
            let mut sold: BTreeMap<OrderId, &Op> = BTreeMap::new();
            for op in ops {
                let id = match op.outcome {
                    Outcome::Accepted(id) => id,
                    Outcome::OutcomeUnknown(id) if op.settled_found() == Some(true) => id,
                    _ => continue,
                };
                sold.entry(id).or_insert(op);
            }
            if sold.len() > 1 {
                let named: Vec<String> = sold
                    .iter()
                    .take(3)
                    .map(|(id, op)| format!("order {id} ({})", op.describe()))
                    .collect();
                problems.push(format!(
                    "user {user}'s key {key} sold {} orders: {}",
                    sold.len(),
                    named.join(", ")
                ));
            }
        }
        let retried = by_key.values().filter(|ops| ops.len() > 1).count();
        Check::new(
            4,
            "idempotent_retries",
            problems,
            format!(
                "{} idempotency keys ({retried} retried), each sold at most one order",
                by_key.len()
            ),
        )
    }

    fn outcome_unknown_settled(&self) -> Check {
        let unknown = self.answered_ids(|outcome| match outcome {
            Outcome::OutcomeUnknown(id) => Some(*id),
            _ => None,
        });
        let mut problems = Vec::new();
        for &(op, id) in &unknown {
            let stored = self
                .by_id
                .get(&(id.0 as i64))
                .is_some_and(|rows| !rows.is_empty());
            match op.settled_found() {
                None => problems.push(format!(
                    "{}: never settled (GET /orders/{id} answered neither 200 nor 404)",
                    op.describe()
                )),
                Some(true) => {
                    if let Some(wrong) = self.stored_as_answered(op, id) {
                        problems.push(format!(
                            "{}: GET /orders/{id} answered 200, but the order is {wrong}",
                            op.describe()
                        ));
                    }
                }
                Some(false) if stored => problems.push(format!(
                    "{}: GET /orders/{id} answered 404 (final), but the database holds it",
                    op.describe()
                )),
                Some(false) => {}
            }
        }
        Check::new(
            3,
            "outcome_unknown_settled",
            problems,
            format!(
                "{} outcome_unknown answers settled, each as the database has it",
                unknown.len()
            ),
        )
    }

    fn no_order_from_nowhere(&self) -> Check {
        let answered: BTreeSet<i64> = self
            .ops
            .iter()
            .filter_map(|op| op.outcome.order_id())
            .map(|id| id.0 as i64)
            .collect();
        // Keys whose order is known: a cut-off retry of one of them cannot have made another.
        let known_keys: BTreeSet<(UserId, &str)> = self
            .ops
            .iter()
            .filter(|op| {
                matches!(op.outcome, Outcome::Accepted(_))
                    || matches!(op.outcome, Outcome::OutcomeUnknown(_))
                        && op.settled_found() == Some(true)
            })
            .filter_map(|op| Some((op.user, op.key.as_deref()?)))
            .collect();
        let mut unexplained: BTreeMap<i64, Vec<&orders::Model>> = BTreeMap::new();
        for row in &self.rows {
            if !answered.contains(&row.id) {
                unexplained.entry(row.user_id).or_default().push(row);
            }
        }
        let mut problems = Vec::new();
        let mut from_cut_off = 0;
        for (user, rows) in &unexplained {
            let cut: Vec<&Op> = self
                .ops
                .iter()
                .copied()
                .filter(|op| op.user.0 as i64 == *user && op.outcome.cut_off())
                .collect();
            let unkeyed = cut.iter().filter(|op| op.key.is_none()).count();
            let keys: BTreeSet<&str> = cut
                .iter()
                .filter_map(|op| op.key.as_deref())
                .filter(|k| !known_keys.contains(&(UserId(*user as u64), *k)))
                .collect();
            let capacity = unkeyed + keys.len();
            let quantities: BTreeSet<i64> = cut.iter().map(|op| i64::from(op.quantity)).collect();
            for row in rows {
                let q = i64::from(row.quantity);
                if capacity == 0 {
                    problems.push(format!(
                        "order {} (user {user}, {q} {}) answers no request: no 202, no \
                         outcome_unknown, and no cut-off request of the user for the item",
                        row.id,
                        units(q)
                    ));
                } else if !quantities.contains(&q) {
                    problems.push(format!(
                        "order {} (user {user}) holds {q} {}, which no cut-off request of the \
                         user asked for",
                        row.id,
                        units(q)
                    ));
                } else if i128::from(row.amount_cents) != self.amount(q) {
                    problems.push(format!(
                        "order {} (user {user}, from a cut-off request) costs {} cents, not {}",
                        row.id,
                        row.amount_cents,
                        self.amount(q)
                    ));
                }
            }
            if capacity > 0 && rows.len() > capacity {
                let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
                problems.push(format!(
                    "user {user} has {} orders no answer names ({}), but only {capacity} cut-off \
                     requests (retries of one key counted once) that could have made them",
                    rows.len(),
                    ids.join(", ")
                ));
            }
            from_cut_off += rows.len();
        }
        Check::new(
            3,
            "no_order_from_nowhere",
            problems,
            format!(
                "{} stored orders: {} named by an answer, {from_cut_off} from cut-off requests",
                self.rows.len(),
                self.rows.len() - from_cut_off
            ),
        )
    }

    fn limit_reached_truthful(&self) -> Check {
        let mut problems = Vec::new();
        let mut n = 0;
        for op in &self.ops {
            let Outcome::LimitReached(Some(id)) = op.outcome else {
                continue;
            };
            n += 1;
            let rows = self
                .by_id
                .get(&(id.0 as i64))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let (user, item) = (op.user.0 as i64, op.item.0 as i64);
            let stored_own = rows.iter().any(|r| r.user_id == user && r.item_id == item);
            let answered_own = self
                .ops
                .iter()
                .any(|o| o.user == op.user && matches!(o.outcome, Outcome::Accepted(a) if a == id));
            if stored_own || answered_own {
                continue;
            }
            let whose = match rows.first() {
                None => "not in the database and never answered 202".to_owned(),
                Some(r) => format!("user {}'s order of item {}", r.user_id, r.item_id),
            };
            problems.push(format!(
                "{}: names order {id}, which is {whose}",
                op.describe()
            ));
        }
        Check::new(
            0,
            "limit_reached_truthful",
            problems,
            format!("{n} limit_reached answers naming an order, each the user's own of the item"),
        )
    }

    fn sold_out_truthful(&self) -> Check {
        // The earliest a request of each user for the item was invoked.
        let mut first: HashMap<UserId, u64> = HashMap::new();
        for op in &self.ops {
            let t = first.entry(op.user).or_insert(op.span.invoked_ms);
            *t = (*t).min(op.span.invoked_ms);
        }
        let since = |user: i64| first.get(&UserId(user as u64)).copied();
        // (earliest it could have taken stock: None = before the history, units)
        let mut sales: Vec<(Option<u64>, i64)> = self
            .rows
            .iter()
            .map(|r| (since(r.user_id), i64::from(r.quantity)))
            .collect();
        let mut counted: BTreeSet<i64> = self.rows.iter().map(|r| r.id).collect();
        for op in &self.ops {
            let may_have_sold = match op.outcome {
                Outcome::Accepted(id) => Some(id),
                Outcome::OutcomeUnknown(id) if op.settled_found() != Some(false) => Some(id),
                _ => None,
            };
            if let Some(id) = may_have_sold
                && counted.insert(id.0 as i64)
            {
                sales.push((since(op.user.0 as i64), i64::from(op.quantity)));
            }
        }
        let floor = self.item.stock - self.restocked;
        let sold_out = self.answered(&Outcome::SoldOut);
        let mut problems = Vec::new();
        for op in &sold_out {
            let taken: i64 = sales
                .iter()
                .filter(|(at, _)| at.is_none_or(|at| at <= op.span.completed_ms))
                .map(|(_, q)| q)
                .sum();
            let q = i64::from(op.quantity);
            if taken + q <= floor {
                problems.push(format!(
                    "{}: at most {taken} of {floor} units could have been taken by then, so {q} \
                     {} were left",
                    op.describe(),
                    units(q)
                ));
            }
        }
        Check::new(
            0,
            "sold_out_truthful",
            problems,
            format!(
                "{} sold_out answers, each when fewer units than asked for could have been left",
                sold_out.len()
            ),
        )
    }

    fn unknown_item_truthful(&self) -> Check {
        let loaded = self
            .ops
            .iter()
            .filter(|op| op.outcome.item_loaded())
            .min_by_key(|op| op.span.completed_ms);
        let unknown = self.answered(&Outcome::UnknownItem);
        let mut problems = Vec::new();
        for op in &unknown {
            if let Some(first) = loaded
                && first.span.completed_ms < op.span.invoked_ms
            {
                problems.push(format!(
                    "{}: item {} is in the database, and Redis had it when {} was answered",
                    op.describe(),
                    self.item.id,
                    first.describe()
                ));
            }
        }
        Check::new(
            0,
            "unknown_item_truthful",
            problems,
            format!(
                "{} unknown_item answers, none after the item was known loaded",
                unknown.len()
            ),
        )
    }

    fn holding(&self) -> impl Iterator<Item = &&'a orders::Model> {
        self.rows.iter().filter(|o| {
            o.status
                .parse::<OrderStatus>()
                .is_ok_and(OrderStatus::holds_stock)
        })
    }

    fn orders_within_stock(&self) -> Check {
        let held: i64 = self.holding().map(|o| i64::from(o.quantity)).sum();
        let stock = self.item.stock;
        let problems = if held > stock {
            let holders: Vec<String> = self.holding().take(3).map(|o| o.id.to_string()).collect();
            vec![format!(
                "orders hold {held} units of a stock of {stock} (orders {}, ...)",
                holders.join(", ")
            )]
        } else {
            vec![]
        };
        Check::new(
            1,
            "orders_within_stock",
            problems,
            format!("orders hold {held} of {stock} units"),
        )
    }

    fn orders_within_user_limit(&self) -> Check {
        let limit = i64::from(self.item.per_user_limit);
        let mut by_user: BTreeMap<i64, (i64, Vec<i64>)> = BTreeMap::new();
        for o in self.holding() {
            let e = by_user.entry(o.user_id).or_default();
            e.0 += i64::from(o.quantity);
            e.1.push(o.id);
        }
        let problems = by_user
            .iter()
            .filter(|(_, (n, _))| *n > limit)
            .map(|(user, (n, ids))| {
                let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                format!(
                    "user {user} holds {n} units (orders {}) over a limit of {limit}",
                    ids.join(", ")
                )
            })
            .collect();
        Check::new(
            1,
            "orders_within_user_limit",
            problems,
            format!("{} buyers hold at most {limit} units each", by_user.len()),
        )
    }

    fn order_ids_unique(&self) -> Check {
        let mut twice: Vec<(&i64, usize)> = self
            .by_id
            .iter()
            .filter(|(_, rows)| rows.len() > 1)
            .map(|(id, rows)| (id, rows.len()))
            .collect();
        twice.sort();
        let problems = twice
            .into_iter()
            .map(|(id, n)| format!("order {id} stored {n} times"))
            .collect();
        Check::new(
            4,
            "order_ids_unique",
            problems,
            format!("{} order ids stored once each", self.by_id.len()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: ItemId = ItemId(9);
    const PRICE: i64 = 250;

    fn item(stock: i64, limit: i32) -> items::Model {
        items::Model {
            id: ITEM.0 as i64,
            name: "history test".into(),
            price_cents: PRICE,
            stock,
            available: stock,
            locked: 0,
            sold: 0,
            per_user_limit: limit,
            starts_at_ms: None,
            ends_at_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            shards: 1,
        }
    }

    fn row(id: u64, user: u64, status: OrderStatus) -> orders::Model {
        orders::Model {
            id: id as i64,
            user_id: user as i64,
            item_id: ITEM.0 as i64,
            quantity: 1,
            amount_cents: PRICE,
            status: status.as_str().into(),
            close_reason: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// Builds a history of ops invoked 10 ms apart, each answered 5 ms later.
    #[derive(Default)]
    struct Ops(Vec<Op>);

    impl Ops {
        fn op(&mut self, user: u64, key: Option<&str>, outcome: Outcome) -> &mut Op {
            let seq = self.0.len();
            let at = seq as u64 * 10;
            self.0.push(Op {
                seq,
                user: UserId(user),
                item: ITEM,
                quantity: 1,
                key: key.map(str::to_owned),
                span: Span {
                    invoked_ms: at,
                    completed_ms: at + 5,
                    invoked_wall_ms: 1_000_000 + at,
                    completed_wall_ms: 1_000_000 + at + 5,
                },
                outcome,
                settled: None,
                note: None,
                gateway: "http://gw".into(),
            });
            self.0.last_mut().expect("just pushed")
        }

        fn add(&mut self, user: u64, outcome: Outcome) -> &mut Op {
            self.op(user, None, outcome)
        }
    }

    #[test]
    fn an_op_serializes_with_its_fields_in_order() {
        let mut ops = Ops::default();
        let op = ops.op(7, Some("k7"), OutcomeUnknown(OrderId(42)));
        op.settled = Some(Settled {
            found: true,
            wall_ms: 1_000_009,
        });
        op.note = Some("slow".into());
        let json = serde_json::to_string(&ops.0).unwrap();
        assert_eq!(
            json,
            r#"[{"seq":0,"user":7,"item":9,"quantity":1,"key":"k7","invoked_ms":0,"completed_ms":5,"invoked_wall_ms":1000000,"completed_wall_ms":1000005,"outcome":{"OutcomeUnknown":"42"},"settled":{"found":true,"wall_ms":1000009},"note":"slow","gateway":"http://gw"}]"#
        );
    }

    fn settled(op: &mut Op, found: bool) {
        op.settled = Some(Settled { found, wall_ms: 0 });
    }

    fn stored(stock: i64, limit: i32, orders: Vec<orders::Model>) -> Stored {
        Stored {
            item: item(stock, limit),
            orders,
            restocked: 0,
        }
    }

    /// The names of the checks that failed, each failure printed.
    fn failed(ops: &Ops, stored: &Stored) -> BTreeSet<&'static str> {
        let checks = judge(&ops.0, stored);
        assert_eq!(checks.len(), 11);
        checks
            .iter()
            .filter(|c| !c.passed)
            .inspect(|c| eprintln!("✗ {}: {}", c.name, c.detail))
            .map(|c| c.name)
            .collect()
    }

    /// The check `name` of `checks`, which failed.
    #[track_caller]
    fn failing(checks: &[Check], name: &str) -> Check {
        let c = checks.iter().find(|c| c.name == name).unwrap();
        assert!(!c.passed, "{c:?}");
        c.clone()
    }

    /// Only `rule` fails.
    #[track_caller]
    fn fails_only(ops: &Ops, stored: &Stored, rule: &'static str) {
        assert_eq!(failed(ops, stored), BTreeSet::from([rule]));
    }

    use OrderStatus::{AwaitingPayment, Paid, TimedOut};
    use Outcome::*;

    /// A sale of 4 units, one each, with every kind of answer, all true.
    fn good() -> (Ops, Vec<orders::Model>) {
        let mut ops = Ops::default();
        ops.add(1, Accepted(OrderId(101)));
        ops.op(2, Some("k2"), Indeterminate);
        ops.op(2, Some("k2"), Accepted(OrderId(102)));
        ops.op(2, Some("k2"), Accepted(OrderId(102)));
        ops.add(1, LimitReached(Some(OrderId(101))));
        settled(ops.add(3, OutcomeUnknown(OrderId(103))), true);
        settled(ops.add(4, OutcomeUnknown(OrderId(104))), false);
        ops.add(5, Indeterminate);
        ops.add(6, Unavailable);
        ops.add(7, Recovering);
        ops.add(8, RateLimited);
        ops.add(9, SoldOut);
        ops.add(4, Indeterminate);
        ops.add(10, SoldOut);
        let rows = vec![
            row(101, 1, Paid),
            row(102, 2, AwaitingPayment),
            row(103, 3, TimedOut),
            row(105, 5, AwaitingPayment),
            row(106, 4, AwaitingPayment),
        ];
        (ops, rows)
    }

    #[test]
    fn a_truthful_history_passes_every_rule() {
        let (ops, rows) = good();
        assert_eq!(failed(&ops, &stored(4, 1, rows)), BTreeSet::new());
        assert_eq!(
            accepted(&ops.0, ITEM),
            audit::Accepted {
                answered: 3,
                cut_off: 3
            }
        );
        // Other items' ops are not this item's business.
        let (mut ops, rows) = good();
        ops.add(1, Accepted(OrderId(999))).item = ItemId(10);
        assert_eq!(failed(&ops, &stored(4, 1, rows)), BTreeSet::new());
    }

    #[test]
    fn a_lost_202_fails() {
        let (ops, mut rows) = good();
        rows.retain(|r| r.id != 102);
        let s = stored(4, 1, rows);
        fails_only(&ops, &s, "accepted_stored");
        let c = failing(&judge(&ops.0, &s), "accepted_stored");
        assert_eq!(
            c.detail,
            "op #2 (user 2, 1 unit, key k2, +20..25 ms: 202 order 102): order 102 not in the \
             database"
        );
    }

    #[test]
    fn a_202_stored_otherwise_fails() {
        for change in [
            |r: &mut orders::Model| r.amount_cents = PRICE + 1,
            |r: &mut orders::Model| r.user_id = 77,
            |r: &mut orders::Model| {
                r.quantity = 2;
                r.amount_cents = 2 * PRICE;
            },
        ] {
            let (ops, mut rows) = good();
            change(&mut rows[0]);
            let broken = failed(&ops, &stored(4, 2, rows));
            assert!(broken.contains("accepted_stored"), "{broken:?}");
        }
        // A wrong amount alone fails that rule alone.
        let (ops, mut rows) = good();
        rows[0].amount_cents = PRICE * 2;
        fails_only(&ops, &stored(4, 1, rows), "accepted_stored");
    }

    #[test]
    fn duplicate_ids_fail() {
        // Two requests without a key answered one id.
        let (mut ops, rows) = good();
        ops.add(11, Accepted(OrderId(101)));
        let broken = failed(&ops, &stored(4, 1, rows));
        assert!(broken.contains("answer_ids_unique"), "{broken:?}");
        // Two keys of one user answered one id.
        let (mut ops, rows) = good();
        ops.op(2, Some("other"), Accepted(OrderId(102)));
        fails_only(&ops, &stored(4, 1, rows), "answer_ids_unique");
        // One key answered two ids, both stored: a second order for one request.
        let (mut ops, mut rows) = good();
        ops.op(2, Some("k2"), Accepted(OrderId(107)));
        rows.push(row(107, 2, AwaitingPayment));
        let broken = failed(&ops, &stored(5, 2, rows));
        assert_eq!(broken, BTreeSet::from(["idempotent_retries"]));
        // A row stored twice.
        let (ops, mut rows) = good();
        rows.push(row(101, 1, Paid));
        let broken = failed(&ops, &stored(5, 2, rows));
        assert!(broken.contains("order_ids_unique"), "{broken:?}");
        assert!(broken.contains("accepted_stored"), "{broken:?}");
    }

    #[test]
    fn an_order_from_nowhere_fails() {
        for extra in [
            // User 11 never asked.
            row(111, 11, AwaitingPayment),
            // User 6 was told nothing was sold (503 unavailable).
            row(112, 6, AwaitingPayment),
            // User 5's one cut-off request made two orders.
            row(113, 5, TimedOut),
            // User 2's cut-off request shares a key that has its order: it cannot make another.
            row(114, 2, TimedOut),
        ] {
            let (ops, mut rows) = good();
            rows.push(extra);
            fails_only(&ops, &stored(5, 1, rows), "no_order_from_nowhere");
        }
        // A cut-off request's order at the wrong amount.
        let (ops, mut rows) = good();
        rows[3].amount_cents = 1;
        fails_only(&ops, &stored(4, 1, rows), "no_order_from_nowhere");
    }

    #[test]
    fn an_unsettled_or_misreported_outcome_unknown_fails() {
        let (mut ops, rows) = good();
        ops.0[5].settled = None;
        fails_only(&ops, &stored(4, 1, rows), "outcome_unknown_settled");
        // 404 (final), yet stored.
        let (ops, mut rows) = good();
        rows.push(row(104, 4, AwaitingPayment));
        rows.retain(|r| r.id != 106);
        fails_only(&ops, &stored(4, 1, rows), "outcome_unknown_settled");
        // 200, yet not stored.
        let (ops, mut rows) = good();
        rows.retain(|r| r.id != 103);
        fails_only(&ops, &stored(4, 1, rows), "outcome_unknown_settled");
    }

    #[test]
    fn a_lying_sold_out_fails() {
        // Five orders took a unit each (one gave it back later): with 4 or 5 units, the sold_outs
        // are true. With 6, they are lies.
        let (ops, rows) = good();
        assert_eq!(failed(&ops, &stored(5, 1, rows)), BTreeSet::new());
        let (ops, rows) = good();
        let checks = judge(&ops.0, &stored(6, 1, rows));
        let c = failing(&checks, "sold_out_truthful");
        assert!(c.detail.contains("op #11") && c.detail.contains("op #13"));
        assert_eq!(
            checks.iter().filter(|c| !c.passed).count(),
            1,
            "{checks:#?}"
        );
        // Asking for 2 when one is left: true.
        let (mut ops, rows) = good();
        ops.0[11].quantity = 2;
        ops.0[13].quantity = 2;
        assert_eq!(failed(&ops, &stored(6, 1, rows)), BTreeSet::new());
        // A restock during the run: the stock may have been 5 when they were answered.
        let (ops, rows) = good();
        let mut s = stored(6, 1, rows);
        s.restocked = 1;
        assert_eq!(failed(&ops, &s), BTreeSet::new());
        // An order of a user outside the history counts from the start (and comes from nowhere).
        let (ops, mut rows) = good();
        rows.push(row(120, 50, AwaitingPayment));
        fails_only(&ops, &stored(6, 1, rows), "no_order_from_nowhere");
        // Answered at +59 ms, before users 4 and 5 sent anything: only 3 of 4 units could have
        // been taken by then, though the sale did sell out later.
        let (mut ops, rows) = good();
        let early = ops.add(30, SoldOut);
        (early.span.invoked_ms, early.span.completed_ms) = (58, 59);
        let checks = judge(&ops.0, &stored(4, 1, rows));
        let c = failing(&checks, "sold_out_truthful");
        assert!(c.detail.contains("op #14"), "{}", c.detail);
        assert!(!c.detail.contains("op #11"), "{}", c.detail);
        assert!(c.detail.contains("at most 3 of 4 units"), "{}", c.detail);
    }

    #[test]
    fn a_lying_limit_reached_fails() {
        // Naming another user's order.
        let (mut ops, rows) = good();
        ops.add(3, LimitReached(Some(OrderId(101))));
        fails_only(&ops, &stored(4, 1, rows), "limit_reached_truthful");
        // Naming an order nobody has.
        let (mut ops, rows) = good();
        ops.add(1, LimitReached(Some(OrderId(555))));
        fails_only(&ops, &stored(4, 1, rows), "limit_reached_truthful");
        // Naming none is not judged.
        let (mut ops, rows) = good();
        ops.add(1, LimitReached(None));
        assert_eq!(failed(&ops, &stored(4, 1, rows)), BTreeSet::new());
    }

    #[test]
    fn unknown_item_after_the_item_answered_fails() {
        let (mut ops, rows) = good();
        ops.add(20, UnknownItem);
        fails_only(&ops, &stored(4, 1, rows), "unknown_item_truthful");
        // Before any answer from the script, the item may not have been loaded yet.
        let (mut ops, rows) = good();
        let first = ops.add(20, UnknownItem);
        (first.span.invoked_ms, first.span.completed_ms) = (0, 1);
        assert_eq!(failed(&ops, &stored(4, 1, rows)), BTreeSet::new());
    }

    #[test]
    fn oversell_and_a_user_over_the_limit_fail() {
        let (ops, rows) = good();
        fails_only(&ops, &stored(3, 1, rows), "orders_within_stock");
        let (mut ops, mut rows) = good();
        ops.add(1, Accepted(OrderId(130)));
        rows.push(row(130, 1, AwaitingPayment));
        fails_only(&ops, &stored(5, 1, rows), "orders_within_user_limit");
    }

    #[test]
    fn answers_are_read_as_documented() {
        let read = |status: u16, body: &str| {
            Outcome::from_answer(StatusCode::from_u16(status).unwrap(), body.as_bytes())
        };
        assert_eq!(
            read(202, r#"{"order_id":"7","status":"PENDING"}"#),
            Accepted(OrderId(7))
        );
        assert_eq!(read(409, r#"{"error":"sold_out","message":"x"}"#), SoldOut);
        assert_eq!(
            read(
                409,
                r#"{"error":"limit_reached","message":"x","order_id":"8"}"#
            ),
            LimitReached(Some(OrderId(8)))
        );
        assert_eq!(
            read(409, r#"{"error":"limit_reached"}"#),
            LimitReached(None)
        );
        assert_eq!(read(409, r#"{"error":"not_started"}"#), NotStarted);
        assert_eq!(read(409, r#"{"error":"ended"}"#), Ended);
        assert_eq!(read(404, r#"{"error":"unknown_item"}"#), UnknownItem);
        assert_eq!(read(503, r#"{"error":"unavailable"}"#), Unavailable);
        assert_eq!(read(503, r#"{"error":"recovering"}"#), Recovering);
        assert_eq!(
            read(503, r#"{"error":"outcome_unknown","order_id":"9"}"#),
            OutcomeUnknown(OrderId(9))
        );
        assert_eq!(read(429, r#"{"error":"rate_limited"}"#), RateLimited);
        assert_eq!(
            read(500, r#"{"error":"internal"}"#),
            Other(500, "internal".into())
        );
        assert_eq!(read(502, "bad gateway"), Other(502, String::new()));
        assert!(read(500, "").cut_off() && !read(400, "").cut_off());
    }

    #[tokio::test]
    async fn a_request_dropped_in_flight_is_indeterminate() {
        let history = History::new();
        let seq = history.invoke(UserId(1), ITEM, 1, Some("k"), "http://gw");
        assert_eq!(history.ops()[0].note.as_deref(), Some("still in flight"));
        drop(InFlight {
            history: &history,
            seq,
        });
        let ops = history.ops();
        assert_eq!(ops[0].outcome, Indeterminate);
        assert!(ops[0].note.as_deref().unwrap().contains("dropped"));
        // Nothing listens: the request fails at once and is recorded as cut off.
        let config = Config::from_env().unwrap();
        let client = Client::new(&history, &config, "http://127.0.0.1:9/");
        assert_eq!(client.buy(UserId(2), ITEM, 1, None).await, Indeterminate);
        assert_eq!(history.len(), 2);
        assert!(history.to_json().contains("\"Indeterminate\""));
    }
}
