//! The HTTP API's bodies, one type each, as they cross the wire: the handlers read and write
//! these, and the OpenAPI document (`openapi.rs`) is generated from them, so the two cannot drift.

use seckill_schema::{OrderId, OrderStatus, PaymentOutcome, PaymentStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use utoipa::openapi::{RefOr, Response};
use utoipa::{IntoParams, IntoResponses, ToSchema};

/// `POST /seckill`.
#[derive(Deserialize, ToSchema)]
pub struct PurchaseBody<'a> {
    /// The item to buy.
    #[serde(deserialize_with = "integral::de")]
    #[schema(minimum = 0)]
    pub item_id: u64,
    /// Units to buy; at least 1.
    #[serde(default = "one_unit", deserialize_with = "integral::de")]
    #[schema(minimum = 1, maximum = 4294967295_u64, default = 1)]
    pub quantity: u32,
    /// A seckill ticket from `POST /items/{item_id}/ticket`; may be left out when a user JWT is
    /// sent in `Authorization`.
    // Borrowed from the body unless it has escapes: no copy per purchase.
    #[serde(default, borrow, deserialize_with = "cow_str::optional")]
    #[schema(value_type = Option<String>)]
    pub ticket: Option<std::borrow::Cow<'a, str>>,
}

fn one_unit() -> u32 {
    1
}

/// `202` of `POST /seckill`: the order is accepted and on its way.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    #[schema(value_type = String, example = "7299016574922244096")]
    pub order_id: OrderId,
    pub status: OrderStatus,
}

/// `200` of `POST /items/{item_id}/ticket`.
#[derive(Serialize, ToSchema)]
pub struct TicketView {
    /// Opaque; binds this user to this item until `expires_at`.
    pub ticket: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// Where a sale stands, as of `server_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    /// Before `starts_at`.
    Upcoming,
    /// In its window, with units left.
    Live,
    /// In its window, nothing left (units may come back from cancelled or expired orders).
    SoldOut,
    /// At or after `ends_at`.
    Ended,
}

/// `GET /items/{item_id}`: a sale as its product page shows it. Served from each gateway's cache:
/// `remaining` may lag by up to one second.
#[derive(Serialize, ToSchema)]
pub struct PublicItem<'a> {
    pub item_id: u64,
    pub name: &'a str,
    pub price_cents: i64,
    /// RFC 3339, milliseconds; `null`: open.
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// RFC 3339, milliseconds; `null`: the sale never ends by itself.
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    pub state: SaleState,
    #[schema(minimum = 0)]
    pub remaining: i64,
    /// The server's clock (RFC 3339, milliseconds), for a countdown that does not trust the
    /// client's.
    #[schema(value_type = String, format = DateTime)]
    pub server_time: &'a str,
}

/// `GET /items`: the sales not over yet (upcoming, live or sold out).
#[derive(Serialize, ToSchema)]
pub struct ItemList<'a> {
    pub items: Vec<PublicItem<'a>>,
}

/// An order, as its owner sees it.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    #[schema(value_type = String)]
    pub order_id: OrderId,
    pub user_id: u64,
    pub item_id: u64,
    pub quantity: u32,
    pub amount_cents: i64,
    pub status: OrderStatus,
    /// RFC 3339, milliseconds.
    pub created_at: String,
    pub updated_at: String,
    pub payment: Option<PaymentView>,
}

/// `200` of `GET /orders`: a page of the buyer's orders, newest first.
#[derive(Serialize, ToSchema)]
pub struct OrderList {
    pub orders: Vec<OrderView>,
    /// Opaque: pass it as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One event of `GET /orders/{order_id}/events` as the stream carries it: `event: order`, then
/// `data: ` and the order's JSON on one line, then a blank line.
#[derive(ToSchema)]
pub struct OrderEventFrame {
    /// Always `order`.
    #[schema(pattern = "^order$", example = "order")]
    pub event: &'static str,
    /// The order as `GET /orders/{order_id}` answers it (an `OrderView`), on one line.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

impl OrderEventFrame {
    pub fn order(view: &OrderView) -> OrderEventFrame {
        OrderEventFrame {
            event: "order",
            data: serde_json::to_string(view).expect("an order serializes"),
        }
    }

    /// The event in the `text/event-stream` format (JSON has no raw newline to split it).
    pub fn to_bytes(&self) -> bytes::Bytes {
        format!("event: {}\ndata: {}\n\n", self.event, self.data).into()
    }
}

/// The order's latest payment.
#[derive(Serialize, ToSchema)]
pub struct PaymentView {
    pub payment_id: String,
    pub amount_cents: i64,
    pub status: PaymentStatus,
}

/// `202` of `POST /orders/{order_id}/cancel`.
#[derive(Serialize, ToSchema)]
pub struct CancelRequested {
    #[schema(value_type = String)]
    pub order_id: OrderId,
    /// Always `CANCEL_REQUESTED`: the order ends `CANCELLED` (or `PAID`, if the payment won).
    #[schema(example = "CANCEL_REQUESTED")]
    pub status: &'static str,
}

/// `POST /payment/callback`: the provider's verdict on one payment.
#[derive(Deserialize, ToSchema)]
pub struct PaymentCallback {
    pub payment_id: String,
    #[schema(value_type = String, example = "7299016574922244096")]
    pub order_id: OrderId,
    pub status: PaymentOutcome,
    #[serde(deserialize_with = "integral::de")]
    pub amount_cents: i64,
}

/// `200` of `POST /payment/callback`: the result is durably recorded.
#[derive(Serialize, ToSchema)]
pub struct Received {
    pub received: bool,
}

/// `POST /admin/items`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    #[serde(deserialize_with = "integral::de")]
    #[schema(minimum = 1, maximum = 9223372036854775807_u64)]
    pub item_id: u64,
    /// 1 to 200 characters, not only blanks, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    #[serde(deserialize_with = "integral::de")]
    #[schema(minimum = 0, maximum = 1000000000000_i64)]
    pub price_cents: i64,
    #[serde(deserialize_with = "integral::de")]
    #[schema(minimum = 0, maximum = 1000000000_i64)]
    pub stock: i64,
    #[serde(default = "one_per_user", deserialize_with = "integral::de")]
    #[schema(minimum = 1, default = 1)]
    pub per_user_limit: i32,
    /// RFC 3339; absent: the sale is open now.
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// RFC 3339, after `starts_at`; absent: the sale never ends by itself.
    #[schema(format = DateTime)]
    pub ends_at: Option<String>,
    /// Redis shards (genes) the stock is spread over, for a hot item: each buyer buys from one
    /// home shard, and units move between shards when one runs dry.
    #[serde(default = "one_shard", deserialize_with = "integral::de")]
    #[schema(minimum = 1, maximum = 16, default = 1)]
    pub shards: u8,
}

fn one_per_user() -> i32 {
    1
}

fn one_shard() -> u8 {
    1
}

/// An item, as the operator set it up.
#[derive(Serialize, ToSchema)]
pub struct ItemView {
    pub item_id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub per_user_limit: i32,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    /// Redis shards the stock is spread over.
    pub shards: i16,
}

/// `GET /admin/items/{item_id}`: the item with its stock in Redis and in the database, and its
/// orders by status.
#[derive(Serialize, ToSchema)]
pub struct AdminItemView {
    #[serde(flatten)]
    pub item: ItemView,
    pub redis: RedisStock,
    pub db: DbStock,
    /// Orders by status (every status but `PENDING`, which only Redis knows).
    pub orders: BTreeMap<String, i64>,
}

#[derive(Serialize, ToSchema)]
pub struct RedisStock {
    /// `null` while Redis does not hold the item. Every shard's remaining units and units on
    /// their way between shards.
    pub remaining: Option<i64>,
    /// Each shard, read at one moment (empty while Redis does not hold the item).
    pub shards: Vec<ShardStock>,
}

/// One of an item's Redis shards.
#[derive(Serialize, ToSchema)]
pub struct ShardStock {
    pub shard: u8,
    /// The Redis hash tag it lives under (`{g<gene>}`).
    pub gene: u8,
    /// Units this shard can still sell; `null` while Redis does not hold it.
    pub remaining: Option<i64>,
    /// Units held by the live orders of the buyers homed here.
    pub held: i64,
    /// Units on their way from this shard to another.
    pub in_transfer: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DbStock {
    pub available: i64,
    pub locked: i64,
    pub sold: i64,
}

/// `GET /admin/items`: every item by id, a page at a time.
#[derive(Serialize, ToSchema)]
pub struct AdminItemsPage {
    pub items: Vec<AdminItemSummary>,
    /// The `cursor` of the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// An item with its database stock.
#[derive(Serialize, ToSchema)]
pub struct AdminItemSummary {
    #[serde(flatten)]
    pub item: ItemView,
    pub db: DbStock,
}

/// `PATCH /admin/items/{item_id}`: at least one change, and why.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    /// Units to add to the stock (negative: to take out, down to the units live orders hold).
    /// Applied to Redis and the database together, and recorded in the item's history.
    #[serde(default, deserialize_with = "integral::some")]
    #[schema(nullable = false, minimum = -1000000000_i64, maximum = 1000000000_i64)]
    pub stock_delta: Option<i64>,
    /// Why: 1 to 200 characters, not only blanks, no control characters. Recorded with a stock
    /// change.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub reason: String,
    /// RFC 3339; `null`: the sale is open from now on.
    #[serde(default, deserialize_with = "nullable::de")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<Option<String>>,
    /// RFC 3339, after `starts_at`; `null`: the sale never ends by itself.
    #[serde(default, deserialize_with = "nullable::de")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "integral::some")]
    #[schema(nullable = false, minimum = 1, maximum = 2147483647)]
    pub per_user_limit: Option<i32>,
    /// Redis shards to spread the stock over, 1 to 16: only while the sale is not live (before
    /// it starts or after it ended) and no live order holds units (`409 shards_in_use` else).
    #[serde(default, deserialize_with = "integral::some")]
    #[schema(nullable = false, minimum = 1, maximum = 16)]
    pub shards: Option<u8>,
}

/// One change of an item's database stock.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    /// RFC 3339, milliseconds.
    pub at: String,
    /// `lock`, `sold`, `release:<reason>`, `refund`, `restock` or `shrink`.
    pub cause: String,
    /// The order that moved the stock; `null` for an operator's adjustment.
    #[schema(value_type = Option<String>)]
    pub order_id: Option<OrderId>,
    /// `after.available - before.available`.
    pub delta: i64,
    pub before: DbStock,
    pub after: DbStock,
    /// An operator's adjustment: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An operator's adjustment: its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment_id: Option<String>,
}

/// `GET /admin/items/{item_id}/history`: newest first, a page at a time.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    pub history: Vec<HistoryEntry>,
    /// The `cursor` of the next (older) page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// One payment of an order, as the database has it.
#[derive(Serialize, ToSchema)]
pub struct PaymentRecord {
    pub payment_id: String,
    pub amount_cents: i64,
    pub status: PaymentStatus,
    /// Whether the result was applied to the order (false while it waits for the order to reach
    /// `AWAITING_PAYMENT`, and for an intent).
    pub applied: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /admin/orders/{order_id}`: the order with all its payments and its stock history.
#[derive(Serialize, ToSchema)]
pub struct AdminOrderView {
    #[serde(flatten)]
    pub order: OrderView,
    /// Oldest first.
    pub payments: Vec<PaymentRecord>,
    /// Newest first.
    pub history: Vec<HistoryEntry>,
}

/// Every error: a stable code and a human message, never internal text.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "sold_out")]
    pub error: &'static str,
    pub message: String,
    /// `limit_reached`: the buyer's existing order; `outcome_unknown`: the id the purchase would
    /// have had.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub order_id: Option<OrderId>,
}

// The parameters several routes share, each declared once for the OpenAPI document (they are
// never built: the handlers parse the raw path and query). `openapi.rs` gives a path parameter to
// every route whose path names it.

/// `{order_id}` in a route's path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrderPath {
    /// The snowflake id, decimal
    pub order_id: String,
}

/// `{item_id}` in a route's path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ItemPath {
    pub item_id: u64,
}

/// The page size and cursor every operator's listing takes (`handlers::admin::query` reads them).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Rows per page, 20 by default
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
}

// The error answers several routes share, each declared once for the OpenAPI document (they are
// never built: the handlers answer with `ApiError`). A route whose answer says more keeps its own
// `(status = ..., description = ...)` instead.

/// `401`, for a route whose `security` names one credential.
#[derive(IntoResponses)]
pub enum Unauthorized {
    #[response(status = 401, description = "unauthorized")]
    Unauthorized(ErrorBody),
}

/// An operator's route: a missing or wrong token, or a store that did not answer.
#[derive(IntoResponses)]
pub enum OperatorErrors {
    #[response(status = 401, description = "unauthorized")]
    Unauthorized(ErrorBody),
    #[response(status = 503, description = "unavailable")]
    Unavailable(ErrorBody),
}

/// A buyer's route about one of their orders: another user's order is not found either.
#[derive(IntoResponses)]
pub enum OwnOrderErrors {
    #[response(status = 401, description = "unauthorized")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "not_found: unknown, or another user's")]
    NotFound(ErrorBody),
    #[response(status = 503, description = "unavailable or recovering")]
    Unavailable(ErrorBody),
}

/// A route naming an item.
#[derive(IntoResponses)]
pub enum UnknownItem {
    #[response(status = 404, description = "unknown_item")]
    UnknownItem(ErrorBody),
}

/// An operator's route naming an order.
#[derive(IntoResponses)]
pub enum UnknownOrder {
    #[response(status = 404, description = "not_found")]
    NotFound(ErrorBody),
}

/// The answers of both `A` and `B`, for the routes that share the two sets.
pub struct Both<A, B>(PhantomData<(A, B)>);

impl<A: IntoResponses, B: IntoResponses> IntoResponses for Both<A, B> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut all = A::responses();
        all.extend(B::responses());
        all
    }
}

/// An operator's route naming an item.
pub type OperatorItemErrors = Both<OperatorErrors, UnknownItem>;

/// An operator's route naming an order.
pub type OperatorOrderErrors = Both<OperatorErrors, UnknownOrder>;

/// An operator's route naming an item that says itself what its `503` means.
pub type UnauthorizedOrUnknownItem = Both<Unauthorized, UnknownItem>;

/// A route reading a JSON body.
#[derive(IntoResponses)]
pub enum BodyErrors {
    #[response(status = 400, description = "bad_request")]
    BadRequest(ErrorBody),
    #[response(status = 413, description = "payload_too_large")]
    PayloadTooLarge(ErrorBody),
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`: what this process depends on, and whether each is usable.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub redis: bool,
    pub rabbitmq: bool,
    pub redis_durability: DurabilityView,
    /// Shard genes whose Redis state is being rebuilt from the database.
    pub redis_recovering_genes: Vec<u8>,
}

#[derive(Serialize, ToSchema)]
pub struct DurabilityView {
    #[schema(example = "fsync")]
    pub mode: &'static str,
    pub ok: bool,
    /// What Redis lacks for the mode, and how to fix it.
    pub reasons: Vec<String>,
}

/// JSON Schema's integer: `3.0` is one, as it is to JavaScript. serde reads an integer type only
/// from an integer literal, so the integer fields read either, refusing a fraction or a number out
/// of range.
/// An optional string borrowed from the input when it can be. serde's `borrow` reaches a
/// `Cow<str>` field only when it is not inside an `Option`; there it always copies.
mod cow_str {
    use serde::Deserializer;
    use serde::de::{Error, Visitor};
    use std::borrow::Cow;
    use std::fmt;

    pub fn optional<'de: 'a, 'a, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Cow<'a, str>>, D::Error> {
        d.deserialize_option(Optional)
    }

    struct Optional;

    impl<'de> Visitor<'de> for Optional {
        type Value = Option<Cow<'de, str>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(Str).map(Some)
        }
    }

    struct Str;

    impl<'de> Visitor<'de> for Str {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }
}

mod integral {
    use serde::Deserializer;
    use serde::de::{Error, Unexpected, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    pub fn de<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        d.deserialize_any(Integral(PhantomData))
    }

    /// An optional field that, when present, is an integer (never `null`).
    pub fn some<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        de(d).map(Some)
    }

    struct Integral<T>(PhantomData<T>);

    impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for Integral<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer in range")
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<T, E> {
            T::try_from(n).map_err(|_| E::invalid_value(Unexpected::Unsigned(n), &self))
        }

        fn visit_i64<E: Error>(self, n: i64) -> Result<T, E> {
            T::try_from(n).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
        }

        fn visit_f64<E: Error>(self, x: f64) -> Result<T, E> {
            // Exactly representable integers only: below 2^53 in magnitude.
            if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
                self.visit_i64(x as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(x), &self))
            }
        }
    }
}

/// A field where absent and `null` differ (JSON merge patch): absent is `None` (by
/// `#[serde(default)]`), `null` is `Some(None)`.
mod nullable {
    use serde::{Deserialize, Deserializer};

    pub fn de<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn purchase(json: &str) -> Result<PurchaseBody<'_>, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_ticket_is_borrowed_unless_escaped() {
        let body = purchase(r#"{"item_id":7,"ticket":"1.7.99.abc"}"#).unwrap();
        assert!(matches!(body.ticket, Some(Cow::Borrowed("1.7.99.abc"))));
        assert_eq!(body.quantity, 1);
        let body = purchase(r#"{"item_id":7,"ticket":"1.7.99.\u0061bc"}"#).unwrap();
        assert!(matches!(body.ticket, Some(Cow::Owned(ref t)) if t == "1.7.99.abc"));
    }

    #[test]
    fn a_ticket_may_be_missing_or_null_but_not_another_type() {
        assert!(purchase(r#"{"item_id":7}"#).unwrap().ticket.is_none());
        assert!(
            purchase(r#"{"item_id":7,"ticket":null}"#)
                .unwrap()
                .ticket
                .is_none()
        );
        let err = purchase(r#"{"item_id":7,"ticket":5}"#).err().unwrap();
        assert!(err.contains("expected a string"), "{err}");
    }
}
