//! Operations: `GET /healthz`, `GET /readyz` and `GET /metrics`.

use crate::api::{DurabilityView, Health, Readiness};
use crate::error::{Body, json};
use crate::state::State;
use bytes::Bytes;
use fred::prelude::*;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use std::sync::Arc;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = crate::api::Health)))]
pub fn healthz() -> Response<Body> {
    json(StatusCode::OK, &Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = crate::api::Readiness),
        (status = 503, description = "Not ready, and why", body = crate::api::Readiness),
    ))]
pub async fn readyz(state: &Arc<State>) -> Response<Body> {
    let (ok, body) = readiness(state).await;
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// Whether this gateway can sell, and why not.
async fn readiness(state: &Arc<State>) -> (bool, Readiness) {
    let redis_ok = state.redis.next().ping::<String>(None).await.is_ok();
    let broker_ok = state.parts.publisher.ready().await;
    let durability = state.parts.durability.check_now().await;
    let recovering = state
        .parts
        .recovery
        .genes_not_ready()
        .await
        .unwrap_or_default();
    let ok = redis_ok && broker_ok && durability.ok && recovering.is_empty();
    let body = Readiness {
        redis: redis_ok,
        rabbitmq: broker_ok,
        redis_durability: DurabilityView {
            mode: durability.mode.as_str(),
            ok: durability.ok,
            reasons: durability.reasons,
        },
        redis_recovering_genes: recovering,
    };
    (ok, body)
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics_text(state: &Arc<State>) -> Response<Body> {
    // Readiness as of the scrape, so an alert sees what `/readyz` would answer.
    let (ready, _) = readiness(state).await;
    metrics::gauge!("seckill_ready").set(if ready { 1.0 } else { 0.0 });
    if let Ok(n) = crate::relay::backlog(&state.redis, &state.outboxes).await {
        metrics::gauge!("seckill_outbox_backlog").set(n as f64);
    }
    let mut resp = Response::new(Full::new(Bytes::from(state.parts.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
