//! `report.svg`, written by hand: the latency distribution of the load (oha's percentiles: its
//! histogram's linear buckets put nearly every answer in the first bar), and the
//! item's orders by status over time, as sampled while the pipeline drained and settled, and what
//! an accepted order cost in CPU, process by process.

use crate::report::{Report, Sample};
use seckill_schema::OrderStatus;
use std::fmt::Write;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const TICKS: usize = 4;

/// The area a panel draws in, `top` being the panel's offset in the picture.
struct Plot {
    top: f64,
}

impl Plot {
    fn x0(&self) -> f64 {
        LEFT
    }
    fn width(&self) -> f64 {
        WIDTH - LEFT - RIGHT
    }
    fn y0(&self) -> f64 {
        self.top + PANEL - BOTTOM
    }
    fn height(&self) -> f64 {
        PANEL - TOP - BOTTOM
    }

    /// Title, axes, horizontal grid lines and their labels, for values `0..=max`.
    fn frame(&self, s: &mut String, title: &str, x_label: &str, y_label: &str, max: f64) {
        let (x0, y0, w, h) = (self.x0(), self.y0(), self.width(), self.height());
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-size="15" font-weight="bold">{title}</text>"#,
            self.top + 24.0
        );
        for i in 0..=TICKS {
            let v = max * i as f64 / TICKS as f64;
            let y = y0 - h * i as f64 / TICKS as f64;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + w,
                x0 - 6.0,
                y + 4.0,
                number(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y0}" x2="{:.1}" y2="{y0}" stroke="#424242"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{:.1}" stroke="#424242"/>"##,
            x0 + w,
            y0 - h
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_label}</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{y_label}</text>"#,
            x0 + w / 2.0,
            y0 + 38.0,
            y0 - h / 2.0,
            y0 - h / 2.0
        );
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn color(status: &str) -> &'static str {
    match status.parse::<OrderStatus>() {
        Ok(OrderStatus::Pending) => "#9e9e9e",
        Ok(OrderStatus::Created) => "#90caf9",
        Ok(OrderStatus::StockLocked) => "#1e88e5",
        Ok(OrderStatus::AwaitingPayment) => "#ffb300",
        Ok(OrderStatus::Paid) => "#43a047",
        Ok(OrderStatus::Failed) => "#e53935",
        Ok(OrderStatus::Cancelled) => "#8e24aa",
        Ok(OrderStatus::TimedOut) => "#6d4c41",
        Ok(OrderStatus::RefundRequired) => "#d81b60",
        Ok(OrderStatus::Shipped) => "#00897b",
        Ok(OrderStatus::Completed) => "#1b5e20",
        Ok(OrderStatus::RefundRequested) => "#f06292",
        Ok(OrderStatus::Refunded) => "#795548",
        Err(_) => "#000000",
    }
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let height = 3.0 * PANEL;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    percentiles(&mut s, &r.load.percentiles_ms, &Plot { top: 0.0 });
    timeline(&mut s, &r.timeline, &Plot { top: PANEL });
    cpu(&mut s, &r.cpu, &Plot { top: 2.0 * PANEL });
    s.push_str("</svg>\n");
    s
}

fn percentiles(s: &mut String, by_name: &std::collections::BTreeMap<String, f64>, p: &Plot) {
    let mut points: Vec<(f64, &str, f64)> = by_name
        .iter()
        .filter_map(|(name, ms)| {
            Some((
                name.strip_prefix('p')?.parse::<f64>().ok()?,
                name.as_str(),
                *ms,
            ))
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max = points.iter().map(|p| p.2).fold(0.0, f64::max).max(0.001);
    p.frame(
        s,
        "Latency of POST /seckill",
        "percentile",
        "latency, ms",
        max,
    );
    let bars_of: Vec<(&str, f64)> = points.iter().map(|(_, name, ms)| (*name, *ms)).collect();
    bars(s, p, &bars_of, max, "ms");
}

/// What an accepted order costs in CPU over its whole life, part by part, and the total; per
/// request instead in a sale that mostly sold out (its few orders would carry the sold-out
/// answers' cost).
fn cpu(s: &mut String, cost: &crate::cpu::CpuCost, p: &Plot) {
    let per_order = cost.is_per_order();
    let mut points: Vec<(&str, f64)> = cost
        .parts
        .iter()
        .map(|(part, c)| {
            let v = if per_order {
                c.us_per_order
            } else {
                c.us_per_request
            };
            (part.as_str(), v)
        })
        .collect();
    points.push((
        "total",
        if per_order {
            cost.total_us_per_order
        } else {
            cost.total_us_per_request
        },
    ));
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001);
    let life = if cost.whole_life {
        "whole life"
    } else {
        "not the whole life"
    };
    let title = if per_order {
        format!("CPU per accepted order, {life} ({} orders)", cost.orders)
    } else {
        format!(
            "CPU per request, {life} ({} requests, {} accepted; CPU per accepted order not \
             shown: most requests sold out)",
            cost.requests, cost.orders
        )
    };
    p.frame(s, &title, "process", "CPU, µs", max);
    bars(s, p, &points, max, "µs");
}

/// One labelled bar per point, scaled to `max`.
fn bars(s: &mut String, p: &Plot, points: &[(&str, f64)], max: f64, unit: &str) {
    if points.is_empty() {
        return;
    }
    let slot = p.width() / points.len() as f64;
    for (i, (name, v)) in points.iter().enumerate() {
        let h = p.height() * v / max;
        let x = p.x0() + slot * i as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#1e88e5"><title>{name}: {v:.3} {unit}</title></rect>"##,
            x + 4.0,
            p.y0() - h,
            (slot - 8.0).max(1.0)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
            x + slot / 2.0,
            p.y0() + 16.0,
            x + slot / 2.0,
            p.y0() - h - 4.0,
            number(*v)
        );
    }
}

fn timeline(s: &mut String, samples: &[Sample], p: &Plot) {
    let max = samples
        .iter()
        .flat_map(|x| x.orders.values())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    p.frame(
        s,
        "Orders by status",
        "seconds since the load started",
        "orders",
        max,
    );
    let Some(last) = samples.last() else {
        return;
    };
    let span = last.secs.max(1e-3);
    for i in 0..=TICKS {
        let t = span * i as f64 / TICKS as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            p.x0() + p.width() * i as f64 / TICKS as f64,
            p.y0() + 16.0,
            number(t)
        );
    }
    let mut statuses: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    for sample in samples {
        for k in sample.orders.keys() {
            if !statuses.contains(&k.as_str()) {
                statuses.push(k);
            }
        }
    }
    statuses.retain(|st| {
        samples
            .iter()
            .any(|x| x.orders.get(*st).is_some_and(|n| *n > 0))
    });
    for (row, status) in statuses.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|x| {
                let n = x.orders.get(*status).copied().unwrap_or(0) as f64;
                format!(
                    "{:.1},{:.1}",
                    p.x0() + p.width() * x.secs / span,
                    p.y0() - p.height() * n / max
                )
            })
            .collect();
        let c = color(status);
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            points.join(" ")
        );
        let y = p.top + TOP + 16.0 * row as f64;
        let x = WIDTH - RIGHT + 16.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{c}"/><text x="{:.1}" y="{:.1}">{status}</text>"#,
            y,
            x + 18.0,
            y + 10.0
        );
    }
}
