//! Logs, metrics and the shutdown signal shared by every binary.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Logs to stderr, filtered by `RUST_LOG`; one JSON object per line when `SECKILL_LOG_FORMAT=json`,
/// each event with its span's fields (`order.id`, `item.id`, a batch's size and outcome), and one
/// line per request or batch when its span closes.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn,fred=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match std::env::var("SECKILL_LOG_FORMAT").as_deref() {
        // A request log too: each request's and batch's span, with its fields and time, when it
        // closes (the hot route's span is at debug level, so purchases add no line by default).
        Ok("json") => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .try_init(),
        _ => builder.try_init(),
    };
}

/// The histogram buckets of durations, in seconds: from 0.2 ms (a purchase) to 60 s (an order's
/// way from accepted to awaiting payment at the end of a long drain).
const SECONDS_BUCKETS: [f64; 18] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    20.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and keeps its histograms drained.
pub fn metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_size".into()),
                        &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0],
                    )
                })
                .expect("bucket lists are not empty")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            let upkeep = handle.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
