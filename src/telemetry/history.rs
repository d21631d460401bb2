//! The status page's short history: 5-second buckets over the last 15 minutes, per route
//! (request rate, 4xx and 5xx rates, P50 and P99, cache hit ratio, rate-limit refusals) and per
//! upstream (healthy servers, and each server's changes of health).
//!
//! Like the status window it is read off the Prometheus registry (`status::totals`) at each
//! bucket's end, so the request path pays nothing for it. Memory is bounded: [`POINTS`] points
//! of 7 `f32`s per route (5 KiB), 180 pairs of counts and at most [`EVENTS`] health changes per
//! upstream; a route or an upstream gone from the config is dropped once its whole window is
//! empty.

use super::status::{RouteTotals, quantile};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One bucket's length.
pub const BUCKET: Duration = Duration::from_secs(5);
/// Buckets kept: 15 minutes.
pub const POINTS: usize = 180;
/// Health changes kept per upstream.
pub const EVENTS: usize = 64;

/// A route's figures over one bucket; NaN where there is nothing to say (no request, no lookup).
#[derive(Debug, Clone, Copy)]
struct Point {
    rps: f32,
    client_errors: f32,
    server_errors: f32,
    p50_ms: f32,
    p99_ms: f32,
    cache_hit_ratio: f32,
    rate_limited: f32,
}

impl Point {
    const EMPTY: Point = Point {
        rps: f32::NAN,
        client_errors: f32::NAN,
        server_errors: f32::NAN,
        p50_ms: f32::NAN,
        p99_ms: f32::NAN,
        cache_hit_ratio: f32::NAN,
        rate_limited: f32::NAN,
    };

    /// From the cumulative totals at a bucket's start and end, `secs` apart.
    fn between(old: &RouteTotals, cur: &RouteTotals, secs: f64) -> Point {
        let d = |a: f64, b: f64| (a - b).max(0.0);
        let requests = d(cur.requests, old.requests);
        let buckets: Vec<(f64, f64)> =
            cur.buckets.iter().enumerate().map(|(i, (le, c))| (*le, d(*c, old.buckets.get(i).map_or(0.0, |b| b.1)))).collect();
        let ms = |q: f64| quantile(q, &buckets).map_or(f32::NAN, |s| (s * 1000.0) as f32);
        let lookups = d(cur.cache_lookups, old.cache_lookups);
        let per_s = |n: f64| (n / secs) as f32;
        Point {
            rps: per_s(requests),
            client_errors: per_s(d(cur.client_errors, old.client_errors)),
            server_errors: per_s(d(cur.errors, old.errors)),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            cache_hit_ratio: if lookups > 0.0 { (d(cur.cache_hits, old.cache_hits) / lookups) as f32 } else { f32::NAN },
            rate_limited: per_s(d(cur.rate_limited, old.rate_limited)),
        }
    }

    /// No request in the bucket (NaN, nothing known, counts as none).
    fn is_empty(&self) -> bool {
        self.rps.is_nan() || self.rps <= 0.0
    }
}

/// An upstream's servers as the health checks see them now: (address, healthy).
pub type Health = BTreeMap<String, Vec<(String, bool)>>;

#[derive(Default)]
struct UpstreamSeries {
    /// (healthy servers, servers) per bucket, at the bucket's end.
    healthy: VecDeque<Option<(u16, u16)>>,
    /// (when, server, healthy now), oldest first.
    events: VecDeque<(SystemTime, String, bool)>,
    /// Each server's health when last looked at.
    last: BTreeMap<String, bool>,
}

struct Inner {
    /// The last bucket's end, and the totals then.
    boundary: Instant,
    boundary_wall: SystemTime,
    totals: BTreeMap<String, RouteTotals>,
    /// Buckets closed so far, at most `POINTS`: every series has this many points.
    len: usize,
    routes: BTreeMap<String, VecDeque<Point>>,
    upstreams: BTreeMap<String, UpstreamSeries>,
}

/// The history; `sample` closes a bucket, `json` reads it with the bucket in progress.
pub struct History {
    inner: Mutex<Inner>,
}

impl Default for History {
    fn default() -> Self {
        History {
            inner: Mutex::new(Inner {
                boundary: Instant::now(),
                boundary_wall: SystemTime::now(),
                totals: BTreeMap::new(),
                len: 0,
                routes: BTreeMap::new(),
                upstreams: BTreeMap::new(),
            }),
        }
    }
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    q.push_back(v);
    while q.len() > POINTS {
        q.pop_front();
    }
}

impl Inner {
    /// Notes each server whose health differs from what was last seen.
    fn observe(&mut self, health: &Health, at: SystemTime) {
        for (name, servers) in health {
            let up = self.upstreams.entry(name.clone()).or_default();
            for (addr, healthy) in servers {
                let before = up.last.insert(addr.clone(), *healthy);
                // a server seen for the first time healthy is no change; one seen down is
                if before.map_or(!*healthy, |b| b != *healthy) {
                    up.events.push_back((at, addr.clone(), *healthy));
                    while up.events.len() > EVENTS {
                        up.events.pop_front();
                    }
                }
            }
        }
    }
}

fn counts(servers: &[(String, bool)]) -> (u16, u16) {
    let healthy = servers.iter().filter(|s| s.1).count();
    (healthy.min(u16::MAX as usize) as u16, servers.len().min(u16::MAX as usize) as u16)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn num(v: f32) -> Value {
    if v.is_finite() { json!((v as f64 * 1000.0).round() / 1000.0) } else { Value::Null }
}

impl History {
    /// Closes the bucket in progress: one point per route and per upstream.
    pub fn sample(&self, totals: BTreeMap<String, RouteTotals>, health: &Health) {
        self.sample_at(Instant::now(), SystemTime::now(), totals, health);
    }

    fn sample_at(&self, now: Instant, wall: SystemTime, totals: BTreeMap<String, RouteTotals>, health: &Health) {
        let Ok(mut guard) = self.inner.lock() else { return };
        let h = &mut *guard;
        let secs = now.saturating_duration_since(h.boundary).as_secs_f64().max(0.001);
        let len = h.len;
        let empty = RouteTotals::default();
        for (route, series) in h.routes.iter_mut() {
            if !totals.contains_key(route) {
                push(series, Point::EMPTY);
            }
        }
        for (route, cur) in &totals {
            let point = Point::between(h.totals.get(route).unwrap_or(&empty), cur, secs);
            let series = h.routes.entry(route.clone()).or_insert_with(|| VecDeque::from(vec![Point::EMPTY; len]));
            push(series, point);
        }
        // a route the registry no longer has (a reload renamed it) ages out
        h.routes.retain(|route, series| totals.contains_key(route) || !series.iter().all(Point::is_empty));

        h.observe(health, wall);
        for (name, up) in h.upstreams.iter_mut() {
            if up.healthy.is_empty() {
                up.healthy.extend(std::iter::repeat_n(None, len));
            }
            push(&mut up.healthy, health.get(name).map(|servers| counts(servers)));
        }
        h.upstreams.retain(|name, up| health.contains_key(name) || up.healthy.iter().any(Option::is_some));

        h.len = (len + 1).min(POINTS);
        h.boundary = now;
        h.boundary_wall = wall;
        h.totals = totals;
    }

    /// The history as JSON, columnar, oldest first; the last point is the bucket in progress
    /// (its rates over the time it has run, at least a second).
    pub fn json(&self, totals: &BTreeMap<String, RouteTotals>, health: &Health) -> Value {
        let Ok(mut h) = self.inner.lock() else { return json!({}) };
        let now = SystemTime::now();
        h.observe(health, now);
        let secs = h.boundary.elapsed().as_secs_f64().max(1.0);
        let empty = RouteTotals::default();
        let routes: Vec<Value> = totals
            .iter()
            .map(|(route, cur)| {
                let live = Point::between(h.totals.get(route).unwrap_or(&empty), cur, secs);
                let closed = h.routes.get(route);
                let pad = h.len - closed.map_or(0, VecDeque::len);
                let points: Vec<Point> = std::iter::repeat_n(Point::EMPTY, pad).chain(closed.into_iter().flatten().copied()).chain([live]).collect();
                let col = |f: fn(&Point) -> f32| Value::Array(points.iter().map(|p| num(f(p))).collect());
                json!({
                    "name": route,
                    "rps": col(|p| p.rps),
                    "client_errors": col(|p| p.client_errors),
                    "server_errors": col(|p| p.server_errors),
                    "p50_ms": col(|p| p.p50_ms),
                    "p99_ms": col(|p| p.p99_ms),
                    "cache_hit_ratio": col(|p| p.cache_hit_ratio),
                    "rate_limited": col(|p| p.rate_limited),
                })
            })
            .collect();
        let len = h.len;
        let upstreams: Vec<Value> = health
            .iter()
            .map(|(name, servers)| {
                let up = h.upstreams.get(name);
                let closed = up.map_or(0, |u| u.healthy.len());
                let (healthy, total) = counts(servers);
                let series: Vec<Value> = std::iter::repeat_n(None, len - closed.min(len))
                    .chain(up.into_iter().flat_map(|u| u.healthy.iter().copied()))
                    .chain([Some((healthy, total))])
                    .map(|p| p.map_or(Value::Null, |(h, _)| json!(h)))
                    .collect();
                let events: Vec<Value> = up
                    .into_iter()
                    .flat_map(|u| u.events.iter())
                    .map(|(at, server, healthy)| json!({"at_ms": ms(*at), "server": server, "healthy": healthy}))
                    .collect();
                json!({"name": name, "servers": total, "healthy": series, "events": events})
            })
            .collect();
        json!({
            "bucket_s": BUCKET.as_secs(),
            "points": len + 1,
            "capacity": POINTS,
            // when the bucket in progress started: the last point's left edge
            "live_since_ms": ms(h.boundary_wall),
            "now_ms": ms(now),
            "routes": routes,
            "upstreams": upstreams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: f64, hits: f64) -> BTreeMap<String, RouteTotals> {
        let t = RouteTotals {
            requests,
            cache_hits: hits,
            cache_lookups: requests,
            buckets: vec![(0.01, requests), (f64::INFINITY, requests)],
            ..RouteTotals::default()
        };
        BTreeMap::from([("items".to_string(), t)])
    }

    fn health(up: bool) -> Health {
        BTreeMap::from([("app".to_string(), vec![("10.0.0.1:8000".to_string(), up), ("10.0.0.2:8000".to_string(), true)])])
    }

    #[test]
    fn buckets_hold_rates_roll_over_and_record_health_changes() {
        let hist = History::default();
        let t0 = hist.inner.lock().unwrap().boundary;
        let wall = SystemTime::now();
        // 50 requests, 25 hits in the first 5 s; nothing in the second bucket
        hist.sample_at(t0 + BUCKET, wall, totals(50.0, 25.0), &health(true));
        hist.sample_at(t0 + 2 * BUCKET, wall, totals(50.0, 25.0), &health(false));
        let v = hist.json(&totals(50.0, 25.0), &health(false));
        assert_eq!(v["points"], 3);
        let items = &v["routes"][0];
        assert_eq!(items["rps"], json!([10.0, 0.0, 0.0]));
        assert_eq!(items["cache_hit_ratio"], json!([0.5, null, null]));
        assert!(items["p99_ms"][0].as_f64().unwrap() <= 10.0);
        let app = &v["upstreams"][0];
        assert_eq!(app["healthy"], json!([2, 1, 1]));
        assert_eq!(app["events"].as_array().unwrap().len(), 1, "one change: {app}");
        assert_eq!(app["events"][0]["healthy"], false);

        // a full window later the series hold POINTS closed buckets, the first ones gone
        for i in 3..(POINTS as u32 + 10) {
            hist.sample_at(t0 + i * BUCKET, wall, totals(50.0 + f64::from(i), 25.0), &health(true));
        }
        let v = hist.json(&totals(50.0, 25.0), &health(true));
        assert_eq!(v["points"], POINTS + 1);
        assert_eq!(v["routes"][0]["rps"].as_array().unwrap().len(), POINTS + 1);
        assert_eq!(v["routes"][0]["rps"][0], 0.2, "one request per bucket");
        assert_eq!(v["upstreams"][0]["healthy"].as_array().unwrap().len(), POINTS + 1);
        assert_eq!(v["upstreams"][0]["events"].as_array().unwrap().len(), 2, "down, then up again");
    }

    #[test]
    fn a_route_gone_from_the_registry_ages_out() {
        let hist = History::default();
        let t0 = hist.inner.lock().unwrap().boundary;
        let wall = SystemTime::now();
        hist.sample_at(t0 + BUCKET, wall, totals(10.0, 0.0), &Health::new());
        for i in 2..(POINTS as u32 + 3) {
            hist.sample_at(t0 + i * BUCKET, wall, BTreeMap::new(), &Health::new());
            let gone = !hist.inner.lock().unwrap().routes.contains_key("items");
            assert_eq!(gone, i as usize > POINTS, "bucket {i}");
        }
    }
}
