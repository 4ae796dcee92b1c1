//! The order saga: one function per message type, from a batch of events to the database changes
//! (committed in one transaction) and the effects that follow the commit (the Redis read model,
//! units back in Redis, the next messages).
//!
//! Every move is a conditional update on the current status of a row locked for the batch, so a
//! redelivered event changes nothing twice. And every handler re-drives what follows from the
//! order's *current* status rather than stopping at "already done": a crash between a commit and
//! its publishes is repaired by the redelivery.

use crate::store::{self, Ledger, NewPayment, OrderRow, Orders, invariant};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use seckill_infra::scripts::StatusUpdate;
use seckill_schema::messages::PaymentOutcome;
use seckill_schema::record::ShownPayment;
use seckill_schema::status::PaymentStatus;
use seckill_schema::{ItemId, Kind, Message, OrderEvent, OrderId, OrderStatus, PaymentEvent};
use std::collections::{BTreeMap, HashSet};

/// The events of one batch; one message type per batch.
#[derive(Debug, Clone)]
pub enum Batch {
    Orders(Vec<OrderEvent>),
    Payments(Vec<PaymentEvent>),
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::Orders(v) => v.len(),
            Batch::Payments(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What must happen after the commit, all of it idempotent.
#[derive(Debug, Default)]
pub struct Effects {
    pub publish: Vec<Message>,
    pub statuses: Vec<StatusUpdate>,
    /// Closed orders whose units go back to Redis (once; the release script guards it).
    pub releases: Vec<(OrderRow, OrderStatus)>,
    /// `ORDER_CREATED` events whose order id is stored already as another order (another buyer,
    /// item, quantity or amount): two processes minted one id. The stored order goes on as it is;
    /// these are an incident for a person, dead-lettered, never silently dropped.
    pub conflicts: Vec<OrderEvent>,
}

/// The payment each order should show.
type Shown = BTreeMap<OrderId, ShownPayment>;

pub async fn handle(db: &DatabaseConnection, kind: Kind, batch: &Batch) -> Result<Effects, DbErr> {
    let txn = db.begin().await?;
    let effects = match (kind, batch) {
        (Kind::OrderCreated, Batch::Orders(evs)) => order_created(&txn, evs).await?,
        (Kind::LockInventory, Batch::Orders(evs)) => lock_inventory(&txn, evs).await?,
        (Kind::PreparePayment, Batch::Orders(evs)) => prepare_payment(&txn, evs).await?,
        (Kind::OrderTimeout, Batch::Orders(evs)) => {
            close(&txn, evs, OrderStatus::TimedOut, "payment_timeout", false).await?
        }
        (Kind::OrderCancel, Batch::Orders(evs)) => {
            store::ensure_orders(&txn, evs).await?;
            close(
                &txn,
                evs,
                OrderStatus::Cancelled,
                "cancelled_by_buyer",
                false,
            )
            .await?
        }
        (Kind::InventoryCompensate, Batch::Orders(evs)) => {
            close(&txn, evs, OrderStatus::Failed, "insufficient_stock", true).await?
        }
        (Kind::PaymentResult, Batch::Payments(evs)) => payment_result(&txn, evs).await?,
        (Kind::OrderShip, Batch::Orders(evs)) => ship(&txn, evs).await?,
        (Kind::OrderComplete | Kind::OrderAutoComplete, Batch::Orders(evs)) => {
            let orders =
                after_payment(&txn, evs, OrderStatus::Shipped, OrderStatus::Completed).await?;
            finish(&txn, orders, Ledger::default(), Shown::new()).await?
        }
        (Kind::RefundRequest, Batch::Orders(evs)) => {
            let orders =
                after_payment(&txn, evs, OrderStatus::Paid, OrderStatus::RefundRequested).await?;
            finish(&txn, orders, Ledger::default(), Shown::new()).await?
        }
        (kind, _) => {
            return Err(invariant(format!(
                "a batch of the wrong shape for {kind:?}"
            )));
        }
    };
    txn.commit().await?;
    Ok(effects)
}

fn ids_of(events: &[OrderEvent]) -> Vec<OrderId> {
    events.iter().map(|e| e.order_id).collect()
}

/// The read model of every order of the batch, and Redis units back for the closed ones.
fn mirror(orders: &Orders, shown: &Shown, effects: &mut Effects) {
    mirror_some(orders.values(), shown, effects);
}

fn mirror_some<'a>(
    orders: impl Iterator<Item = &'a OrderRow>,
    shown: &Shown,
    effects: &mut Effects,
) {
    for o in orders {
        effects.statuses.push(StatusUpdate {
            order: o.event(),
            status: o.status,
            payment: shown.get(&o.id).cloned(),
        });
        if o.status.is_closed() {
            effects.releases.push((o.clone(), o.status));
        }
    }
}

impl Effects {
    /// The next step's messages for `orders`; `message` builds one message of that step from a
    /// chunk.
    fn follow_up<'a>(
        &mut self,
        message: fn(Vec<OrderEvent>) -> Message,
        orders: impl IntoIterator<Item = &'a OrderRow>,
    ) {
        let orders: Vec<&OrderRow> = orders.into_iter().collect();
        for chunk in orders.chunks(store::CHUNK) {
            self.publish
                .push(message(chunk.iter().map(|o| o.event()).collect()));
        }
    }
}

/// The items of the orders (of the batch) these payments are for.
fn items_paid_for<'a>(
    orders: &'a Orders,
    payments: &'a [store::PaymentRow],
) -> impl Iterator<Item = ItemId> + 'a {
    payments
        .iter()
        .filter_map(|p| orders.get(&p.order_id))
        .map(|o| o.item_id)
}

/// The orders of the batch in `status`.
fn in_status(orders: &Orders, status: OrderStatus) -> impl Iterator<Item = &OrderRow> {
    orders.values().filter(move |o| o.status == status)
}

async fn order_created(txn: &DatabaseTransaction, events: &[OrderEvent]) -> Result<Effects, DbErr> {
    // One event per id is stored; another order under the same id is held out of the insert.
    let mut seen = HashSet::new();
    let (firsts, extras): (Vec<OrderEvent>, Vec<OrderEvent>) = events
        .iter()
        .cloned()
        .partition(|e| seen.insert(e.order_id));
    let orders = store::insert_orders(txn, &firsts).await?;
    // A redelivered event finds its own order stored; one whose id holds another order's
    // contents is a conflict.
    let mut effects = Effects {
        conflicts: firsts
            .iter()
            .chain(&extras)
            .filter(|e| orders.get(&e.order_id).is_some_and(|o| !o.is(e)))
            .cloned()
            .collect(),
        ..Effects::default()
    };
    effects.follow_up(
        |events| Message::LockInventory { events },
        in_status(&orders, OrderStatus::Created),
    );
    effects.follow_up(
        |events| Message::OrderTimeout { events },
        orders.values().filter(|o| !o.status.is_final()),
    );
    mirror(&orders, &Shown::new(), &mut effects);
    Ok(effects)
}

async fn lock_inventory(
    txn: &DatabaseTransaction,
    events: &[OrderEvent],
) -> Result<Effects, DbErr> {
    let (mut orders, moved) = store::advance_orders(
        txn,
        &ids_of(events),
        OrderStatus::Created,
        OrderStatus::StockLocked,
    )
    .await?;
    let mut ledger = Ledger::default();
    ledger
        .load(
            txn,
            moved
                .iter()
                .filter_map(|id| orders.get(id))
                .map(|o| o.item_id),
        )
        .await?;
    let mut short = Vec::new();
    for id in &moved {
        let o = &orders[id];
        let q = o.units();
        if !ledger.apply(o, "lock", -q, q, 0) {
            short.push(o.id);
        }
    }
    if !short.is_empty() {
        // The database has no stock for these: they stay `CREATED`, and are compensated.
        store::move_orders(
            txn,
            &mut orders,
            &short,
            &[OrderStatus::StockLocked],
            OrderStatus::Created,
            None,
        )
        .await?;
    }
    ledger.flush(txn).await?;
    let short: Vec<&OrderRow> = short.iter().map(|id| &orders[id]).collect();
    let mut effects = Effects::default();
    effects.follow_up(
        |events| Message::PreparePayment { events },
        in_status(&orders, OrderStatus::StockLocked),
    );
    effects.follow_up(|events| Message::InventoryCompensate { events }, short);
    // `STOCK_LOCKED` is not written to the read model: `PREPARE_PAYMENT` follows at once and
    // writes `AWAITING_PAYMENT`, so a buyer sees `CREATED` a few milliseconds longer, and the
    // read model is rewritten twice per order on its way to payment instead of three times (a
    // third of the workers' Redis work per order). Nothing else depends on it: Redis counts the
    // order's units from its acceptance (or from `ORDER_CREATED`'s adoption after a rebuild), and
    // a rebuild reads `STOCK_LOCKED` orders from the database like any live order.
    mirror_some(
        orders
            .values()
            .filter(|o| o.status != OrderStatus::StockLocked),
        &Shown::new(),
        &mut effects,
    );
    Ok(effects)
}

/// `STOCK_LOCKED` → `AWAITING_PAYMENT`. The order's intent (its payment id and amount, which the
/// buyer is shown) is stored nowhere: the payments table keeps what the provider reports, and a
/// result that came first (under this very payment id) is applied by `finish`; an order awaiting
/// payment with no payment shows its intent, in the read model (`OrderRecord::from_pairs`) as in
/// the database's view (`infra::entity::payments::shown`).
async fn prepare_payment(
    txn: &DatabaseTransaction,
    events: &[OrderEvent],
) -> Result<Effects, DbErr> {
    let (orders, _) = store::advance_orders(
        txn,
        &ids_of(events),
        OrderStatus::StockLocked,
        OrderStatus::AwaitingPayment,
    )
    .await?;
    finish(txn, orders, Ledger::default(), Shown::new()).await
}

/// Closes every order of the batch that is still open (only `CREATED` ones when `only_unlocked`):
/// status to `to`, units back to `available`. Pending payment results are
/// then applied, so a success that raced the close ends `REFUND_REQUIRED`.
async fn close(
    txn: &DatabaseTransaction,
    events: &[OrderEvent],
    to: OrderStatus,
    reason: &str,
    only_unlocked: bool,
) -> Result<Effects, DbErr> {
    let mut orders = store::lock_orders(txn, &ids_of(events)).await?;
    let closing: Vec<OrderRow> = orders
        .values()
        .filter(|o| {
            if only_unlocked {
                o.status == OrderStatus::Created
            } else {
                o.status.is_cancellable()
            }
        })
        .cloned()
        .collect();
    let holding: Vec<&OrderRow> = closing
        .iter()
        .filter(|o| {
            matches!(
                o.status,
                OrderStatus::StockLocked | OrderStatus::AwaitingPayment
            )
        })
        .collect();
    let mut ledger = Ledger::default();
    ledger.load(txn, holding.iter().map(|o| o.item_id)).await?;
    let cause = format!("release:{reason}");
    for o in &holding {
        let q = o.units();
        if !ledger.apply(o, &cause, q, -q, 0) {
            return Err(invariant(format!(
                "order {} holds more than item {} has locked",
                o.id, o.item_id
            )));
        }
    }
    let ids: Vec<OrderId> = closing.iter().map(|o| o.id).collect();
    store::move_orders(
        txn,
        &mut orders,
        &ids,
        &[
            OrderStatus::Created,
            OrderStatus::StockLocked,
            OrderStatus::AwaitingPayment,
        ],
        to,
        Some(reason),
    )
    .await?;
    finish(txn, orders, ledger, Shown::new()).await
}

/// One step after payment: the orders of the batch in `from` move to `to`; any other status
/// changes nothing (a refund request racing the shipment: the first to commit wins).
async fn after_payment(
    txn: &DatabaseTransaction,
    events: &[OrderEvent],
    from: OrderStatus,
    to: OrderStatus,
) -> Result<Orders, DbErr> {
    let (orders, _) = store::advance_orders(txn, &ids_of(events), from, to).await?;
    Ok(orders)
}

/// `PAID` → `SHIPPED`, and the automatic completion of every shipped order of the batch, delayed
/// by `SECKILL_AUTO_COMPLETE_SECS` (re-driven by a redelivery; completing twice changes nothing).
async fn ship(txn: &DatabaseTransaction, events: &[OrderEvent]) -> Result<Effects, DbErr> {
    let orders = after_payment(txn, events, OrderStatus::Paid, OrderStatus::Shipped).await?;
    let mut effects = Effects::default();
    effects.follow_up(
        |events| Message::OrderAutoComplete { events },
        in_status(&orders, OrderStatus::Shipped),
    );
    mirror(&orders, &Shown::new(), &mut effects);
    Ok(effects)
}

async fn payment_result(
    txn: &DatabaseTransaction,
    events: &[PaymentEvent],
) -> Result<Effects, DbErr> {
    let order_ids: Vec<OrderId> = events.iter().map(|e| e.order_id).collect();
    // Orders first, as every handler does.
    let orders = store::lock_orders(txn, &order_ids).await?;
    let mut seen = HashSet::new();
    let fresh: Vec<&PaymentEvent> = events
        .iter()
        .filter(|e| seen.insert(e.payment_id.clone()))
        .collect();
    store::insert_pending_payments(
        txn,
        fresh.iter().map(|e| NewPayment {
            payment_id: e.payment_id.clone(),
            order_id: e.order_id,
            amount_cents: e.amount_cents,
        }),
    )
    .await?;
    let ids: Vec<String> = fresh.iter().map(|e| e.payment_id.clone()).collect();
    let existing = store::lock_payments_by_id(txn, &ids).await?;
    let mut refunds = Vec::new();
    for e in fresh {
        let Some(row) = existing.get(&e.payment_id) else {
            return Err(invariant(format!(
                "payment {} vanished under lock",
                e.payment_id
            )));
        };
        if row.order_id != e.order_id {
            tracing::warn!(payment.id = %e.payment_id, order.id = %e.order_id, "payment id reused for another order; ignored");
            continue;
        }
        let status = match e.status {
            PaymentOutcome::Refunded => {
                refunds.push(row.clone());
                continue;
            }
            // The same payment_id again: recorded already, no second effect.
            _ if row.status != PaymentStatus::Pending => continue,
            PaymentOutcome::Succeeded => PaymentStatus::Succeeded,
            PaymentOutcome::Failed => PaymentStatus::Failed,
        };
        store::update_payment(txn, &e.payment_id, status, e.amount_cents, false).await?;
    }
    let mut orders = orders;
    let mut ledger = Ledger::default();
    let mut shown = Shown::new();
    apply_refunds(txn, &mut orders, &mut ledger, &mut shown, refunds).await?;
    finish(txn, orders, ledger, shown).await
}

/// The provider gave a payment's money back. The order it paid (`PAID`, or `REFUND_REQUESTED`)
/// becomes `REFUNDED` and its units return to stock, once: the payment row moves to `REFUNDED`
/// under lock, and a second callback finds it there. A `REFUND_REQUIRED` order (paid after it
/// closed, its units back already) becomes `REFUNDED` too. A refund of any other payment is
/// recorded on it and changes no order: a duplicate success on a paid order, a success never
/// applied, or an order already shipped (the goods are gone; a person settles it).
async fn apply_refunds(
    txn: &DatabaseTransaction,
    orders: &mut Orders,
    ledger: &mut Ledger,
    shown: &mut Shown,
    refunds: Vec<store::PaymentRow>,
) -> Result<(), DbErr> {
    if refunds.is_empty() {
        return Ok(());
    }
    ledger.load(txn, items_paid_for(orders, &refunds)).await?;
    for r in refunds {
        if r.status == PaymentStatus::Refunded {
            continue;
        }
        let Some(order) = orders.get(&r.order_id).cloned() else {
            continue;
        };
        let paid_it = r.status == PaymentStatus::Succeeded && r.applied;
        let to = match order.status {
            OrderStatus::Paid | OrderStatus::RefundRequested if paid_it => {
                let q = order.units();
                if !ledger.apply(&order, "refund", q, 0, -q) {
                    return Err(invariant(format!(
                        "order {} refunded but its units are not sold",
                        order.id
                    )));
                }
                Some(OrderStatus::Refunded)
            }
            OrderStatus::RefundRequired if r.status == PaymentStatus::RefundRequired => {
                Some(OrderStatus::Refunded)
            }
            OrderStatus::Shipped | OrderStatus::Completed if paid_it => {
                tracing::warn!(order.id = %order.id, payment.id = %r.payment_id, "a shipped order's payment was refunded; the order stays as it is");
                None
            }
            _ => None,
        };
        store::update_payment(
            txn,
            &r.payment_id,
            PaymentStatus::Refunded,
            r.amount_cents,
            true,
        )
        .await?;
        if let Some(to) = to {
            store::move_orders(
                txn,
                orders,
                &[order.id],
                &[order.status],
                to,
                Some("refunded"),
            )
            .await?;
            shown.insert(
                order.id,
                ShownPayment {
                    payment_id: r.payment_id.clone(),
                    amount_cents: r.amount_cents,
                    status: PaymentStatus::Refunded,
                },
            );
        }
    }
    Ok(())
}

/// The end every payment-aware handler shares: apply the payment results waiting for these orders,
/// write the item ledger, and mirror the orders into the read model.
async fn finish(
    txn: &DatabaseTransaction,
    mut orders: Orders,
    mut ledger: Ledger,
    mut shown: Shown,
) -> Result<Effects, DbErr> {
    apply_results(txn, &mut orders, &mut ledger, &mut shown).await?;
    ledger.flush(txn).await?;
    let mut effects = Effects::default();
    mirror(&orders, &shown, &mut effects);
    Ok(effects)
}

/// Applies received payment results to their (locked) orders, where the order's state allows:
/// a success with the right amount pays an order awaiting payment; a success on a closed order
/// (or a second success on a paid one) needs a refund; a wrong amount never pays; a failure is
/// recorded and the order keeps waiting. Results for orders not yet awaiting payment wait.
async fn apply_results(
    txn: &DatabaseTransaction,
    orders: &mut Orders,
    ledger: &mut Ledger,
    shown: &mut Shown,
) -> Result<(), DbErr> {
    let ids: Vec<OrderId> = orders.keys().copied().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let results = store::lock_unapplied(txn, &ids, txn.get_database_backend()).await?;
    if results.is_empty() {
        return Ok(());
    }
    ledger.load(txn, items_paid_for(orders, &results)).await?;
    for r in results {
        let Some(order) = orders.get(&r.order_id).cloned() else {
            continue;
        };
        let succeeded = r.status == PaymentStatus::Succeeded;
        let (payment_status, order_to) = match order.status {
            OrderStatus::Created | OrderStatus::StockLocked | OrderStatus::Pending => continue,
            _ if !succeeded => (r.status, None),
            OrderStatus::AwaitingPayment if r.amount_cents == order.amount_cents => {
                let q = order.units();
                if !ledger.apply(&order, "sold", 0, -q, q) {
                    return Err(invariant(format!(
                        "order {} paid but its units are not locked",
                        order.id
                    )));
                }
                (PaymentStatus::Succeeded, Some(OrderStatus::Paid))
            }
            OrderStatus::AwaitingPayment => {
                tracing::warn!(order.id = %order.id, payment.id = %r.payment_id, "payment amount does not match; not paid");
                (PaymentStatus::AmountMismatch, None)
            }
            // Paid already (by another payment), or refunded: this money goes back too.
            OrderStatus::Paid
            | OrderStatus::Shipped
            | OrderStatus::Completed
            | OrderStatus::RefundRequested
            | OrderStatus::Refunded
            | OrderStatus::RefundRequired => (PaymentStatus::RefundRequired, None),
            OrderStatus::Failed | OrderStatus::Cancelled | OrderStatus::TimedOut => (
                PaymentStatus::RefundRequired,
                Some(OrderStatus::RefundRequired),
            ),
        };
        store::update_payment(txn, &r.payment_id, payment_status, r.amount_cents, true).await?;
        if let Some(to) = order_to {
            store::move_orders(txn, orders, &[order.id], &[order.status], to, None).await?;
        }
        if !(order.status.is_sold() || order.status == OrderStatus::Refunded) {
            // A paid (or refunded) order keeps showing the payment that paid it.
            shown.insert(
                order.id,
                ShownPayment {
                    payment_id: r.payment_id.clone(),
                    amount_cents: r.amount_cents,
                    status: payment_status,
                },
            );
        }
    }
    Ok(())
}
