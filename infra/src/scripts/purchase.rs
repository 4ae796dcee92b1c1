//! The hot path's script, `lua/purchase.lua`: a batch of purchases of one gene in one call, each
//! run as if it were alone (sale window, idempotency key, the buyer's limit, stock, the order's
//! read model and its outbox entry), and its answers decoded at once.

use super::{BadScriptReply, Scripts};
use fred::prelude::*;
use seckill_schema::keys::Keys;
use seckill_schema::snowflake::gene_of;
use seckill_schema::{ItemId, OrderId, Quantity, UserId};

pub const PURCHASE: &str = concat!(
    include_str!("../../../lua/record.lua"),
    include_str!("../../../lua/purchase.lua")
);

/// The largest difference between an order id's time (the minting gateway's clock) and Redis's
/// clock at which it still sells: a gateway whose clock is further off than this sells nothing
/// (`503 unavailable`) until it is set right.
pub const MAX_CLOCK_SKEW_MS: u64 = 30 * 60 * 1000;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purchase {
    Accepted {
        order_id: OrderId,
        created_at_ms: i64,
    },
    Replayed {
        order_id: OrderId,
    },
    UnknownItem,
    NotStarted,
    Ended,
    LimitReached {
        order_id: Option<OrderId>,
    },
    SoldOut {
        remaining: i64,
    },
    /// Redis lost the gene's state; it is being rebuilt from the database. Nothing was sold.
    Recovering,
    /// The order id was declared unknown to its owner while this purchase was in flight, or its
    /// time is too far from Redis's clock.
    Void,
    /// The item's shards are not what the request assumed (`PATCH` changed them): nothing was
    /// sold; ask again with the item's layout read anew.
    Relayout,
}

impl Purchase {
    /// One purchase's three values of `lua/purchase.lua`'s answer: code, value, accepted ms.
    fn decode(reply: &[Value]) -> Result<Purchase, BadScriptReply> {
        let bad = || BadScriptReply(format!("{reply:?}"));
        let code = reply.first().and_then(|v| v.as_i64()).ok_or_else(bad)?;
        let text = reply.get(1).and_then(|v| v.as_string()).unwrap_or_default();
        let id = || text.parse::<u64>().ok().map(OrderId);
        Ok(match code {
            0 => Purchase::Accepted {
                order_id: id().ok_or_else(bad)?,
                created_at_ms: reply
                    .get(2)
                    .and_then(|v| v.as_string())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?,
            },
            1 => Purchase::UnknownItem,
            2 => Purchase::NotStarted,
            3 => Purchase::Ended,
            4 => Purchase::Replayed {
                order_id: id().ok_or_else(bad)?,
            },
            5 => Purchase::LimitReached { order_id: id() },
            6 => Purchase::SoldOut {
                remaining: text.parse().map_err(|_| bad())?,
            },
            7 => Purchase::Recovering,
            8 => Purchase::Void,
            10 => Purchase::Relayout,
            _ => return Err(bad()),
        })
    }
}

/// One purchase. Its order id carries the buyer's home shard's gene, where it runs.
pub struct PurchaseRequest<'a> {
    pub order_id: OrderId,
    pub user: UserId,
    pub item: ItemId,
    pub quantity: Quantity,
    pub idempotency_key: Option<&'a str>,
    /// The item's shards as the caller knows them; the script refuses a purchase that assumed
    /// another layout.
    pub shards: u8,
}

/// What the purchases of one item's shard share in a batch: its keys and its id, built once.
struct ItemArgs {
    item: ItemId,
    gene: u8,
    item_key: Key,
    buyers: Key,
    outbox: Key,
    no_idempotency: Key,
    state: Key,
    id: Value,
}

impl ItemArgs {
    fn new(k: &Keys, item: ItemId, gene: u8) -> ItemArgs {
        ItemArgs {
            item,
            gene,
            item_key: k.item_in(item, gene).into(),
            buyers: k.buyers_in(item, gene).into(),
            outbox: k.outbox(gene).into(),
            no_idempotency: k.no_idempotency(gene).into(),
            state: k.state(gene).into(),
            id: Value::from(item.0.to_string()),
        }
    }
}

/// Why a purchase has no answer, told apart by whether it may have run.
#[derive(Debug, thiserror::Error)]
pub enum PurchaseFailure {
    /// Nothing reached Redis, or Redis refused the script before it could sell: nothing was sold.
    #[error("the purchase was not run: {0}")]
    NotRun(fred::error::Error),
    /// The purchase was sent and no answer came back: it may have sold.
    #[error("the purchase may have run: {0}")]
    MaybeRan(fred::error::Error),
    #[error(transparent)]
    Reply(#[from] BadScriptReply),
}

/// Did Redis itself answer with an error (`ERR`, `NOSCRIPT`, `READONLY`, `LOADING`, `BUSY`, `OOM`,
/// …)? Then the script did not sell: its first write comes after every check.
fn refused_by_server(e: &fred::error::Error) -> bool {
    let first = e.details().split_whitespace().next().unwrap_or("");
    first.len() >= 3 && first.bytes().all(|b| b.is_ascii_uppercase())
}

/// Per-command options of the purchase: never queued while disconnected and never written twice,
/// so that a purchase the gateway gave up on cannot run later behind its back.
fn once() -> fred::types::config::Options {
    fred::types::config::Options {
        max_attempts: Some(1),
        fail_fast: true,
        ..Default::default()
    }
}

impl Scripts {
    /// The hot path's one round trip, for one purchase.
    pub async fn purchase(
        &self,
        client: &Client,
        req: &PurchaseRequest<'_>,
    ) -> Result<Purchase, PurchaseFailure> {
        self.purchase_all(client, std::slice::from_ref(req))
            .await
            .pop()
            .unwrap_or_else(|| Err(BadScriptReply("no answer for a purchase".into()).into()))
    }

    /// Purchases of one gene (one hash slot) in one call of `lua/purchase.lua`, each run as if it
    /// were alone, in order: the answer of each. A failure of the call itself is every
    /// purchase's.
    pub async fn purchase_all(
        &self,
        client: &Client,
        reqs: &[PurchaseRequest<'_>],
    ) -> Vec<Result<Purchase, PurchaseFailure>> {
        let every = |failure: fn(fred::error::Error) -> PurchaseFailure, e: fred::error::Error| {
            reqs.iter().map(|_| Err(failure(e.clone()))).collect()
        };
        if !client.is_connected() {
            let e = fred::error::Error::new(fred::error::ErrorKind::IO, "not connected to Redis");
            return every(PurchaseFailure::NotRun, e);
        }
        let call = |(keys, args): (Vec<Key>, Vec<Value>)| async move {
            client
                .with_options(&once())
                .evalsha::<Vec<Value>, _, _, _>(self.purchase.sha1().clone(), keys, args)
                .await
        };
        let mut reply = call(self.purchase_args(reqs)).await;
        if let Err(e) = &reply
            && e.details().starts_with("NOSCRIPT")
        {
            // Only after a Redis restart or SCRIPT FLUSH: load it and go again. (fred's
            // `evalsha_with_reload` copies every key and argument up front for this case, whatever
            // happens; here only the rare case builds them twice.)
            if let Err(e) = self.purchase.load(client).await {
                return every(PurchaseFailure::NotRun, e);
            }
            reply = call(self.purchase_args(reqs)).await;
        }
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if refused_by_server(&e) => return every(PurchaseFailure::NotRun, e),
            Err(e) => return every(PurchaseFailure::MaybeRan, e),
        };
        if reply.len() != 3 * reqs.len() {
            let bad = format!(
                "{} values for {} purchases: {reply:?}",
                reply.len(),
                reqs.len()
            );
            return reqs
                .iter()
                .map(|_| Err(BadScriptReply(bad.clone()).into()))
                .collect();
        }
        reply
            .chunks(3)
            .map(|answer| match answer.first().and_then(Value::as_i64) {
                // Redis refused this purchase's first write (or a read failed): nothing sold.
                Some(9) => Err(PurchaseFailure::NotRun(fred::error::Error::new(
                    fred::error::ErrorKind::Unknown,
                    answer[1].as_string().unwrap_or_default(),
                ))),
                _ => Purchase::decode(answer).map_err(Into::into),
            })
            .collect()
    }

    /// The purchases' keys and arguments, seven keys and six values each and the allowed clock
    /// skew last, in `lua/purchase.lua`'s order. A sale's
    /// batch is mostly one hot item: its five keys and its id are built once per run of
    /// purchases of the same item and shared (fred's keys and values are reference-counted
    /// bytes), so a purchase costs four strings of its own instead of fourteen.
    fn purchase_args(&self, reqs: &[PurchaseRequest<'_>]) -> (Vec<Key>, Vec<Value>) {
        let mut keys: Vec<Key> = Vec::with_capacity(7 * reqs.len());
        let mut args: Vec<Value> = Vec::with_capacity(7 * reqs.len() + 1);
        let ttl = Value::from(IDEMPOTENCY_TTL_SECS.to_string());
        let (with_key, without_key) = (Value::from_static_str("1"), Value::from_static_str("0"));
        let k = &self.keys;
        let mut shared: Option<ItemArgs> = None;
        for req in reqs {
            let gene = gene_of(req.order_id.0);
            let item = match &shared {
                Some(s) if s.item == req.item && s.gene == gene => s,
                _ => shared.insert(ItemArgs::new(k, req.item, gene)),
            };
            keys.extend([
                item.item_key.clone(),
                item.buyers.clone(),
                Key::from(k.order(req.order_id)),
                item.outbox.clone(),
                match req.idempotency_key {
                    Some(key) => Key::from(k.idempotency(req.item, gene, req.user, key)),
                    None => item.no_idempotency.clone(),
                },
                item.state.clone(),
                Key::from(k.void(req.order_id)),
            ]);
            const SHARDS: [&str; 17] = [
                "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14",
                "15", "16",
            ];
            args.extend([
                Value::from(req.order_id.0.to_string()),
                Value::from(req.user.0.to_string()),
                Value::from(req.quantity.get().to_string()),
                item.id.clone(),
                if req.idempotency_key.is_some() {
                    with_key.clone()
                } else {
                    without_key.clone()
                },
                ttl.clone(),
                Value::from_static_str(SHARDS[usize::from(req.shards.min(16))]),
            ]);
        }
        args.push(Value::from(MAX_CLOCK_SKEW_MS.to_string()));
        (keys, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purchase_args_are_seven_keys_and_seven_values_per_purchase_in_order() {
        let scripts = Scripts::new(Keys::new("t"));
        let k = &scripts.keys;
        let (a, b) = (ItemId(7), ItemId(8));
        let q = Quantity::new(2).unwrap();
        // Order ids' low bits are their home genes: 7 (item a's own), 8 (a's shard 1, b's own).
        let req = |order: u64, user: u64, item: ItemId, idem: Option<&'static str>, shards: u8| {
            PurchaseRequest {
                order_id: OrderId(order),
                user: UserId(user),
                item,
                quantity: q,
                idempotency_key: idem,
                shards,
            }
        };
        let reqs = [
            req(0x17, 10, a, None, 2),
            req(0x27, 11, a, Some("key"), 2),
            req(0x38, 12, b, None, 1),
            req(0x48, 13, a, None, 2),
        ];
        let (keys, args) = scripts.purchase_args(&reqs);
        let keys: Vec<String> = keys
            .iter()
            .map(|key| key.as_str().unwrap().to_owned())
            .collect();
        let args: Vec<String> = args.iter().map(|v| v.as_string().unwrap()).collect();
        let mut want_keys = Vec::new();
        let mut want_args = Vec::new();
        for r in &reqs {
            let gene = gene_of(r.order_id.0);
            want_keys.extend([
                k.item_in(r.item, gene),
                k.buyers_in(r.item, gene),
                k.order(r.order_id),
                k.outbox(gene),
                match r.idempotency_key {
                    Some(key) => k.idempotency(r.item, gene, r.user, key),
                    None => k.no_idempotency(gene),
                },
                k.state(gene),
                k.void(r.order_id),
            ]);
            want_args.extend([
                r.order_id.0.to_string(),
                r.user.0.to_string(),
                "2".to_owned(),
                r.item.0.to_string(),
                if r.idempotency_key.is_some() {
                    "1"
                } else {
                    "0"
                }
                .to_owned(),
                IDEMPOTENCY_TTL_SECS.to_string(),
                r.shards.to_string(),
            ]);
        }
        assert_eq!(keys, want_keys);
        want_args.push(MAX_CLOCK_SKEW_MS.to_string());
        assert_eq!(args, want_args);
    }

    #[test]
    fn server_errors_are_told_from_lost_answers() {
        use fred::error::{Error, ErrorKind};
        assert!(refused_by_server(&Error::new(
            ErrorKind::Unknown,
            "READONLY You can't write against a read only replica."
        )));
        assert!(refused_by_server(&Error::new(
            ErrorKind::Unknown,
            "LOADING Redis is loading the dataset in memory"
        )));
        assert!(!refused_by_server(&Error::new(
            ErrorKind::IO,
            "Connection closed."
        )));
        assert!(!refused_by_server(&Error::new(
            ErrorKind::Timeout,
            "Request timed out."
        )));
        assert!(!refused_by_server(&Error::new(
            ErrorKind::Unknown,
            "Too many failed write attempts."
        )));
    }
}
