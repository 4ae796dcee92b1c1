//! A stand-in payment provider. It finds the orders awaiting payment and pays a share of them
//! through the gateway's real webhook, signed as the provider would sign, with the faults real
//! providers have: duplicate deliveries, reordering, wrong amounts and failed payments.

use crate::http::HttpClient;
use anyhow::Context;
use fred::prelude::*;
use futures_util::StreamExt;
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use seckill_infra::Config;
use seckill_infra::auth::WebhookSigner;
use seckill_schema::{ItemId, Keys, OrderId, PaymentOutcome};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Callbacks in flight at once.
pub const CONCURRENCY: usize = 64;
/// A callback answered 5xx, or not at all, is delivered again, as providers do.
const ATTEMPTS: usize = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The faults real providers have, as shares of the callbacks. The default has none; the fields
/// are `seckill-bench`'s flags too.
#[derive(Debug, Clone, Copy, Default, PartialEq, clap::Args)]
pub struct Faults {
    /// Share of the callbacks delivered twice, with the same payment_id.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub duplicates: f64,
    /// Deliver the callbacks in random order instead of by order id, duplicates included.
    #[arg(long)]
    pub reorder: bool,
    /// Share of the paid orders whose callback carries a wrong amount.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub wrong_amount: f64,
    /// Share of the paid orders whose payment FAILED.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub fail: f64,
}

/// A share given on the command line: a number from 0 to 1.
pub fn fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err("must be between 0 and 1".to_owned())
    }
}

#[derive(Debug, Clone)]
pub struct PayOptions {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    pub database_url: String,
    pub redis_url: String,
    /// Only orders whose read model lives in this namespace are paid: those its gateway knows.
    pub namespace: String,
    pub webhook_secret: String,
    /// Only this item's orders; all items when `None`.
    pub item: Option<ItemId>,
    /// Share of the orders awaiting payment that get a callback.
    pub ratio: f64,
    /// Wait before the first callback.
    pub delay: Duration,
    pub faults: Faults,
    pub concurrency: usize,
}

impl PayOptions {
    /// Pay every order awaiting payment, once, correctly.
    pub fn new(config: &Config, gateway: &str) -> PayOptions {
        PayOptions {
            gateway: gateway.trim_end_matches('/').to_owned(),
            database_url: config.database_url.clone(),
            redis_url: config.redis_url.clone(),
            namespace: config.namespace.clone(),
            webhook_secret: config.webhook_secret.clone(),
            item: None,
            ratio: 1.0,
            delay: Duration::ZERO,
            faults: Faults::default(),
            concurrency: CONCURRENCY,
        }
    }
}

/// What a callback means to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// `SUCCEEDED` with the order's amount: the order must end `PAID` (or `REFUND_REQUIRED`).
    Pay,
    /// `SUCCEEDED` with the amount off by one cent: never `PAID`.
    WrongAmount,
    /// `FAILED`: recorded, the order keeps waiting.
    Fail,
    /// `REFUNDED` for a payment the provider owes back: the order it paid, or that paid a closed
    /// order, ends `REFUNDED`.
    Refund,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub payment_id: String,
    pub order_id: OrderId,
    pub intent: Intent,
    pub amount_cents: i64,
    pub duplicate: bool,
}

/// The payment id this provider pays an order with: the one its intent shows.
pub fn payment_id_of(order_id: OrderId) -> String {
    seckill_schema::record::intent_id(order_id)
}

impl Callback {
    pub fn body(&self) -> serde_json::Value {
        let status = match self.intent {
            Intent::Pay | Intent::WrongAmount => PaymentOutcome::Succeeded,
            Intent::Fail => PaymentOutcome::Failed,
            Intent::Refund => PaymentOutcome::Refunded,
        };
        serde_json::json!({
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "status": status.as_str(),
            "amount_cents": self.amount_cents,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PayReport {
    /// Orders awaiting payment that this namespace's gateway knows.
    pub awaiting: usize,
    /// Orders awaiting payment in the database that this namespace does not know; left alone.
    pub elsewhere: usize,
    /// Orders that got a callback.
    pub chosen: usize,
    pub paid: usize,
    pub wrong_amount: usize,
    pub failed: usize,
    /// Refunds confirmed (`REFUNDED` callbacks for the refunds owed).
    pub refunds: usize,
    pub duplicates: usize,
    /// Answers by status code (`"error"`: none, after every attempt).
    pub answers: BTreeMap<String, usize>,
    /// The orders whose callback the gateway accepted (`200`), with what it meant.
    #[serde(skip)]
    pub accepted: BTreeMap<OrderId, Intent>,
}

impl PayReport {
    /// Orders paid correctly, as far as the gateway acknowledged.
    pub fn paid_orders(&self) -> impl Iterator<Item = OrderId> + '_ {
        self.accepted
            .iter()
            .filter(|(_, i)| **i == Intent::Pay)
            .map(|(o, _)| *o)
    }
}

fn share(n: usize, fraction: f64) -> usize {
    (n as f64 * fraction.clamp(0.0, 1.0)).round() as usize
}

/// The callbacks to deliver, in delivery order, for orders `(id, amount)` awaiting payment.
pub fn plan(orders: &[(OrderId, i64)], opts: &PayOptions, rng: &mut impl Rng) -> Vec<Callback> {
    let mut chosen = orders.to_vec();
    chosen.shuffle(rng);
    chosen.truncate(share(orders.len(), opts.ratio));
    let faults = opts.faults;
    let failed = share(chosen.len(), faults.fail);
    let wrong = share(chosen.len(), faults.wrong_amount).min(chosen.len() - failed);
    let mut calls: Vec<Callback> = chosen
        .iter()
        .enumerate()
        .map(|(i, &(order_id, amount))| {
            let intent = if i < failed {
                Intent::Fail
            } else if i < failed + wrong {
                Intent::WrongAmount
            } else {
                Intent::Pay
            };
            Callback {
                payment_id: payment_id_of(order_id),
                order_id,
                intent,
                amount_cents: amount + i64::from(intent == Intent::WrongAmount),
                duplicate: false,
            }
        })
        .collect();
    calls.sort_by_key(|c| c.order_id);
    let copies: Vec<Callback> = calls
        .choose_multiple(rng, share(calls.len(), faults.duplicates))
        .map(|c| Callback {
            duplicate: true,
            ..c.clone()
        })
        .collect();
    // Without reordering, duplicates come last, like a provider's retries.
    calls.extend(copies);
    if faults.reorder {
        calls.shuffle(rng);
    }
    calls
}

/// Finds orders awaiting payment and pays `opts.ratio` of them through the webhook; and confirms
/// every refund owed (`REFUNDED` with the payment's own id), as a provider does once it has given
/// the money back.
pub async fn pay(opts: &PayOptions) -> anyhow::Result<PayReport> {
    let db = crate::db::connect(&opts.database_url).await?;
    let awaiting = crate::db::awaiting_payment(&db, opts.item).await;
    let owed = crate::db::refunds_owed(&db, opts.item).await;
    let _ = db.close().await;
    let (awaiting, owed) = (awaiting?, owed?);
    let known = known_here(opts, &awaiting).await?;
    let mut calls = plan(&known, opts, &mut rand::rng());
    let owed_orders: Vec<(i64, i64)> = owed.iter().map(|(o, _, a)| (*o, *a)).collect();
    let owed_here: std::collections::HashSet<OrderId> = known_here(opts, &owed_orders)
        .await?
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    calls.extend(
        owed.into_iter()
            .filter(|(o, _, _)| owed_here.contains(&OrderId(*o as u64)))
            .map(|(order, payment_id, amount_cents)| Callback {
                payment_id,
                order_id: OrderId(order as u64),
                intent: Intent::Refund,
                amount_cents,
                duplicate: false,
            }),
    );

    let mut report = PayReport {
        awaiting: known.len(),
        elsewhere: awaiting.len() - known.len(),
        ..PayReport::default()
    };
    for c in &calls {
        match (c.duplicate, c.intent) {
            (true, _) => report.duplicates += 1,
            (false, Intent::Pay) => report.paid += 1,
            (false, Intent::WrongAmount) => report.wrong_amount += 1,
            (false, Intent::Fail) => report.failed += 1,
            (false, Intent::Refund) => report.refunds += 1,
        }
    }
    report.chosen = calls.len() - report.duplicates - report.refunds;

    tokio::time::sleep(opts.delay).await;
    let client = HttpClient::default();
    let signer = WebhookSigner::new(&opts.webhook_secret);
    let url = format!("{}/payment/callback", opts.gateway.trim_end_matches('/'));
    let (client, signer, url) = (&client, &signer, url.as_str());
    let mut answers = futures_util::stream::iter(&calls)
        .map(|c| async move {
            let answer = deliver(client, signer, url, c).await;
            (c, answer)
        })
        .buffer_unordered(opts.concurrency.max(1));
    while let Some((call, answer)) = answers.next().await {
        let key = match answer {
            Ok(status) => status.as_u16().to_string(),
            Err(e) => {
                tracing::debug!(order.id = %call.order_id, error = %e, "callback undelivered");
                "error".to_owned()
            }
        };
        if key == "200" {
            report.accepted.insert(call.order_id, call.intent);
        }
        *report.answers.entry(key).or_default() += 1;
    }
    Ok(report)
}

/// Keeps the orders whose read model exists in this namespace: the only ones its gateway accepts
/// callbacks for, and the only ones that are this deployment's when several share a database.
async fn known_here(
    opts: &PayOptions,
    orders: &[(i64, i64)],
) -> anyhow::Result<Vec<(OrderId, i64)>> {
    let redis = seckill_infra::redis::client(&opts.redis_url).await?;
    let keys = Keys::new(&opts.namespace);
    let checks = orders.iter().map(|&(id, amount)| {
        let order = OrderId(id as u64);
        let redis = &redis;
        let key = keys.order(order);
        async move {
            let exists: i64 = redis.exists(key).await?;
            anyhow::Ok((exists == 1).then_some((order, amount)))
        }
    });
    let found = futures_util::future::try_join_all(checks).await;
    let _ = redis.quit().await;
    Ok(found
        .context("looking up orders in Redis")?
        .into_iter()
        .flatten()
        .collect())
}

async fn deliver(
    client: &HttpClient,
    signer: &WebhookSigner,
    url: &str,
    call: &Callback,
) -> anyhow::Result<http::StatusCode> {
    let body = serde_json::to_vec(&call.body())?;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE * attempt as u32).await;
        }
        let signature = signer.header(chrono::Utc::now().timestamp(), &body);
        let headers = [
            ("content-type", "application/json"),
            ("x-seckill-signature", signature.as_str()),
        ];
        match client
            .send(http::Method::POST, url, &headers, body.clone().into())
            .await
        {
            Ok((status, _)) if !status.is_server_error() => return Ok(status),
            Ok((status, _)) => last = Some(anyhow::anyhow!("answered {status}")),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("never sent")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PayOptions {
        PayOptions {
            gateway: String::new(),
            database_url: String::new(),
            redis_url: String::new(),
            namespace: String::new(),
            webhook_secret: String::new(),
            item: None,
            ratio: 0.5,
            delay: Duration::ZERO,
            faults: Faults {
                duplicates: 0.5,
                reorder: false,
                wrong_amount: 0.2,
                fail: 0.2,
            },
            concurrency: 1,
        }
    }

    #[test]
    fn plans_the_requested_shares() {
        let orders: Vec<(OrderId, i64)> = (1..=20).map(|i| (OrderId(i), 100)).collect();
        let calls = plan(&orders, &opts(), &mut rand::rng());
        let originals: Vec<&Callback> = calls.iter().filter(|c| !c.duplicate).collect();
        assert_eq!(originals.len(), 10);
        assert!(originals.windows(2).all(|w| w[0].order_id < w[1].order_id));
        let count = |i: Intent| originals.iter().filter(|c| c.intent == i).count();
        assert_eq!(
            (
                count(Intent::Fail),
                count(Intent::WrongAmount),
                count(Intent::Pay)
            ),
            (2, 2, 6)
        );
        for c in &originals {
            let expected = if c.intent == Intent::WrongAmount {
                101
            } else {
                100
            };
            assert_eq!(c.amount_cents, expected);
        }
        let copies: Vec<&Callback> = calls.iter().filter(|c| c.duplicate).collect();
        assert_eq!(copies.len(), 5);
        assert!(
            calls[10..].iter().all(|c| c.duplicate),
            "duplicates come last"
        );
        assert!(
            copies
                .iter()
                .all(|d| originals.iter().any(|o| o.order_id == d.order_id
                    && o.intent == d.intent
                    && o.amount_cents == d.amount_cents))
        );
    }

    #[test]
    fn callback_bodies_follow_the_contract() {
        let c = Callback {
            payment_id: payment_id_of(OrderId(42)),
            order_id: OrderId(42),
            intent: Intent::Fail,
            amount_cents: 990,
            duplicate: false,
        };
        assert_eq!(
            c.body(),
            serde_json::json!({"payment_id": "pay_42", "order_id": "42", "status": "FAILED", "amount_cents": 990})
        );
    }
}
