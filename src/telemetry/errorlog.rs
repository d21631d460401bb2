//! Aggregated error logging: the first occurrence of an error (same route, code and upstream)
//! is logged in full; repeats are counted and summarised once per interval, so an outage
//! writes a few lines a minute instead of one per request.

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    route: String,
    code: &'static str,
    upstream: String,
}

#[derive(Default)]
pub struct ErrorLog {
    repeats: DashMap<Key, AtomicU64>,
}

impl ErrorLog {
    /// Logs the error if it is the first of its kind since the last flush; counts it otherwise.
    pub fn record(&self, route: &str, code: &'static str, upstream: Option<&str>, request_id: &str, detail: &str) {
        let key = Key {
            route: route.to_string(),
            code,
            upstream: upstream.unwrap_or("-").to_string(),
        };
        if let Some(n) = self.repeats.get(&key) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tracing::warn!(route, code, upstream = upstream.unwrap_or("-"), request_id, detail, "gateway error");
        self.repeats.entry(key).or_insert_with(|| AtomicU64::new(0));
    }

    /// One summary line per error kind that repeated; forgets them all, so the next occurrence
    /// is logged in full again.
    pub fn flush(&self, interval_secs: u64) {
        let keys: Vec<Key> = self.repeats.iter().map(|e| e.key().clone()).collect();
        for key in keys {
            if let Some((k, n)) = self.repeats.remove(&key) {
                let n = n.into_inner();
                if n > 0 {
                    tracing::warn!(
                        route = %k.route,
                        code = k.code,
                        upstream = %k.upstream,
                        repeats = n,
                        interval_s = interval_secs,
                        "gateway error repeated"
                    );
                }
            }
        }
    }
}
