//! The numbers behind the status page: per-route rate, error rate, latency percentiles, cache
//! hit ratio and rate-limited share over a sliding window, computed from the Prometheus
//! registry (no second set of counters on the request path).

use prometheus::proto::{MetricFamily, MetricType};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

/// Cumulative per-route figures at one instant.
#[derive(Debug, Clone, Default)]
pub struct RouteTotals {
    pub requests: f64,
    /// 5xx answers.
    pub errors: f64,
    /// 4xx answers.
    pub client_errors: f64,
    pub rate_limited: f64,
    pub cache_hits: f64,
    pub cache_lookups: f64,
    /// (upper bound, cumulative count), ascending.
    pub buckets: Vec<(f64, f64)>,
}

type Totals = BTreeMap<String, RouteTotals>;

/// Figures for one route over the window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteWindow {
    pub requests_total: f64,
    pub rps: f64,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cache_hit_ratio: Option<f64>,
    pub rate_limited_share: Option<f64>,
}

/// Snapshots taken by the maintenance task; the oldest kept is the window's start.
pub struct StatusWindow {
    snapshots: Mutex<VecDeque<(Instant, Totals)>>,
    keep: usize,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

/// Aggregates the registry per route.
pub fn totals(families: &[MetricFamily]) -> Totals {
    let mut out: Totals = BTreeMap::new();
    for fam in families {
        match (fam.name(), fam.get_field_type()) {
            ("http_server_request_duration_seconds", MetricType::HISTOGRAM) => {
                for m in fam.get_metric() {
                    let t = out.entry(label(m, "route").to_string()).or_default();
                    let h = m.get_histogram();
                    let count = h.get_sample_count() as f64;
                    t.requests += count;
                    match label(m, "status_class") {
                        "5xx" => t.errors += count,
                        "4xx" => t.client_errors += count,
                        _ => {}
                    }
                    let buckets = h.get_bucket();
                    if t.buckets.is_empty() {
                        t.buckets = buckets.iter().map(|b| (b.upper_bound(), 0.0)).collect();
                    }
                    for (acc, b) in t.buckets.iter_mut().zip(buckets) {
                        acc.1 += b.cumulative_count() as f64;
                    }
                }
            }
            ("fastgate_rate_limited_total", _) => {
                for m in fam.get_metric() {
                    out.entry(label(m, "route").to_string()).or_default().rate_limited += m.get_counter().value();
                }
            }
            ("fastgate_cache_requests_total", _) => {
                for m in fam.get_metric() {
                    let t = out.entry(label(m, "route").to_string()).or_default();
                    let v = m.get_counter().value();
                    match label(m, "result") {
                        "BYPASS" => {}
                        "HIT" | "STALE" => {
                            t.cache_hits += v;
                            t.cache_lookups += v;
                        }
                        _ => t.cache_lookups += v,
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The q-quantile from cumulative bucket counts, interpolated linearly within the bucket
/// (what PromQL's `histogram_quantile` does).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 { (rank - prev.1) / in_bucket } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

impl StatusWindow {
    pub fn new(keep: usize) -> Self {
        StatusWindow {
            snapshots: Mutex::new(VecDeque::from([(Instant::now(), Totals::new())])),
            keep,
        }
    }

    pub fn snapshot(&self, metrics: &super::Metrics) {
        let t = totals(&metrics.gather());
        if let Ok(mut s) = self.snapshots.lock() {
            s.push_back((Instant::now(), t));
            while s.len() > self.keep {
                s.pop_front();
            }
        }
    }

    /// Per route, from the oldest snapshot to now; and the window's length in seconds.
    pub fn window(&self, metrics: &super::Metrics) -> (f64, BTreeMap<String, RouteWindow>) {
        let now = totals(&metrics.gather());
        let (start, base) = match self.snapshots.lock() {
            Ok(s) => s.front().cloned().unwrap_or((Instant::now(), Totals::new())),
            Err(_) => (Instant::now(), Totals::new()),
        };
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let empty = RouteTotals::default();
        let mut out = BTreeMap::new();
        for (route, cur) in now {
            let old = base.get(&route).unwrap_or(&empty);
            let d = |a: f64, b: f64| (a - b).max(0.0);
            let requests = d(cur.requests, old.requests);
            let buckets: Vec<(f64, f64)> = cur
                .buckets
                .iter()
                .enumerate()
                .map(|(i, (le, c))| (*le, d(*c, old.buckets.get(i).map_or(0.0, |b| b.1))))
                .collect();
            let lookups = d(cur.cache_lookups, old.cache_lookups);
            let limited = d(cur.rate_limited, old.rate_limited);
            let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
            let ms = |q: f64| quantile(q, &buckets).map(|s| s * 1000.0);
            out.insert(
                route,
                RouteWindow {
                    requests_total: cur.requests,
                    rps: requests / secs,
                    error_rate: ratio(d(cur.errors, old.errors), requests),
                    p50_ms: ms(0.5),
                    p95_ms: ms(0.95),
                    p99_ms: ms(0.99),
                    cache_hit_ratio: ratio(d(cur.cache_hits, old.cache_hits), lookups),
                    rate_limited_share: ratio(limited, requests),
                },
            );
        }
        (secs, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_promql() {
        let b = [(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(0.5, &b).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(0.7, &b).unwrap() - 0.15).abs() < 1e-9);
        assert!((quantile(0.95, &b).unwrap() - 0.35).abs() < 1e-9);
        assert_eq!(quantile(0.5, &[(0.1, 0.0)]), None);
    }
}
