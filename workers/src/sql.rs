//! A small backend-neutral SQL builder: PostgreSQL wants `$1`, MySQL wants `?`, and "insert unless
//! the key exists" is spelled differently by each. Batches of rows become one statement.
//!
//! On PostgreSQL a list is one array parameter (`id = ANY($1)`, `INSERT … SELECT * FROM
//! UNNEST($1, …)`), so a statement's text is the same whatever the batch's size: it is parsed and
//! planned once per connection and then runs from the prepared statement cache, where a text per
//! batch size (`IN ($1, …, $734)`) is parsed, analysed and planned again for nearly every batch.
//! MySQL has no arrays and keeps the lists.
//!
//! It is also where the workers' id newtypes meet the database's `BIGINT` columns ([`DbId`]).

use sea_orm::sea_query::ArrayType;
use sea_orm::{DbBackend, DbErr, QueryResult, Statement, Value};
use seckill_schema::{ItemId, OrderId, UserId};

/// An id the database keeps as a `BIGINT`. Inside the workers ids travel as the domain's
/// newtypes; they become `i64` only on their way into a statement ([`DbId::db`]) and come back
/// as soon as a row is read ([`DbId::from_db`], [`id`]).
pub trait DbId: Copy {
    fn db(self) -> i64;
    fn from_db(raw: i64) -> Self;
}

macro_rules! db_id {
    ($($t:ident),*) => {$(
        impl DbId for $t {
            // Lossless both ways: the gateway refuses ids above `i64::MAX` at the edge, and
            // snowflake order ids are 63 bits.
            fn db(self) -> i64 {
                self.0 as i64
            }
            fn from_db(raw: i64) -> Self {
                $t(raw as u64)
            }
        }
    )*};
}
db_id!(OrderId, UserId, ItemId);

/// Reads the id in `column` of a row.
pub fn id<T: DbId>(row: &QueryResult, column: &str) -> Result<T, DbErr> {
    row.try_get::<i64>("", column).map(T::from_db)
}

pub struct Query {
    backend: DbBackend,
    sql: String,
    values: Vec<Value>,
}

impl Query {
    pub fn new(backend: DbBackend) -> Self {
        Query {
            backend,
            sql: String::with_capacity(256),
            values: Vec::new(),
        }
    }

    pub fn sql(mut self, s: &str) -> Self {
        self.sql.push_str(s);
        self
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.sql.push_str(s);
        self
    }

    /// Appends a placeholder bound to `v`.
    pub fn bind(&mut self, v: impl Into<Value>) -> &mut Self {
        self.values.push(v.into());
        match self.backend {
            DbBackend::Postgres => {
                let n = self.values.len();
                self.sql.push('$');
                self.sql.push_str(&n.to_string());
            }
            _ => self.sql.push('?'),
        }
        self
    }

    pub fn arg(mut self, v: impl Into<Value>) -> Self {
        self.bind(v);
        self
    }

    /// Appends `(p1, p2, …)` bound to `vs`.
    pub fn list<V: Into<Value>>(&mut self, vs: impl IntoIterator<Item = V>) -> &mut Self {
        self.sql.push('(');
        for (i, v) in vs.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.bind(v);
        }
        self.sql.push(')');
        self
    }

    /// `column IN (…)` of `vs`: `column = ANY($n)` with one array parameter on PostgreSQL,
    /// `column IN (?, …)` on MySQL. `vs` must not be empty on MySQL.
    pub fn is_in<V: Listed>(&mut self, column: &str, vs: impl IntoIterator<Item = V>) -> &mut Self {
        self.push(column);
        match self.backend {
            DbBackend::Postgres => {
                let values: Vec<Value> = vs.into_iter().map(Into::into).collect();
                self.push(" = ANY(")
                    .bind(Value::Array(V::ARRAY, Some(Box::new(values))))
                    .push(")")
            }
            _ => self.push(" IN ").list(vs),
        }
    }

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.sql, self.values)
    }
}

/// A value that [`Query::is_in`] can bind as an element of a PostgreSQL array.
pub trait Listed: Into<Value> {
    const ARRAY: ArrayType;
}

impl Listed for i64 {
    const ARRAY: ArrayType = ArrayType::BigInt;
}

impl Listed for String {
    const ARRAY: ArrayType = ArrayType::String;
}

impl Listed for &str {
    const ARRAY: ArrayType = ArrayType::String;
}

/// What an insert does with a row whose key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// The statement fails.
    Fail,
    /// The row is skipped. Whether a row was inserted is never read from the result (MySQL's
    /// `INSERT IGNORE` can look inserted); callers read the rows back under a lock instead.
    Skip,
}

/// `INSERT` of many rows: on PostgreSQL one array per column (`INSERT … SELECT * FROM UNNEST(…)`)
/// when every value is a non-null one of the types [`column_type`] knows, else (and on MySQL)
/// `INSERT … VALUES (…), (…)`.
pub fn insert(
    backend: DbBackend,
    existing: Existing,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Statement {
    let rows = match backend {
        DbBackend::Postgres => match unnest(existing, table, columns, rows) {
            Ok(statement) => return statement,
            Err(rows) => rows,
        },
        _ => rows,
    };
    // `INSERT … VALUES (…), (…)`.
    let mut q = Query::new(backend);
    match existing {
        Existing::Skip if backend != DbBackend::Postgres => q.push("INSERT IGNORE INTO "),
        _ => q.push("INSERT INTO "),
    };
    q.push(table)
        .push(" (")
        .push(&columns.join(", "))
        .push(") VALUES ");
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.list(row);
    }
    if existing == Existing::Skip && backend == DbBackend::Postgres {
        q.push(" ON CONFLICT DO NOTHING");
    }
    q.build()
}

/// The array type of a column's values and its PostgreSQL spelling; `None` for a null or a type
/// this module does not bind as an array.
fn column_type(v: &Value) -> Option<(ArrayType, &'static str)> {
    Some(match v {
        Value::BigInt(Some(_)) => (ArrayType::BigInt, "int8[]"),
        Value::Int(Some(_)) => (ArrayType::Int, "int4[]"),
        Value::String(Some(_)) => (ArrayType::String, "text[]"),
        Value::Bool(Some(_)) => (ArrayType::Bool, "bool[]"),
        _ => return None,
    })
}

/// `INSERT INTO t (a, b) SELECT * FROM UNNEST($1::int8[], $2::text[])`, or the rows back when a
/// value does not fit an array.
fn unnest(
    existing: Existing,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Result<Statement, Vec<Vec<Value>>> {
    let Some(types) = rows
        .first()
        .and_then(|row| row.iter().map(column_type).collect::<Option<Vec<_>>>())
    else {
        return Err(rows);
    };
    let fits = rows.iter().all(|row| {
        row.len() == types.len()
            && row
                .iter()
                .zip(&types)
                .all(|(v, t)| column_type(v).is_some_and(|(a, _)| a == t.0))
    });
    if !fits || types.len() != columns.len() {
        return Err(rows);
    }
    let mut arrays: Vec<Vec<Value>> = types
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        for (array, v) in arrays.iter_mut().zip(row) {
            array.push(v);
        }
    }
    let mut q = Query::new(DbBackend::Postgres);
    q.push("INSERT INTO ")
        .push(table)
        .push(" (")
        .push(&columns.join(", "))
        .push(") SELECT * FROM UNNEST(");
    for (i, (array, (ty, spelled))) in arrays.into_iter().zip(types).enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(Value::Array(ty, Some(Box::new(array))))
            .push("::")
            .push(spelled);
    }
    q.push(")");
    if existing == Existing::Skip {
        q.push(" ON CONFLICT DO NOTHING");
    }
    Ok(q.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend() {
        let mut q = Query::new(DbBackend::Postgres).sql("SELECT 1 WHERE a = ");
        q.bind(1i64).push(" AND b IN ").list([2i64, 3]);
        assert_eq!(q.build().sql, "SELECT 1 WHERE a = $1 AND b IN ($2, $3)");
        let mut q = Query::new(DbBackend::MySql).sql("SELECT 1 WHERE a = ");
        q.bind(1i64).push(" AND b IN ").list([2i64, 3]);
        assert_eq!(q.build().sql, "SELECT 1 WHERE a = ? AND b IN (?, ?)");
        let mut q = Query::new(DbBackend::Postgres).sql("SELECT 1 WHERE a = ");
        q.bind(1i64).push(" AND ").is_in("b", [2i64, 3]);
        assert_eq!(q.build().sql, "SELECT 1 WHERE a = $1 AND b = ANY($2)");
        let mut q = Query::new(DbBackend::MySql).sql("SELECT 1 WHERE ");
        q.is_in("b", ["x", "y"]);
        assert_eq!(q.build().sql, "SELECT 1 WHERE b IN (?, ?)");
        let s = insert(
            DbBackend::Postgres,
            Existing::Skip,
            "t",
            &["a", "b"],
            vec![vec![1i64.into(), 2i64.into()]],
        );
        assert_eq!(
            s.sql,
            "INSERT INTO t (a, b) SELECT * FROM UNNEST($1::int8[], $2::int8[]) ON CONFLICT DO NOTHING"
        );
        let s = insert(
            DbBackend::Postgres,
            Existing::Fail,
            "t",
            &["a", "b", "c", "d"],
            vec![
                vec![1i64.into(), 2i32.into(), "x".into(), true.into()],
                vec![3i64.into(), 4i32.into(), "y".into(), false.into()],
            ],
        );
        assert_eq!(
            s.sql,
            "INSERT INTO t (a, b, c, d) SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[], $4::bool[])"
        );
        assert_eq!(s.values.as_ref().map(|v| v.0.len()), Some(4));
        // A null has no place in these arrays: the rows go as VALUES.
        let s = insert(
            DbBackend::Postgres,
            Existing::Fail,
            "t",
            &["a", "b"],
            vec![
                vec![1i64.into(), Some(2i64).into()],
                vec![3i64.into(), Option::<i64>::None.into()],
            ],
        );
        assert_eq!(s.sql, "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        for (existing, rows, sql) in [
            (
                Existing::Skip,
                2,
                "INSERT IGNORE INTO t (a) VALUES (?), (?)",
            ),
            (Existing::Fail, 1, "INSERT INTO t (a) VALUES (?)"),
        ] {
            let rows = (1..=rows).map(|a: i64| vec![a.into()]).collect();
            let s = insert(DbBackend::MySql, existing, "t", &["a"], rows);
            assert_eq!(s.sql, sql);
        }
    }
}
