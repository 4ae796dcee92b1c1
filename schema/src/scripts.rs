//! The Lua scripts of `lua/`, loaded with `include_str!`, and the decoding of their answers into
//! Rust types at once: no magic numbers travel further than this module.

use crate::ids::{ItemId, OrderId, Quantity, UserId};
use crate::keys::Keys;
use crate::snowflake::now_ms;
use crate::status::OrderStatus;
use fred::prelude::*;
use fred::types::scripts::Script;

pub const PURCHASE: &str = include_str!("../../lua/purchase.lua");
pub const RELEASE: &str = include_str!("../../lua/release.lua");
pub const SET_STATUS: &str = include_str!("../../lua/set_status.lua");
pub const WARM_ITEM: &str = include_str!("../../lua/warm_item.lua");
pub const LEASE: &str = include_str!("../../lua/lease.lua");
pub const TRIM_OUTBOX: &str = include_str!("../../lua/trim_outbox.lua");

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
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected answer from a Lua script: {0}")]
pub struct BadScriptReply(pub String);

impl Purchase {
    fn decode(reply: Vec<Value>) -> Result<Purchase, BadScriptReply> {
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
            _ => return Err(bad()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Reply(#[from] BadScriptReply),
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Returned,
    AlreadyReturned,
    UnknownOrder,
}

/// A status change of the read model, with the payment to show, if any.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub payment: Option<(String, i64, String)>,
}

#[derive(Clone)]
pub struct Scripts {
    keys: Keys,
    purchase: Script,
    release: Script,
    set_status: Script,
    warm_item: Script,
    lease: Script,
    trim_outbox: Script,
}

pub struct PurchaseRequest<'a> {
    pub order_id: OrderId,
    pub user: UserId,
    pub item: ItemId,
    pub quantity: Quantity,
    pub idempotency_key: Option<&'a str>,
}

impl Scripts {
    pub fn new(keys: Keys) -> Self {
        Scripts {
            keys,
            purchase: Script::from_lua(PURCHASE),
            release: Script::from_lua(RELEASE),
            set_status: Script::from_lua(SET_STATUS),
            warm_item: Script::from_lua(WARM_ITEM),
            lease: Script::from_lua(LEASE),
            trim_outbox: Script::from_lua(TRIM_OUTBOX),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The hot path's one round trip.
    pub async fn purchase(
        &self,
        client: &Client,
        req: &PurchaseRequest<'_>,
    ) -> Result<Purchase, ScriptError> {
        let k = &self.keys;
        let idem = match req.idempotency_key {
            Some(key) => k.idempotency(req.item, req.user, key),
            None => k.no_idempotency(req.item),
        };
        let keys = vec![
            k.item(req.item),
            k.buyers(req.item),
            k.order(req.order_id),
            k.outbox(crate::keys::gene_of_item(req.item)),
            idem,
        ];
        let args = vec![
            req.order_id.0.to_string(),
            req.user.0.to_string(),
            req.quantity.get().to_string(),
            req.item.0.to_string(),
            if req.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }
            .to_owned(),
            IDEMPOTENCY_TTL_SECS.to_string(),
            now_ms().to_string(),
        ];
        let reply: Vec<Value> = match client
            .evalsha(self.purchase.sha1().clone(), keys, args)
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                // Only after a Redis restart or SCRIPT FLUSH: load it and go again. (fred's
                // `evalsha_with_reload` clones every key and argument up front for this case.)
                self.purchase.load(client).await?;
                return Box::pin(self.purchase(client, req)).await;
            }
            other => other?,
        };
        Ok(Purchase::decode(reply)?)
    }

    /// Closes an order in the read model and gives its units back to Redis, once.
    pub async fn release(
        &self,
        client: &Client,
        order_id: OrderId,
        user: UserId,
        item: ItemId,
        quantity: i64,
        status: OrderStatus,
    ) -> Result<Released, ScriptError> {
        let k = &self.keys;
        let keys = vec![k.item(item), k.buyers(item), k.order(order_id)];
        let args = vec![
            order_id.0.to_string(),
            user.0.to_string(),
            quantity.to_string(),
            status.as_str().to_owned(),
            status.rank().to_string(),
            now_ms().to_string(),
        ];
        let n: i64 = self.release.evalsha_with_reload(client, keys, args).await?;
        Ok(match n {
            1 => Released::Returned,
            0 => Released::AlreadyReturned,
            _ => Released::UnknownOrder,
        })
    }

    /// Moves read-model statuses forward, one script call per hash slot.
    pub async fn set_statuses(
        &self,
        client: &Client,
        updates: &[StatusUpdate],
    ) -> Result<(), ScriptError> {
        let mut by_gene: std::collections::BTreeMap<u8, Vec<&StatusUpdate>> = Default::default();
        for u in updates {
            by_gene
                .entry(crate::snowflake::gene_of(u.order_id.0))
                .or_default()
                .push(u);
        }
        let now = now_ms().to_string();
        for group in by_gene.values() {
            for chunk in group.chunks(500) {
                let keys: Vec<String> = chunk.iter().map(|u| self.keys.order(u.order_id)).collect();
                let mut args = Vec::with_capacity(1 + chunk.len() * 5);
                args.push(now.clone());
                for u in chunk {
                    args.push(u.status.as_str().to_owned());
                    args.push(u.status.rank().to_string());
                    match &u.payment {
                        Some((id, amount, status)) => {
                            args.push(id.clone());
                            args.push(amount.to_string());
                            args.push(status.clone());
                        }
                        None => args.extend([String::new(), String::new(), String::new()]),
                    }
                }
                let _: i64 = self
                    .set_status
                    .evalsha_with_reload(client, keys, args)
                    .await?;
            }
        }
        Ok(())
    }

    /// Loads an item into Redis unless it is there already. True when it was loaded now.
    #[allow(clippy::too_many_arguments)]
    pub async fn warm_item(
        &self,
        client: &Client,
        item: ItemId,
        stock: i64,
        per_user_limit: i32,
        price_cents: i64,
        starts_at_ms: Option<i64>,
        ends_at_ms: Option<i64>,
        name: &str,
    ) -> Result<bool, ScriptError> {
        let args = vec![
            stock.to_string(),
            per_user_limit.to_string(),
            price_cents.to_string(),
            starts_at_ms.unwrap_or(0).to_string(),
            ends_at_ms.unwrap_or(0).to_string(),
            name.to_owned(),
        ];
        let n: i64 = self
            .warm_item
            .evalsha_with_reload(client, vec![self.keys.item(item)], args)
            .await?;
        Ok(n == 1)
    }

    /// Drops the outbox entries the relay group is done with (see `lua/trim_outbox.lua`).
    pub async fn trim_outbox(
        &self,
        client: &Client,
        stream: &str,
        group: &str,
    ) -> Result<i64, ScriptError> {
        Ok(self
            .trim_outbox
            .evalsha_with_reload(client, vec![stream.to_owned()], vec![group.to_owned()])
            .await?)
    }

    /// Takes or renews a node lease; `Some(high water ms)` when it is ours.
    pub async fn lease(
        &self,
        client: &Client,
        node: u16,
        token: &str,
        ttl_ms: u64,
        high_water_ms: u64,
    ) -> Result<Option<u64>, ScriptError> {
        let keys = vec![self.keys.node_lease(node), self.keys.node_high_water(node)];
        let args = vec![
            token.to_owned(),
            ttl_ms.to_string(),
            high_water_ms.to_string(),
        ];
        let n: i64 = self.lease.evalsha_with_reload(client, keys, args).await?;
        Ok((n >= 0).then_some(n as u64))
    }
}
