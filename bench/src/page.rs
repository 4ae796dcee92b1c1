//! The public product page under a crowd: oha firing `GET /items/{item_id}` at a running gateway,
//! each answer from the gateway's own catalog cache (no Redis, no database on a hit), then at the
//! bare hyper server with the same settings: how far a cache hit is from the cost of HTTP itself.

use crate::baseline;
use crate::http::HttpClient;
use crate::oha::{self, Body, Load, LoadStats};
use anyhow::ensure;
use http::StatusCode;
use seckill_infra::Config;
use seckill_schema::ItemId;
use serde::Serialize;
use std::path::PathBuf;

/// The page's item: never sold out, whatever the run (nothing is bought anyway).
const STOCK: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct PageOptions {
    /// Base URL of the gateway.
    pub gateway: String,
    /// The item to ask for; `None`: a new one, created through the admin API.
    pub item: Option<ItemId>,
    pub requests: u64,
    pub connections: u64,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageBench {
    pub item_id: ItemId,
    pub gateway: String,
    pub requests: u64,
    pub connections: u64,
    /// oha against the gateway's `GET /items/{item_id}`.
    pub page: LoadStats,
    /// oha's `GET` against the bare hyper server.
    pub bare: LoadStats,
}

pub async fn run(config: &Config, opts: &PageOptions) -> anyhow::Result<PageBench> {
    oha::prepare(&opts.out).await?;
    let http = HttpClient::default();
    let item = match opts.item {
        Some(item) => item,
        None => create_item(&http, config, &opts.gateway).await?,
    };
    let url = format!("{}/items/{item}", opts.gateway);
    let (status, body) = http.get(&url).await?;
    ensure!(
        status == StatusCode::OK,
        "GET {url}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let page = oha::run(&Load {
        url: &url,
        requests: opts.requests,
        connections: opts.connections,
        body: Body::Empty,
        tui: false,
        output: &opts.out.join("item-page-oha.json"),
    })
    .await?;
    let bare = baseline::bare_http(
        opts.requests,
        opts.connections,
        Body::Empty,
        &opts.out.join("item-page-bare-oha.json"),
    )
    .await?;
    Ok(PageBench {
        item_id: item,
        gateway: opts.gateway.clone(),
        requests: opts.requests,
        connections: opts.connections,
        page,
        bare,
    })
}

async fn create_item(http: &HttpClient, config: &Config, gateway: &str) -> anyhow::Result<ItemId> {
    let fields = serde_json::json!({"price_cents": 990, "stock": STOCK});
    crate::http::create_item(http, config, gateway, "product page", fields).await
}
