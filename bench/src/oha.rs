//! Drives load with `oha` and reads its JSON summary: throughput, latency percentiles and
//! histogram, and the status code distribution.

use anyhow::{Context, ensure};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

/// What each request carries.
pub enum Body<'a> {
    /// Nothing: a `GET`.
    Empty,
    /// The same body every time.
    Fixed(&'a str),
    /// One line of this file per request. oha draws the lines at random, with replacement.
    Lines(&'a Path),
}

/// One oha run: a `GET`, or a `POST` of JSON bodies.
pub struct Load<'a> {
    pub url: &'a str,
    pub requests: u64,
    pub connections: u64,
    pub body: Body<'a>,
    /// Show oha's live view (it needs a terminal).
    pub tui: bool,
    /// Where oha writes its JSON summary; kept as an artefact of the run.
    pub output: &'a Path,
}

/// oha's summary, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    pub requests_per_sec: f64,
    pub total_secs: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `p10` … `p99.99`.
    pub percentiles_ms: BTreeMap<String, f64>,
    pub status_codes: BTreeMap<u16, u64>,
    /// Requests that got no answer, by reason.
    pub errors: BTreeMap<String, u64>,
    /// `(upper bound of the bucket in ms, responses)`, fastest first.
    pub histogram_ms: Vec<(f64, u64)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    summary: RawSummary,
    #[serde(default)]
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(default)]
    response_time_histogram: BTreeMap<String, u64>,
    #[serde(default)]
    status_code_distribution: BTreeMap<String, u64>,
    #[serde(default)]
    error_distribution: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSummary {
    requests_per_sec: f64,
    total: f64,
}

impl LoadStats {
    pub fn parse(json: &[u8]) -> anyhow::Result<LoadStats> {
        let raw: Raw = serde_json::from_slice(json).context("reading oha's JSON output")?;
        let ms = |secs: f64| secs * 1000.0;
        let percentiles_ms: BTreeMap<String, f64> = raw
            .latency_percentiles
            .into_iter()
            .filter_map(|(k, v)| Some((k, ms(v?))))
            .collect();
        let mut histogram_ms = raw
            .response_time_histogram
            .into_iter()
            .map(|(k, n)| {
                let upper: f64 = k.parse().context("a histogram bucket of oha")?;
                Ok((ms(upper), n))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        histogram_ms.sort_by(|a, b| a.0.total_cmp(&b.0));
        let status_codes = raw
            .status_code_distribution
            .into_iter()
            .map(|(k, n)| Ok((k.parse().context("a status code of oha")?, n)))
            .collect::<anyhow::Result<_>>()?;
        Ok(LoadStats {
            requests_per_sec: raw.summary.requests_per_sec,
            total_secs: raw.summary.total,
            p50_ms: percentiles_ms.get("p50").copied(),
            p99_ms: percentiles_ms.get("p99").copied(),
            percentiles_ms,
            status_codes,
            errors: raw.error_distribution,
            histogram_ms,
        })
    }

    /// Responses with this status code.
    pub fn count(&self, status: u16) -> u64 {
        self.status_codes.get(&status).copied().unwrap_or(0)
    }

    /// Requests that got no answer (cut off, timed out, refused).
    pub fn unanswered(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Before a run that writes into `out`: the directory made, and oha there.
pub async fn prepare(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    ensure_installed().await
}

/// Fails early, with the fix, when oha is missing.
async fn ensure_installed() -> anyhow::Result<()> {
    let found = tokio::process::Command::new("oha")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    ensure!(found, "oha is not installed: `cargo install oha --locked`");
    Ok(())
}

pub async fn run(load: &Load<'_>) -> anyhow::Result<LoadStats> {
    let mut cmd = tokio::process::Command::new("oha");
    cmd.arg("-n")
        .arg(load.requests.to_string())
        .arg("-c")
        .arg(load.connections.to_string());
    const JSON_POST: [&str; 4] = ["-m", "POST", "-H", "content-type: application/json"];
    match load.body {
        Body::Empty => cmd.args(["-m", "GET"]),
        Body::Fixed(body) => cmd.args(JSON_POST).arg("-d").arg(body),
        Body::Lines(path) => cmd.args(JSON_POST).arg("-Z").arg(path),
    };
    cmd.args(["--output-format", "json", "-o"]).arg(load.output);
    if load.tui {
        cmd.stdin(Stdio::inherit());
    } else {
        cmd.arg("--no-tui").stdin(Stdio::null());
    }
    cmd.arg(load.url);
    let status = cmd
        .status()
        .await
        .context("running oha (install it with `cargo install oha --locked`)")?;
    ensure!(status.success(), "oha failed: {status}");
    let json = tokio::fs::read(load.output)
        .await
        .with_context(|| format!("reading {}", load.output.display()))?;
    LoadStats::parse(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oha_json() {
        let json = br#"{
            "summary": {"successRate": 1.0, "total": 0.5, "requestsPerSec": 4000.5},
            "responseTimeHistogram": {"0.002": 7, "0.0005": 3},
            "latencyPercentiles": {"p50": 0.001, "p99": 0.0025, "p99.9": null},
            "statusCodeDistribution": {"202": 50, "409": 1950},
            "errorDistribution": {"connection closed": 2}
        }"#;
        let s = LoadStats::parse(json).unwrap();
        assert_eq!(s.requests_per_sec, 4000.5);
        assert_eq!(s.p50_ms, Some(1.0));
        assert_eq!(s.p99_ms, Some(2.5));
        assert!(!s.percentiles_ms.contains_key("p99.9"));
        assert_eq!(s.histogram_ms, vec![(0.5, 3), (2.0, 7)]);
        assert_eq!((s.count(202), s.count(409), s.count(500)), (50, 1950, 0));
        assert_eq!(s.unanswered(), 2);
    }
}
