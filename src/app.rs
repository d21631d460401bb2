//! The state shared by the proxy, the admin listener and background tasks: the runtime config
//! behind an atomic pointer, metrics, and process counters.

/// How often the maintenance task closes a bucket of the status page's history.
pub use crate::telemetry::history::BUCKET as HISTORY_BUCKET;
use std::collections::BTreeMap;
use crate::model::plan::Settings;
use crate::runtime::{ProcessParts, Runtime};
use crate::cache::Cache;
use crate::telemetry::otel::Tracing;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Outcome of the latest (re)load, for the admin API.
#[derive(Debug, Clone)]
pub struct LoadStatus {
    pub at: SystemTime,
    pub ok: bool,
    pub message: String,
}

pub struct App {
    pub config_path: PathBuf,
    /// Settings from start-up; they cannot change without a restart.
    pub settings: Settings,
    runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    /// OTLP tracing, when configured.
    pub tracing: Option<Tracing>,
    pub cache: Cache,
    /// The Redis connections, when `[state] backend = "redis"`.
    pub redis: Option<Arc<crate::shared_state::Redis>>,
    pub errors: crate::telemetry::errorlog::ErrorLog,
    /// Sliding window behind the status page (one minute, a snapshot every 10 s).
    pub status: crate::telemetry::status::StatusWindow,
    /// The status page's plots: 5-second buckets over the last 15 minutes.
    pub history: crate::telemetry::history::History,
    in_flight: AtomicI64,
    /// New connections whose first request is being read or served (`track_connection`).
    connecting: AtomicI64,
    started: std::time::Instant,
    warmed: std::sync::atomic::AtomicBool,
    last_load: Mutex<LoadStatus>,
    /// When the config in force was loaded.
    loaded_at: Mutex<SystemTime>,
}

impl App {
    pub fn new(
        config_path: PathBuf,
        settings: Settings,
        runtime: Runtime,
        metrics: Arc<Metrics>,
        tracing: Option<Tracing>,
        cache: Cache,
        redis: Option<Arc<crate::shared_state::Redis>>,
    ) -> Arc<Self> {
        metrics.config_loaded(&runtime.hash);
        Arc::new(App {
            config_path,
            settings,
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            tracing,
            cache,
            redis,
            errors: Default::default(),
            status: crate::telemetry::status::StatusWindow::new(7),
            history: Default::default(),
            in_flight: AtomicI64::new(0),
            connecting: AtomicI64::new(0),
            started: std::time::Instant::now(),
            warmed: std::sync::atomic::AtomicBool::new(false),
            last_load: Mutex::new(LoadStatus {
                at: SystemTime::now(),
                ok: true,
                message: "loaded at start-up".into(),
            }),
            loaded_at: Mutex::new(SystemTime::now()),
        })
    }

    /// What every route's cache policy shares, for materializing a plan.
    pub fn process_parts(&self) -> ProcessParts {
        ProcessParts {
            store: self.cache.store.clone(),
            tag_header: self.cache.settings.tag_header.clone(),
            redis: self.redis.clone(),
        }
    }

    /// The config in force; a request keeps the snapshot it started with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Every upstream's servers and their health now, for the history.
    pub fn health(&self) -> crate::telemetry::history::Health {
        self.runtime()
            .upstreams
            .values()
            .map(|up| (up.name.clone(), up.server_health().into_iter().map(|(addr, ok)| (addr.to_string(), ok)).collect()))
            .collect()
    }

    /// Every route's totals from the registry; a route that has served nothing yet at zero.
    fn route_totals(&self) -> BTreeMap<String, crate::telemetry::status::RouteTotals> {
        let mut totals = crate::telemetry::status::totals(&self.metrics.gather());
        for route in self.runtime().routes.iter() {
            totals.entry(route.name.clone()).or_default();
        }
        totals
    }

    /// Closes the history's bucket in progress (the maintenance task, every `history::BUCKET`).
    pub fn sample_history(&self) {
        self.history.sample(self.route_totals(), &self.health());
    }

    /// The history with the bucket in progress (`/history.json`).
    pub fn history_json(&self) -> serde_json::Value {
        self.history.json(&self.route_totals(), &self.health())
    }

    pub(crate) fn swap_runtime(&self, runtime: Runtime) {
        self.metrics.config_loaded(&runtime.hash);
        self.runtime.store(Arc::new(runtime));
        if let Ok(mut t) = self.loaded_at.lock() {
            *t = SystemTime::now();
        }
    }

    pub(crate) fn record_load(&self, ok: bool, message: String) {
        self.metrics.config_reload(ok);
        if let Ok(mut last) = self.last_load.lock() {
            *last = LoadStatus {
                at: SystemTime::now(),
                ok,
                message,
            };
        }
    }

    pub fn loaded_at(&self) -> Option<SystemTime> {
        self.loaded_at.lock().ok().map(|t| *t)
    }

    pub fn last_load(&self) -> Option<LoadStatus> {
        self.last_load.lock().ok().map(|l| l.clone())
    }

    /// Counts a request until the guard drops, so shutdown can wait for in-flight work.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Counts a new connection until the guard drops: a drain waits for it too, so a client
    /// that connected just before the signal still gets its answer.
    pub fn track_connection(self: &Arc<Self>) -> Connecting {
        self.connecting.fetch_add(1, Ordering::AcqRel);
        Connecting(self.clone())
    }

    /// Requests in flight plus new connections still reading or serving their first request.
    pub fn busy(&self) -> i64 {
        self.in_flight() + self.connecting.load(Ordering::Acquire)
    }

    /// Readiness waits for the first cache-warming round, but never longer than
    /// `[cache] warm_ready_timeout`.
    pub fn warm_done(&self) -> bool {
        self.cache.settings.warm.is_empty()
            || self.warmed.load(Ordering::Acquire)
            || self.started.elapsed() >= self.cache.settings.warm_ready_timeout
    }

    pub fn set_warmed(&self) {
        self.warmed.store(true, Ordering::Release);
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[must_use]
pub struct InFlight(Arc<App>);

#[must_use]
pub struct Connecting(Arc<App>);

impl Drop for Connecting {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
