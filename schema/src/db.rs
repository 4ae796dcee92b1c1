//! Database connections: create the database when it is missing, apply pending migrations.

use crate::migration::Migrator;
use anyhow::Context;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use sea_orm_migration::MigratorTrait;
use std::time::Duration;

/// Splits `scheme://auth@host/db?query` into the server URL (no database) and the database name.
pub fn split_database_url(url: &str) -> anyhow::Result<(String, String, DbBackend)> {
    let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        DbBackend::Postgres
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        DbBackend::MySql
    } else {
        anyhow::bail!("SECKILL_DATABASE_URL must start with postgres:// or mysql://");
    };
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let slash = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .context("SECKILL_DATABASE_URL names no database")?;
    let name = &base[slash + 1..];
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "SECKILL_DATABASE_URL: database name {name:?} must be letters, digits and underscores"
    );
    let admin_db = match backend {
        DbBackend::Postgres => "postgres",
        _ => "",
    };
    Ok((
        format!("{}/{admin_db}{query}", &base[..slash]),
        name.to_owned(),
        backend,
    ))
}

async fn create_if_missing(url: &str) -> anyhow::Result<()> {
    let (server, name, backend) = split_database_url(url)?;
    let admin = Database::connect(ConnectOptions::new(server).sqlx_logging(false).to_owned())
        .await
        .context("connecting to the database server")?;
    let exists = match backend {
        DbBackend::Postgres => admin
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                "SELECT 1 FROM pg_database WHERE datname = $1",
                [name.clone().into()],
            ))
            .await?
            .is_some(),
        _ => false,
    };
    if !exists {
        let sql = match backend {
            DbBackend::Postgres => format!("CREATE DATABASE \"{name}\""),
            _ => format!("CREATE DATABASE IF NOT EXISTS `{name}`"),
        };
        // Two processes starting together may race to create it; losing that race is fine.
        if let Err(e) = admin.execute_unprepared(&sql).await
            && !e.to_string().contains("already exists")
        {
            return Err(e).context("creating the database");
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Connects to `SECKILL_DATABASE_URL`, creating the database and applying migrations first.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<DatabaseConnection> {
    create_if_missing(url).await?;
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let db = Database::connect(opts)
        .await
        .context("connecting to the database")?;
    migrate(&db).await?;
    Ok(db)
}

async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    // Processes starting at once may both try; the loser sees a duplicate and tries again.
    let mut last: Option<DbErr> = None;
    for _ in 0..5 {
        match Migrator::up(db, None).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(last.expect("at least one attempt")).context("applying migrations")
}

/// Drops a database (tests and the bench's scratch runs).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let (server, name, backend) = split_database_url(url)?;
    let admin =
        Database::connect(ConnectOptions::new(server).sqlx_logging(false).to_owned()).await?;
    let sql = match backend {
        DbBackend::Postgres => format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        _ => format!("DROP DATABASE IF EXISTS `{name}`"),
    };
    admin.execute_unprepared(&sql).await?;
    admin.close().await.ok();
    Ok(())
}

/// Is this error the database being out of reach (wait and retry), not the statement's fault?
pub fn is_connection_error(e: &DbErr) -> bool {
    matches!(e, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) || {
        let s = e.to_string().to_ascii_lowercase();
        s.contains("connection")
            || s.contains("broken pipe")
            || s.contains("timed out")
            || s.contains("io error")
    }
}

/// Deadlocks and serialization failures: the transaction may simply be run again.
pub fn is_retryable(e: &DbErr) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    s.contains("deadlock") || s.contains("could not serialize") || s.contains("lock wait timeout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let (server, name, b) =
            split_database_url("postgres://postgres@127.0.0.1:5432/seckill").unwrap();
        assert_eq!(server, "postgres://postgres@127.0.0.1:5432/postgres");
        assert_eq!(name, "seckill");
        assert_eq!(b, DbBackend::Postgres);
        let (server, name, b) =
            split_database_url("mysql://root@127.0.0.1:3306/t_1?ssl-mode=disabled").unwrap();
        assert_eq!(server, "mysql://root@127.0.0.1:3306/?ssl-mode=disabled");
        assert_eq!(name, "t_1");
        assert_eq!(b, DbBackend::MySql);
        assert!(split_database_url("postgres://x@h/").is_err());
        assert!(split_database_url("sqlite://x").is_err());
        assert!(split_database_url("postgres://x@h/a;drop").is_err());
    }
}
