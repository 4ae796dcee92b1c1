//! `/metrics`, `/healthz` and `/readyz` on `SECKILL_WORKERS_ADDR`.

use crate::runner::Runtime;
use bytes::Bytes;
use fred::prelude::*;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::ConnectionTrait;
use seckill_infra::lifecycle::Shutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn ready(rt: &Runtime) -> (bool, bool, bool) {
    let t = Duration::from_secs(2);
    let redis = tokio::time::timeout(t, rt.redis.next().ping::<String>(None))
        .await
        .is_ok_and(|r| r.is_ok());
    let broker = rt.publisher.ready().await;
    let db = tokio::time::timeout(t, rt.db.execute_unprepared("SELECT 1"))
        .await
        .is_ok_and(|r| r.is_ok());
    (redis, broker, db)
}

/// Whether the workers can do their job, and what each dependency says.
async fn readiness(rt: &Runtime) -> (bool, serde_json::Value) {
    let (redis, broker, db) = ready(rt).await;
    let durability = rt.durability.check_now().await;
    let recovering = rt.recovery.genes_not_ready().await.unwrap_or_default();
    let ok = redis && broker && db && durability.ok && recovering.is_empty();
    let body = serde_json::json!({
        "redis": redis,
        "rabbitmq": broker,
        "database": db,
        "redis_durability": {
            "mode": durability.mode.as_str(),
            "ok": durability.ok,
            "reasons": durability.reasons,
        },
        "redis_recovering_genes": recovering,
    });
    (ok, body)
}

pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    metrics: PrometheusHandle,
    mut shutdown: Shutdown,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(s) => s, Err(_) => continue },
            _ = shutdown.asked() => return,
        };
        let rt = rt.clone();
        let metrics = metrics.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let rt = rt.clone();
                let metrics = metrics.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/healthz" => text(
                            StatusCode::OK,
                            "application/json",
                            r#"{"status":"ok"}"#.into(),
                        ),
                        "/readyz" => {
                            let (ok, body) = readiness(&rt).await;
                            text(
                                if ok {
                                    StatusCode::OK
                                } else {
                                    StatusCode::SERVICE_UNAVAILABLE
                                },
                                "application/json",
                                body.to_string(),
                            )
                        }
                        "/metrics" => {
                            // Readiness as of the scrape, so an alert sees what `/readyz` would.
                            let (ok, _) = readiness(&rt).await;
                            metrics::gauge!("seckill_ready").set(if ok { 1.0 } else { 0.0 });
                            text(
                                StatusCode::OK,
                                "text/plain; version=0.0.4",
                                metrics.render(),
                            )
                        }
                        _ => text(
                            StatusCode::NOT_FOUND,
                            "application/json",
                            r#"{"error":"not_found","message":"no such route"}"#.into(),
                        ),
                    };
                    Ok::<_, Infallible>(resp)
                }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
