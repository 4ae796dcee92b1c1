//! A small HTTP/1 client for the gateway's admin API and payment webhook.

use anyhow::{Context, ensure};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use seckill_infra::Config;
use seckill_schema::ItemId;
use seckill_schema::snowflake::now_ms;
use std::time::Duration;

/// One request, body included, gives up after this.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build_http(),
        }
    }
}

impl HttpClient {
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("building {method} {url}"))?;
        let exchange = async {
            let resp = self.inner.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {url} timed out"))?
            .with_context(|| format!("{method} {url}"))
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.send(Method::POST, url, &all, body).await
    }
}

/// Creates an item through the gateway's admin API, with an id unique per run (and readable as
/// the time it was made), named `<name> <id>`, with the other fields of `fields`.
pub async fn create_item(
    http: &HttpClient,
    config: &Config,
    gateway: &str,
    name: &str,
    mut fields: serde_json::Value,
) -> anyhow::Result<ItemId> {
    let item = ItemId(now_ms());
    fields["item_id"] = item.0.into();
    fields["name"] = format!("{name} {item}").into();
    let auth = format!("Bearer {}", config.admin_token);
    let (status, answer) = http
        .post_json(
            &format!("{gateway}/admin/items"),
            &[("authorization", &auth)],
            &fields,
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "creating item {item}: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(item)
}
