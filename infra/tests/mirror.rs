//! `lua/mirror.lua` through `Scripts::mirror` against the real Redis: a move of a record this
//! epoch wrote goes in the short shape; a record Redis lost (or another epoch wrote) is sent again
//! in the full shape and adopted, within the item's stock and the buyer's limit, or refused; and a
//! second mirror of the same changes nothing.

use fred::prelude::*;
use seckill_infra::scripts::{Mirrored, Scripts, StatusUpdate};
use seckill_schema::keys::gene_of_item;
use seckill_schema::record::{ShownPayment, field};
use seckill_schema::snowflake::Snowflake;
use seckill_schema::{
    ItemId, Keys, OrderEvent, OrderId, OrderStatus, PaymentStatus, Quantity, UserId,
};
use seckill_testkit::{Backend, TestEnv};
use std::collections::HashMap;

const ITEM: ItemId = ItemId(7);
const EPOCH: &str = "42";

fn event(id: OrderId, user: u64) -> OrderEvent {
    OrderEvent {
        order_id: id,
        user_id: UserId(user),
        item_id: ITEM,
        quantity: Quantity::new(1).unwrap(),
        amount_cents: 990,
        created_at_ms: 1_700_000_000_000,
    }
}

fn update(o: OrderEvent, status: OrderStatus, payment: Option<ShownPayment>) -> StatusUpdate {
    StatusUpdate {
        order: o,
        status,
        payment,
    }
}

async fn record(redis: &Pool, keys: &Keys, id: OrderId) -> HashMap<String, String> {
    redis.hgetall(keys.order(id)).await.unwrap()
}

async fn remaining(redis: &Pool, keys: &Keys) -> i64 {
    let r: Option<i64> = redis.hget(keys.item(ITEM), "remaining").await.unwrap();
    r.unwrap()
}

async fn held(redis: &Pool, keys: &Keys, user: u64) -> Option<i64> {
    redis
        .hget(keys.buyers(ITEM), user.to_string())
        .await
        .unwrap()
}

fn sorted(mut v: Vec<(OrderId, Mirrored)>) -> Vec<(OrderId, Mirrored)> {
    v.sort_by_key(|(id, _)| *id);
    v
}

/// A gene as a rebuild leaves it, in a test namespace: marked ready at [`EPOCH`], the item with
/// 5 left of a per-user limit of 1, and `buyers` holding what they hold.
struct Gene {
    _env: TestEnv,
    redis: Pool,
    keys: Keys,
    scripts: Scripts,
    ids: Snowflake,
}

impl Gene {
    async fn ready(buyers: &[(&str, &str)]) -> Gene {
        let env = TestEnv::new(Backend::Postgres);
        let redis = seckill_infra::redis::pool(&env.config.redis_url, 1)
            .await
            .unwrap();
        let keys = Keys::new(&env.config.namespace);
        let scripts = Scripts::new(keys.clone());
        let gene = gene_of_item(ITEM);
        let _: () = redis
            .hset(keys.state(gene), [("ready", EPOCH)])
            .await
            .unwrap();
        let _: () = redis
            .hset(
                keys.item(ITEM),
                [("remaining", "5"), ("limit", "1"), ("price", "990")],
            )
            .await
            .unwrap();
        let _: () = redis
            .hset(keys.buyers(ITEM), buyers.to_vec())
            .await
            .unwrap();
        Gene {
            _env: env,
            redis,
            keys,
            scripts,
            ids: Snowflake::new(9),
        }
    }

    fn order_id(&self) -> OrderId {
        OrderId(self.ids.next(gene_of_item(ITEM)).unwrap())
    }
}

#[tokio::test]
async fn moves_take_the_short_shape_and_lost_records_are_adopted_or_refused() {
    // Buyer 1 holds the unit of `kept` (whose record this epoch wrote), buyer 3 holds 1 already
    // from another order, and buyer 2 holds nothing.
    let g = Gene::ready(&[("1", "1"), ("3", "1")]).await;
    let (redis, keys, scripts) = (&g.redis, &g.keys, &g.scripts);
    let (kept, lost, refused) = (g.order_id(), g.order_id(), g.order_id());
    let created = OrderStatus::Created.rank().to_string();
    let _: () = redis
        .hset(
            keys.order(kept),
            [
                (field::USER, "1"),
                (field::ITEM, "7"),
                (field::QTY, "1"),
                (field::AMOUNT, "990"),
                (field::STATUS, "CREATED"),
                (field::RANK, created.as_str()),
                (field::EPOCH, EPOCH),
            ],
        )
        .await
        .unwrap();

    let pay = ShownPayment {
        payment_id: format!("pay_{kept}"),
        amount_cents: 990,
        status: PaymentStatus::Pending,
    };
    let updates = vec![
        update(event(kept, 1), OrderStatus::AwaitingPayment, Some(pay)),
        // Lost with its record; its buyer (2) holds nothing: adopted, a unit taken.
        update(event(lost, 2), OrderStatus::Created, None),
        // Lost too, but its buyer (3) is at the limit: refused, nothing taken.
        update(event(refused, 3), OrderStatus::Created, None),
    ];
    let first = sorted(scripts.mirror(redis.next(), &updates).await.unwrap().orders);
    assert_eq!(
        first,
        vec![
            (kept, Mirrored::Counted),
            (lost, Mirrored::Counted),
            (refused, Mirrored::Refused)
        ]
    );

    let k = record(redis, keys, kept).await;
    assert_eq!(k[field::STATUS], "AWAITING_PAYMENT");
    assert_eq!(k[field::PAY_ID], format!("pay_{kept}"));
    assert_eq!(k[field::PAY_STATUS], "PENDING");
    let l = record(redis, keys, lost).await;
    assert_eq!(
        (
            l[field::STATUS].as_str(),
            l[field::EPOCH].as_str(),
            l[field::USER].as_str()
        ),
        ("CREATED", EPOCH, "2")
    );
    assert!(!l.contains_key(field::RELEASED));
    let r = record(redis, keys, refused).await;
    assert_eq!(r[field::REFUSED], "1");
    assert!(
        r.contains_key(field::RELEASED),
        "a refused order holds nothing here"
    );
    assert_eq!(remaining(redis, keys).await, 4, "one unit adopted");
    assert_eq!(held(redis, keys, 2).await, Some(1));
    assert_eq!(held(redis, keys, 3).await, Some(1));

    // Again (a redelivery): the adopted record is this epoch's now, so nothing is taken twice;
    // the refused order stays refused.
    let again = sorted(scripts.mirror(redis.next(), &updates).await.unwrap().orders);
    assert_eq!(again, first);
    assert_eq!(remaining(redis, keys).await, 4);
    assert_eq!(held(redis, keys, 2).await, Some(1));

    // A record of another epoch (Redis rebuilt since it was written) is adopted like a lost one.
    let _: () = redis
        .hset(keys.order(lost), [(field::EPOCH, "41")])
        .await
        .unwrap();
    let _: i64 = redis.hdel(keys.buyers(ITEM), "2").await.unwrap();
    let moved = vec![update(event(lost, 2), OrderStatus::AwaitingPayment, None)];
    assert_eq!(
        scripts.mirror(redis.next(), &moved).await.unwrap().orders,
        vec![(lost, Mirrored::Counted)]
    );
    let l = record(redis, keys, lost).await;
    assert_eq!(
        (l[field::STATUS].as_str(), l[field::EPOCH].as_str()),
        ("AWAITING_PAYMENT", EPOCH)
    );
    assert_eq!(remaining(redis, keys).await, 3);
    assert_eq!(held(redis, keys, 2).await, Some(1));
}

/// `CREATED` goes in the verify shape: an order this epoch counted is answered without a write
/// (the read model stays `PENDING` until `AWAITING_PAYMENT`), one it refused is answered refused
/// again, and one it never counted is adopted through the full shape, `CREATED` written.
#[tokio::test]
async fn created_is_verified_not_written() {
    let g = Gene::ready(&[("1", "1")]).await;
    let (redis, keys, scripts) = (&g.redis, &g.keys, &g.scripts);
    let (counted, refused, lost) = (g.order_id(), g.order_id(), g.order_id());
    for (id, user, extra) in [
        (counted, "1", None),
        (refused, "2", Some((field::REFUSED, "1"))),
    ] {
        let mut fields = vec![
            (field::USER, user),
            (field::ITEM, "7"),
            (field::QTY, "1"),
            (field::AMOUNT, "990"),
            (field::STATUS, "PENDING"),
            (field::EPOCH, EPOCH),
        ];
        fields.extend(extra);
        let _: () = redis.hset(keys.order(id), fields).await.unwrap();
    }
    let updates = vec![
        update(event(counted, 1), OrderStatus::Created, None),
        update(event(refused, 2), OrderStatus::Created, None),
        update(event(lost, 3), OrderStatus::Created, None),
    ];
    assert!(updates.iter().all(|u| !u.writes()));
    assert_eq!(
        sorted(scripts.mirror(redis.next(), &updates).await.unwrap().orders),
        vec![
            (counted, Mirrored::Counted),
            (refused, Mirrored::Refused),
            (lost, Mirrored::Counted)
        ]
    );
    let c = record(redis, keys, counted).await;
    assert_eq!(c[field::STATUS], "PENDING", "nothing written");
    assert!(!c.contains_key(field::RANK));
    let l = record(redis, keys, lost).await;
    assert_eq!(
        (l[field::STATUS].as_str(), l[field::EPOCH].as_str()),
        ("CREATED", EPOCH),
        "adopted through the full shape"
    );
    assert_eq!(remaining(redis, keys).await, 4, "one unit adopted");
    assert_eq!(held(redis, keys, 3).await, Some(1));
}
