//! A sale of one item over K shards (`flash-sale --shards K`): what each shard sold, the units
//! that moved between the shards, and the CPU of each Redis master over the run's window.
//!
//! - Sales: every order carries its buyer's home shard's gene in its id, so the units each shard
//!   sold are the database's orders of the item grouped by gene.
//! - Transfers: each credited transfer leaves a marker on its target (`xin:<item>:<id>` = units,
//!   kept a day) and its id was minted in its source's gene, so the markers say what came in and
//!   what went out of each shard.
//! - CPU: each master's `redis-server` process (its pid from `INFO server`), user + system time
//!   from `/proc/<pid>/stat` at the first request and at the drain's end. A master on another
//!   machine has no pid here and no figure.

use anyhow::Context;
use fred::prelude::*;
use fred::types::InfoKind;
use futures_util::TryStreamExt;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use seckill_infra::scripts::{Held, Scripts, ShardState};
use seckill_schema::keys::shard_gene;
use seckill_schema::snowflake::gene_of;
use seckill_schema::{ItemId, Keys};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One shard's part of the sale.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSales {
    pub shard: u8,
    pub gene: u8,
    /// The port of the master serving the shard's slot.
    pub master_port: Option<u16>,
    /// Units the shard held when the load began.
    pub start: i64,
    /// Units sold from the shard (its buyers' orders).
    pub sold: i64,
    /// Units credited to the shard by transfers, and their count.
    pub transfers_in: i64,
    pub transfers_in_count: u64,
    /// Units that left the shard by credited transfers, and their count.
    pub transfers_out: i64,
    pub transfers_out_count: u64,
    /// What the shard holds at the drain's end, and its units on their way out.
    pub remaining: i64,
    pub pending: i64,
}

/// One Redis master's CPU over the run's window.
#[derive(Debug, Clone, Serialize)]
pub struct MasterCpu {
    pub port: u16,
    pub pid: Option<u32>,
    /// The item's shards whose slots it serves.
    pub shards: Vec<u8>,
    pub cpu_ms: f64,
    /// Its part of every master's CPU together.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardsReport {
    pub shards: u8,
    pub per_shard: Vec<ShardSales>,
    pub masters: Vec<MasterCpu>,
    /// Every master's CPU together, per accepted purchase.
    pub redis_us_per_purchase: Option<f64>,
    /// The highest master's share (1/K at best on K masters).
    pub max_share: Option<f64>,
}

/// A Redis master found for the run: where it listens and its process here.
#[derive(Debug, Clone)]
struct Master {
    host: String,
    port: u16,
    pid: Option<u32>,
}

/// Taken at the first request: the shards' units and each master's CPU time.
pub struct Probe {
    item: ItemId,
    shards: u8,
    scripts: Scripts,
    redis: Client,
    masters: Vec<Master>,
    start: Vec<ShardState>,
    ticks: Vec<Option<u64>>,
}

impl Probe {
    pub async fn start(
        config: &seckill_infra::Config,
        item: ItemId,
        shards: u8,
    ) -> anyhow::Result<Probe> {
        let redis = seckill_infra::redis::client(&config.redis_url).await?;
        let scripts = Scripts::new(Keys::new(&config.namespace));
        let masters = masters(&redis, &config.redis_url).await?;
        let start = consistent(&scripts, &redis, item, shards).await?;
        let ticks = masters.iter().map(|m| m.pid.and_then(ticks_of)).collect();
        Ok(Probe {
            item,
            shards,
            scripts,
            redis,
            masters,
            start,
            ticks,
        })
    }

    /// At the drain's end: the masters' CPU since [`start`](Self::start), then the shards'
    /// sales and transfers.
    pub async fn finish(
        self,
        db: &DatabaseConnection,
        accepted: u64,
    ) -> anyhow::Result<ShardsReport> {
        let ticks: Vec<Option<u64>> = self
            .masters
            .iter()
            .map(|m| m.pid.and_then(ticks_of))
            .collect();
        let ms_per_tick = 1000.0 / crate::cpu::clock_ticks_per_second() as f64;
        let used: Vec<Option<f64>> = ticks
            .iter()
            .zip(&self.ticks)
            .map(|(now, then)| Some(now.as_ref()?.saturating_sub((*then)?) as f64 * ms_per_tick))
            .collect();
        let end = consistent(&self.scripts, &self.redis, self.item, self.shards).await?;
        let sold = sold_by_gene(db, self.item).await?;
        let markers = self.transfers().await?;
        let routing = self.redis.cached_cluster_state();
        let port_of = |gene: u8| -> Option<u16> {
            let key = self.scripts.keys().item_in(self.item, gene);
            match &routing {
                Some(r) => r
                    .get_server(fred::util::redis_keyslot(key.as_bytes()))
                    .map(|s| s.port),
                None => self.masters.first().map(|m| m.port),
            }
        };
        let per_shard: Vec<ShardSales> = (0..self.shards)
            .map(|s| {
                let gene = shard_gene(self.item, s);
                let (start, end) = (&self.start[s as usize], &end[s as usize]);
                let ins = markers.iter().filter(|(target, _, _)| *target == gene);
                let outs = markers.iter().filter(|(_, id, _)| gene_of(*id) == gene);
                ShardSales {
                    shard: s,
                    gene,
                    master_port: port_of(gene),
                    start: start.remaining,
                    sold: sold.get(&gene).copied().unwrap_or(0),
                    transfers_in: ins.clone().map(|(_, _, u)| u).sum(),
                    transfers_in_count: ins.count() as u64,
                    transfers_out: outs.clone().map(|(_, _, u)| u).sum(),
                    transfers_out_count: outs.count() as u64,
                    remaining: end.remaining,
                    pending: end.pending,
                }
            })
            .collect();
        let total: f64 = used.iter().flatten().sum();
        let masters: Vec<MasterCpu> = self
            .masters
            .iter()
            .zip(&used)
            .map(|(m, used)| MasterCpu {
                port: m.port,
                pid: m.pid,
                shards: per_shard
                    .iter()
                    .filter(|s| s.master_port == Some(m.port))
                    .map(|s| s.shard)
                    .collect(),
                cpu_ms: used.unwrap_or(0.0),
                share: match used {
                    Some(u) if total > 0.0 => u / total,
                    _ => 0.0,
                },
            })
            .collect();
        let measured = used.iter().any(Option::is_some) && total > 0.0;
        let _ = self.redis.quit().await;
        Ok(ShardsReport {
            shards: self.shards,
            per_shard,
            redis_us_per_purchase: (measured && accepted > 0)
                .then(|| total * 1000.0 / accepted as f64),
            max_share: measured.then(|| masters.iter().map(|m| m.share).fold(0.0, f64::max)),
            masters,
        })
    }

    /// Every credited transfer of the item: (target gene, transfer id, units), from the markers
    /// on each shard's slot.
    async fn transfers(&self) -> anyhow::Result<Vec<(u8, u64, i64)>> {
        let mut found = Vec::new();
        for s in 0..self.shards {
            let gene = shard_gene(self.item, s);
            let prefix = self.scripts.keys().transfer_in(self.item, gene, 0);
            let prefix = prefix.trim_end_matches('0');
            let keys: Vec<Key> = self
                .redis
                .scan_buffered(format!("{prefix}*"), Some(1000), None)
                .try_collect()
                .await
                .context("scanning the item's transfer markers")?;
            for key in keys {
                let name = key.as_str_lossy().into_owned();
                let Some(id) = name.strip_prefix(prefix).and_then(|id| id.parse().ok()) else {
                    continue;
                };
                let units: Option<i64> = self.redis.get(key).await?;
                found.push((gene, id, units.unwrap_or(0)));
            }
        }
        Ok(found)
    }
}

/// Every shard of the item at one consistent moment.
async fn consistent(
    scripts: &Scripts,
    redis: &Client,
    item: ItemId,
    shards: u8,
) -> anyhow::Result<Vec<ShardState>> {
    scripts
        .shards_state(redis, item, shards, Held::Counted)
        .await?
        .context("the item's shards kept changing while they were read")
}

/// Units of the item's orders by their id's gene (the buyer's home shard).
async fn sold_by_gene(db: &DatabaseConnection, item: ItemId) -> anyhow::Result<BTreeMap<u8, i64>> {
    let sql = "SELECT id, quantity FROM orders WHERE item_id = $1";
    let stmt = crate::db::statement(db.get_database_backend(), sql, vec![(item.0 as i64).into()]);
    let rows = db
        .query_all_raw(stmt)
        .await
        .context("reading the item's orders")?;
    let mut by_gene = BTreeMap::new();
    for row in rows {
        let id: i64 = row.try_get("", "id")?;
        let quantity: i32 = row.try_get("", "quantity")?;
        *by_gene.entry(gene_of(id as u64)).or_default() += i64::from(quantity);
    }
    Ok(by_gene)
}

/// The masters behind `url`: a cluster's primaries, or the one server; each with its process
/// here when its `INFO server` names one that `/proc` shows.
async fn masters(redis: &Client, url: &str) -> anyhow::Result<Vec<Master>> {
    let servers: Vec<(String, u16)> = match redis.cached_cluster_state() {
        Some(routing) => routing
            .unique_primary_nodes()
            .into_iter()
            .map(|s| (s.host.to_string(), s.port))
            .collect(),
        None => {
            let config = fred::types::config::Config::from_url(url)?;
            match config.server {
                fred::types::config::ServerConfig::Centralized { server } => {
                    vec![(server.host.to_string(), server.port)]
                }
                // Sentinel: the master moves; its CPU is not followed.
                _ => Vec::new(),
            }
        }
    };
    let mut found = Vec::new();
    for (host, port) in servers {
        let node = seckill_infra::redis::client(&format!("redis://{host}:{port}")).await?;
        let info: String = node.info(Some(InfoKind::Server)).await?;
        let _ = node.quit().await;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| ticks_of(*pid).is_some());
        found.push(Master { host, port, pid });
    }
    found.sort_by_key(|m| (m.host.clone(), m.port));
    Ok(found)
}

/// A `redis-server` process's user + system time, in clock ticks, from `/proc/<pid>/stat`.
fn ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, ticks) = crate::cpu::parse_stat(&stat)?;
    name.starts_with("redis-server").then_some(ticks.own)
}

/// The shards' lines of the printed report.
pub fn table(r: &ShardsReport) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "shards ({})", r.shards);
    let _ = writeln!(
        t,
        "  {:>5} {:>4} {:>6} {:>8} {:>8} {:>14} {:>14} {:>9}",
        "shard", "gene", "master", "start", "sold", "in (units/n)", "out (units/n)", "remaining"
    );
    for s in &r.per_shard {
        let _ = writeln!(
            t,
            "  {:>5} {:>4} {:>6} {:>8} {:>8} {:>14} {:>14} {:>9}",
            s.shard,
            s.gene,
            s.master_port.map_or("-".into(), |p| p.to_string()),
            s.start,
            s.sold,
            format!("{}/{}", s.transfers_in, s.transfers_in_count),
            format!("{}/{}", s.transfers_out, s.transfers_out_count),
            s.remaining + s.pending,
        );
    }
    for m in &r.masters {
        let _ = writeln!(
            t,
            "  redis master :{} (pid {}) shards {:?}: {:.0} ms CPU, {:.1} % of the masters'",
            m.port,
            m.pid.map_or("-".into(), |p| p.to_string()),
            m.shards,
            m.cpu_ms,
            m.share * 100.0
        );
    }
    if let Some(us) = r.redis_us_per_purchase {
        let _ = writeln!(
            t,
            "  redis CPU per purchase {us:.1} µs (every master); highest master's share {:.1} %",
            r.max_share.unwrap_or(0.0) * 100.0
        );
    }
    t
}

/// The item's `remaining` over its shards, with the units on their way between them (`None`: no
/// shard 0): what the sale's progress watch compares with the database.
pub async fn remaining(
    scripts: &Scripts,
    redis: &Client,
    item: ItemId,
    shards: u8,
) -> anyhow::Result<Option<i64>> {
    if shards <= 1 {
        return Ok(redis.hget(scripts.keys().item(item), "remaining").await?);
    }
    let Some(state) = scripts
        .shards_state(redis, item, shards, Held::NotRead)
        .await?
    else {
        return Ok(None);
    };
    Ok(state
        .iter()
        .any(|s| s.exists)
        .then(|| state.iter().map(|s| s.remaining + s.pending).sum()))
}
