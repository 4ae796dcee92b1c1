//! A small backend-neutral SQL builder: PostgreSQL wants `$1`, MySQL wants `?`, and "insert unless
//! the key exists" is spelled differently by each. Batches of rows become one statement.
//!
//! It is also where the workers' id newtypes meet the database's `BIGINT` columns ([`DbId`]).

use sea_orm::{DbBackend, DbErr, QueryResult, Statement, Value};
use seckill_domain::{ItemId, OrderId, UserId};

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

    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.sql, self.values)
    }
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

/// `INSERT … VALUES (…), (…)` of many rows.
pub fn insert(
    backend: DbBackend,
    existing: Existing,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Statement {
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
        let s = insert(
            DbBackend::Postgres,
            Existing::Skip,
            "t",
            &["a", "b"],
            vec![vec![1i64.into(), 2i64.into()]],
        );
        assert_eq!(
            s.sql,
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        );
        let s = insert(
            DbBackend::MySql,
            Existing::Skip,
            "t",
            &["a"],
            vec![vec![1i64.into()], vec![2i64.into()]],
        );
        assert_eq!(s.sql, "INSERT IGNORE INTO t (a) VALUES (?), (?)");
        let s = insert(
            DbBackend::MySql,
            Existing::Fail,
            "t",
            &["a"],
            vec![vec![1i64.into()]],
        );
        assert_eq!(s.sql, "INSERT INTO t (a) VALUES (?)");
    }
}
