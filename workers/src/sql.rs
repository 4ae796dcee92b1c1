//! A small backend-neutral SQL builder: PostgreSQL wants `$1`, MySQL wants `?`, and "insert unless
//! the key exists" is spelled differently by each. Batches of rows become one statement.

use sea_orm::{DbBackend, Statement, Value};

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

/// `INSERT … VALUES (…), (…)` of many rows that skips rows whose key exists. Whether a row was
/// inserted is never read from the result (MySQL's `INSERT IGNORE` can look inserted); callers
/// read the rows back under a lock instead.
pub fn insert_ignore(
    backend: DbBackend,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Statement {
    let mut q = Query::new(backend);
    match backend {
        DbBackend::Postgres => q.push("INSERT INTO "),
        _ => q.push("INSERT IGNORE INTO "),
    };
    insert_body(&mut q, table, columns, rows);
    if backend == DbBackend::Postgres {
        q.push(" ON CONFLICT DO NOTHING");
    }
    q.build()
}

pub fn insert(
    backend: DbBackend,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Statement {
    let mut q = Query::new(backend);
    q.push("INSERT INTO ");
    insert_body(&mut q, table, columns, rows);
    q.build()
}

fn insert_body(q: &mut Query, table: &str, columns: &[&str], rows: Vec<Vec<Value>>) {
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
        let s = insert_ignore(
            DbBackend::Postgres,
            "t",
            &["a", "b"],
            vec![vec![1i64.into(), 2i64.into()]],
        );
        assert_eq!(
            s.sql,
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        );
        let s = insert_ignore(
            DbBackend::MySql,
            "t",
            &["a"],
            vec![vec![1i64.into()], vec![2i64.into()]],
        );
        assert_eq!(s.sql, "INSERT IGNORE INTO t (a) VALUES (?), (?)");
    }
}
