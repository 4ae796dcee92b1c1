//! The per-route metrics every answer records: requests by route and status, their latency, the
//! purchases' outcomes and the payment callbacks'. The hot routes' handles are registered once, so
//! a purchase or a product page costs no registry lookup.

use http::StatusCode;

/// Records one answered request.
pub fn record(
    route: &'static str,
    status: StatusCode,
    outcome: Option<&'static str>,
    elapsed: f64,
) {
    if route == "seckill" {
        let m = SECKILL_METRICS.get_or_init(|| RouteMetrics::new("seckill"));
        m.count(status);
        m.latency.record(elapsed);
        m.outcomes.count(outcome.unwrap_or("accepted"));
    } else if route == "item" {
        let m = ITEM_METRICS.get_or_init(|| RouteMetrics::new("item"));
        m.count(status);
        m.latency.record(elapsed);
    } else {
        if route == "payment_callback" {
            let outcome = match outcome {
                None => "recorded",
                Some("unauthorized") => "invalid_signature",
                Some("internal" | "unavailable") => "error",
                Some(code) => code,
            };
            metrics::counter!("seckill_payment_callbacks_total", "outcome" => outcome).increment(1);
        }
        metrics::counter!("seckill_http_requests_total", "route" => route, "status" => status_label(status))
            .increment(1);
        metrics::histogram!("seckill_http_request_duration_seconds", "route" => route)
            .record(elapsed);
    }
}

static SECKILL_METRICS: std::sync::OnceLock<RouteMetrics> = std::sync::OnceLock::new();
static ITEM_METRICS: std::sync::OnceLock<RouteMetrics> = std::sync::OnceLock::new();

/// `seckill_purchases_total{outcome}`: `accepted` or the error code, each counter registered once
/// (and so exported at 0 before its first purchase, which a rate over it needs).
struct Outcomes(Vec<(&'static str, metrics::Counter)>);

impl Outcomes {
    fn purchases() -> Self {
        const CODES: [&str; 16] = [
            "accepted",
            "sold_out",
            "limit_reached",
            "not_started",
            "ended",
            "bad_request",
            "unauthorized",
            "unknown_item",
            "payload_too_large",
            "rate_limited",
            "unavailable",
            "outcome_unknown",
            "recovering",
            "internal",
            "request_timeout",
            "other",
        ];
        Outcomes(
            CODES
                .iter()
                .map(|c| {
                    (
                        *c,
                        metrics::counter!("seckill_purchases_total", "outcome" => *c),
                    )
                })
                .collect(),
        )
    }

    fn count(&self, outcome: &str) {
        let i = self
            .0
            .iter()
            .position(|(c, _)| *c == outcome)
            .unwrap_or(self.0.len() - 1);
        self.0[i].1.increment(1);
    }
}

const STATUS_LABELS: [&str; 13] = [
    "200", "201", "202", "400", "401", "404", "405", "409", "413", "429", "503", "500", "other",
];

struct RouteMetrics {
    by_status: Vec<metrics::Counter>,
    latency: metrics::Histogram,
    outcomes: Outcomes,
}

impl RouteMetrics {
    fn new(route: &'static str) -> Self {
        RouteMetrics {
            by_status: STATUS_LABELS
                .iter()
                .map(|s| metrics::counter!("seckill_http_requests_total", "route" => route, "status" => *s))
                .collect(),
            latency: metrics::histogram!("seckill_http_request_duration_seconds", "route" => route),
            outcomes: Outcomes::purchases(),
        }
    }

    fn count(&self, status: StatusCode) {
        let label = status_label(status);
        if let Some(i) = STATUS_LABELS.iter().position(|l| *l == label) {
            self.by_status[i].increment(1);
        }
    }
}

pub fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        429 => "429",
        503 => "503",
        500 => "500",
        _ => "other",
    }
}
