//! The bench's reads of the workers' database, the same on PostgreSQL and MySQL.
//!
//! The bench is a client: it connects to the database the workers own, and never creates or
//! migrates it.

use anyhow::Context;
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, Statement, Value,
};
use seckill_schema::ItemId;
use seckill_schema::entity::{items, orders};
use std::collections::BTreeMap;
use std::time::Duration;

/// The name the bench's PostgreSQL sessions carry, so that its own backends can be told apart
/// from the pipeline's ([`own_backends`]).
const APPLICATION_NAME: &str = "seckill-bench";

pub async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(named(url));
    opts.max_connections(4)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(opts)
        .await
        .context("connecting to the database of SECKILL_DATABASE_URL")
}

/// The item's row and its orders in the order of their ids: an error when the item is not in
/// the database.
pub async fn item_and_orders(
    db: &DatabaseConnection,
    item: ItemId,
) -> anyhow::Result<(items::Model, Vec<orders::Model>)> {
    let id = item.0 as i64;
    let row = items::Entity::find_by_id(id)
        .one(db)
        .await
        .context("reading the item")?
        .with_context(|| format!("item {item} is not in the database"))?;
    let orders = rows_of_item(db, item, orders::Column::ItemId, orders::Column::Id)
        .await
        .context("reading the item's orders")?;
    Ok((row, orders))
}

/// The item's rows of a table that names it in `item_column` (its orders, its inventory
/// history), in the order of `id_column`.
pub async fn rows_of_item<C>(
    db: &DatabaseConnection,
    item: ItemId,
    item_column: C,
    id_column: C,
) -> Result<Vec<<C::EntityName as EntityTrait>::Model>, DbErr>
where
    C: ColumnTrait,
    C::EntityName: EntityTrait,
{
    C::EntityName::find()
        .filter(item_column.eq(item.0 as i64))
        .order_by_asc(id_column)
        .all(db)
        .await
}

/// `url` with the bench's `application_name` when it is a PostgreSQL URL that names none.
fn named(url: &str) -> String {
    if !url.starts_with("postgres") || url.contains("application_name=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={APPLICATION_NAME}")
}

/// The process ids of the bench's own PostgreSQL backends (none on MySQL, whose sessions are
/// threads of one process): their CPU time is the measurement's, not the pipeline's.
pub async fn own_backends(db: &DatabaseConnection) -> Vec<u32> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Vec::new();
    }
    let sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1";
    let Ok(rows) = db
        .query_all_raw(statement(
            DbBackend::Postgres,
            sql,
            vec![APPLICATION_NAME.into()],
        ))
        .await
    else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| row.try_get::<i32>("", "pid").ok())
        .map(|pid| pid as u32)
        .collect()
}

/// A raw statement written with PostgreSQL's `$1, $2, …` placeholders, which are rewritten to `?`
/// for MySQL; the values must therefore appear in the order of their placeholders.
pub fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => sql.to_owned(),
        _ => question_marks(sql),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn question_marks(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn item_value(item: ItemId) -> Value {
    (item.0 as i64).into()
}

/// A [`statement`] whose only placeholder, `$1`, is the item.
fn of_item(db: &DatabaseConnection, sql: &str, item: ItemId) -> Statement {
    statement(db.get_database_backend(), sql, vec![item_value(item)])
}

/// How many of the item's orders the database holds in each status.
pub async fn status_counts(
    db: &DatabaseConnection,
    item: ItemId,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let sql = "SELECT status, COUNT(*) AS n FROM orders WHERE item_id = $1 GROUP BY status";
    let rows = db
        .query_all_raw(of_item(db, sql, item))
        .await
        .context("counting orders by status")?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("", "status")?;
            let n: i64 = row.try_get("", "n")?;
            Ok((status, n as u64))
        })
        .collect()
}

/// The first acceptance and the latest change among the item's orders, in ms since the epoch.
pub async fn order_span(
    db: &DatabaseConnection,
    item: ItemId,
) -> anyhow::Result<Option<(i64, i64)>> {
    let sql = "SELECT MIN(created_at_ms) AS first, MAX(updated_at_ms) AS last \
               FROM orders WHERE item_id = $1";
    let row = db
        .query_one_raw(of_item(db, sql, item))
        .await
        .context("reading the orders' time span")?;
    let Some(row) = row else { return Ok(None) };
    let first: Option<i64> = row.try_get("", "first")?;
    let last: Option<i64> = row.try_get("", "last")?;
    Ok(first.zip(last))
}

/// Orders awaiting payment, oldest first, with their amounts; of one item, or of all.
pub async fn awaiting_payment(
    db: &DatabaseConnection,
    item: Option<ItemId>,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let awaiting = seckill_schema::OrderStatus::AwaitingPayment.as_str();
    let (sql, values) = match item {
        Some(item) => (
            "SELECT id, amount_cents FROM orders WHERE status = $1 AND item_id = $2 ORDER BY id",
            vec![awaiting.into(), item_value(item)],
        ),
        None => (
            "SELECT id, amount_cents FROM orders WHERE status = $1 ORDER BY id",
            vec![awaiting.into()],
        ),
    };
    let rows = db
        .query_all_raw(statement(db.get_database_backend(), sql, values))
        .await
        .context("finding orders awaiting payment")?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "amount_cents")?)))
        .collect()
}

/// Refunds the provider owes: `(order id, payment id, amount)` of each order waiting for one, the
/// payment that paid a `REFUND_REQUESTED` order, and every payment marked `REFUND_REQUIRED` (a
/// success on an order closed, or paid, already).
pub async fn refunds_owed(
    db: &DatabaseConnection,
    item: Option<ItemId>,
) -> anyhow::Result<Vec<(i64, String, i64)>> {
    use seckill_schema::{OrderStatus, PaymentStatus};
    let base = "SELECT p.order_id, p.payment_id, p.amount_cents FROM payments p \
        JOIN orders o ON o.id = p.order_id \
        WHERE ((o.status = $1 AND p.status = $2 AND p.applied = $3) OR p.status = $4)";
    let mut values = vec![
        OrderStatus::RefundRequested.as_str().into(),
        PaymentStatus::Succeeded.as_str().into(),
        true.into(),
        PaymentStatus::RefundRequired.as_str().into(),
    ];
    let sql = match item {
        Some(item) => {
            values.push(item_value(item));
            format!("{base} AND o.item_id = $5 ORDER BY p.order_id, p.payment_id")
        }
        None => format!("{base} ORDER BY p.order_id, p.payment_id"),
    };
    let rows = db
        .query_all_raw(statement(db.get_database_backend(), &sql, values))
        .await
        .context("finding refunds owed")?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "order_id")?,
                row.try_get("", "payment_id")?,
                row.try_get("", "amount_cents")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend() {
        let sql = "SELECT 1 FROM t WHERE a = $1 AND b = $2 AND c = '$'";
        assert_eq!(statement(DbBackend::Postgres, sql, vec![]).sql, sql);
        assert_eq!(
            statement(DbBackend::MySql, sql, vec![]).sql,
            "SELECT 1 FROM t WHERE a = ? AND b = ? AND c = '$'"
        );
        assert_eq!(question_marks("$12,$3"), "?,?");
    }

    #[test]
    fn postgres_sessions_are_named_for_the_bench() {
        assert_eq!(
            named("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres@127.0.0.1/db?application_name=seckill-bench"
        );
        assert_eq!(
            named("postgres://h/db?sslmode=disable"),
            "postgres://h/db?sslmode=disable&application_name=seckill-bench"
        );
        assert_eq!(
            named("postgres://h/db?application_name=x"),
            "postgres://h/db?application_name=x"
        );
        assert_eq!(named("mysql://root@h/db"), "mysql://root@h/db");
    }
}
