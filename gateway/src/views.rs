//! How the API shows what the system holds: an order record, an item row, a catalog snapshot or a
//! history row turned into the wire types of `api`, in one place each.

use crate::api::{DbStock, HistoryEntry, ItemView, OrderView, PaymentView, PublicItem};
use crate::catalog::Snapshot;
use seckill_schema::OrderId;
use seckill_schema::entity::{inventory_history, items};
use seckill_schema::record::OrderRecord;

/// A time of the API: RFC 3339 in UTC, to the millisecond.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn optional_time(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339_ms)
}

/// An order as `GET /orders/{order_id}` shows it.
pub fn order_view(order_id: OrderId, r: OrderRecord) -> OrderView {
    OrderView {
        order_id,
        user_id: r.user.0,
        item_id: r.item.0,
        quantity: r.quantity.get(),
        amount_cents: r.amount_cents,
        status: r.status,
        created_at: rfc3339_ms(r.created_at_ms),
        updated_at: rfc3339_ms(r.updated_at_ms),
        payment: r.payment.map(|p| PaymentView {
            payment_id: p.payment_id,
            amount_cents: p.amount_cents,
            status: p.status,
        }),
    }
}

/// An item as the operators' API shows its row.
pub fn item_view(m: &items::Model) -> ItemView {
    ItemView {
        item_id: m.id,
        name: m.name.clone(),
        price_cents: m.price_cents,
        stock: m.stock,
        per_user_limit: m.per_user_limit,
        starts_at: optional_time(m.starts_at_ms),
        ends_at: optional_time(m.ends_at_ms),
        shards: m.shards,
    }
}

/// An item's database stock.
pub fn db_stock(m: &items::Model) -> DbStock {
    DbStock {
        available: m.available,
        locked: m.locked,
        sold: m.sold,
    }
}

/// A sale as its product page shows it.
pub fn public_item<'a>(s: &'a Snapshot, now: i64, server_time: &'a str) -> PublicItem<'a> {
    PublicItem {
        item_id: s.item.0,
        name: &s.name,
        price_cents: s.price_cents,
        starts_at: optional_time(s.window.starts_at_ms),
        ends_at: optional_time(s.window.ends_at_ms),
        state: s.state(now),
        // Never below zero on a product page, whatever a compensation did meanwhile.
        remaining: s.remaining.max(0),
        server_time,
    }
}

/// A row of an item's stock history.
pub fn history_entry(h: inventory_history::Model) -> HistoryEntry {
    HistoryEntry {
        at: rfc3339_ms(h.created_at_ms),
        cause: h.cause,
        order_id: h.order_id.map(|id| OrderId(id as u64)),
        delta: h.available_after - h.available_before,
        before: DbStock {
            available: h.available_before,
            locked: h.locked_before,
            sold: h.sold_before,
        },
        after: DbStock {
            available: h.available_after,
            locked: h.locked_after,
            sold: h.sold_after,
        },
        reason: h.reason,
        adjustment_id: h.adjustment_id.map(|id| id.to_string()),
    }
}
