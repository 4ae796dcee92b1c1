//! Database connections: create the database when it is missing, apply pending migrations.

use anyhow::Context;
use sea_orm::RuntimeErr;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use sea_orm_migration::MigratorTrait;
use seckill_schema::migration::Migrator;
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
    let exists = || async {
        Ok::<_, DbErr>(match backend {
            DbBackend::Postgres => admin
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    "SELECT 1 FROM pg_database WHERE datname = $1",
                    [name.clone().into()],
                ))
                .await?
                .is_some(),
            _ => false,
        })
    };
    if !exists().await? {
        let sql = match backend {
            DbBackend::Postgres => format!("CREATE DATABASE \"{name}\""),
            _ => format!("CREATE DATABASE IF NOT EXISTS `{name}`"),
        };
        // Two processes starting together may race to create it; losing that race is fine,
        // whatever error the loser gets (`already exists`, or a duplicate in pg_database).
        if let Err(e) = admin.execute_unprepared(&sql).await
            && !exists().await?
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

/// The newest millisecond at which an order id of `node` that the database holds was minted, among
/// ids minted since `since_ms` (one range of the primary key). A node id's new holder starts above
/// it, so that it never repeats a stored id, whatever its clock says.
pub async fn newest_order_ms_of_node(
    db: &DatabaseConnection,
    node: u16,
    since_ms: u64,
) -> Result<Option<u64>, DbErr> {
    use seckill_schema::snowflake::{
        EPOCH_MS, GENE_BITS, MAX_NODE, NODE_BITS, SEQ_BITS, millis_of,
    };
    let node_shift = SEQ_BITS + GENE_BITS;
    let lowest = since_ms.saturating_sub(EPOCH_MS) << (node_shift + NODE_BITS);
    // Every value is a number of this process's, none a user's.
    let sql = format!(
        "SELECT MAX(id) AS id FROM {} WHERE id >= {lowest} AND ((id >> {node_shift}) & {MAX_NODE}) = {node}",
        seckill_schema::entity::orders::TABLE,
    );
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    let newest: Option<i64> = match row {
        Some(r) => r.try_get("", "id")?,
        None => None,
    };
    Ok(newest.map(|id| millis_of(id as u64)))
}

/// The write generation each gene's Redis state reached as the workers saw it (see
/// `seckill_schema::entity::redis_generations`).
pub async fn redis_generations(
    db: &DatabaseConnection,
) -> Result<std::collections::BTreeMap<u8, u64>, DbErr> {
    use sea_orm::EntityTrait;
    use seckill_schema::entity::redis_generations;
    Ok(redis_generations::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .filter_map(|r| {
            Some((
                u8::try_from(r.gene).ok()?,
                u64::try_from(r.generation).ok()?,
            ))
        })
        .collect())
}

/// Records that each gene's Redis state reached at least these generations (never moves one
/// back).
pub async fn record_redis_generations(
    db: &DatabaseConnection,
    generations: &std::collections::BTreeMap<u8, u64>,
) -> Result<(), DbErr> {
    if generations.is_empty() {
        return Ok(());
    }
    let backend = db.get_database_backend();
    let rows: Vec<String> = generations
        .iter()
        .map(|(gene, generation)| format!("({gene}, {generation})"))
        .collect();
    let table = seckill_schema::entity::redis_generations::TABLE;
    // Numbers of this process's only, none a user's.
    let sql = match backend {
        DbBackend::Postgres => format!(
            "INSERT INTO {table} (gene, generation) VALUES {} ON CONFLICT (gene) DO UPDATE \
             SET generation = GREATEST({table}.generation, EXCLUDED.generation)",
            rows.join(", ")
        ),
        _ => format!(
            "INSERT INTO {table} (gene, generation) VALUES {} ON DUPLICATE KEY UPDATE \
             generation = GREATEST(generation, VALUES(generation))",
            rows.join(", ")
        ),
    };
    db.execute_raw(Statement::from_string(backend, sql)).await?;
    Ok(())
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

/// The driver's error under a sea-orm error, if there is one.
fn sqlx_error(e: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match e {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// Is this error the database being out of reach (wait and retry), not the statement's fault?
/// Decided by the driver's error kind, never by its message.
pub fn is_connection_error(e: &DbErr) -> bool {
    use sea_orm::sqlx::Error as E;
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        _ => match sqlx_error(e) {
            Some(
                E::Io(_)
                | E::Tls(_)
                | E::Protocol(_)
                | E::PoolTimedOut
                | E::PoolClosed
                | E::WorkerCrashed,
            ) => true,
            // The server going away while it answers: PostgreSQL's connection exceptions (class
            // 08), shutdowns (57P01-57P03) and "too many connections" (53300); MySQL's lost
            // connections and shutdowns.
            Some(E::Database(db)) => {
                let code = db.code();
                code.as_deref().is_some_and(|c| {
                    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300")
                }) || db
                    .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|m| matches!(m.number(), 1040 | 1053 | 1927 | 2006 | 2013))
            }
            _ => false,
        },
    }
}

/// Deadlocks, serialization failures and lock wait timeouts: the transaction may simply be run
/// again. PostgreSQL's SQLSTATE `40001` and `40P01`; MySQL's error 1213 and 1205 (SQLSTATE
/// `40001` and `HY000`).
pub fn is_retryable(e: &DbErr) -> bool {
    let Some(sea_orm::sqlx::Error::Database(db)) = sqlx_error(e) else {
        return false;
    };
    if matches!(db.code().as_deref(), Some("40001" | "40P01")) {
        return true;
    }
    db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|m| matches!(m.number(), 1213 | 1205))
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
