//! `[state] backend = "redis"`: what replicas share, through Redis (or a server speaking its
//! protocol: Valkey, Dragonfly). All the Redis code is here: the connections and their health,
//! and what rides on them: the distributed rate limiter (`limiter`) and the shared cache store
//! with its in-process tier (`cache`).
//!
//! The connections live on a runtime of their own (one thread), so they exist before pingora's
//! runtimes do and outlive none of them; requests on any pingora thread reach them through
//! the client's channels. Every call is bounded by `timeout`. While Redis is unreachable,
//! callers are told so at once (no call is attempted) and fall back as their route says; a
//! probe every second notices the server again.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cache;
pub mod limiter;

use crate::model::plan::RedisDef;
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often an unreachable server is probed, and failures are logged at most.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis unreachable")]
    Down,
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot start the redis runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// Whether the server answers, and what failed since it last did; read by the status page,
/// `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
    /// Calls that failed or timed out, by kind.
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    /// Calls not attempted because the server was down.
    pub skipped: AtomicU64,
    last: Mutex<HealthLog>,
}

#[derive(Debug, Default)]
struct HealthLog {
    last_error: Option<String>,
    down_since: Option<Instant>,
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// A snapshot for the status page and `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    pub backend: &'static str,
    pub url: String,
    pub up: bool,
    pub errors: u64,
    pub timeouts: u64,
    pub skipped: u64,
    pub last_error: Option<String>,
    pub down_for_secs: Option<u64>,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn ok(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            let mut log = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let down = log.down_since.take().map(|t| t.elapsed());
            log.unlogged = 0;
            tracing::info!(down_for = ?down, "redis reachable: shared state in use");
        }
    }

    fn failed(&self, op: &'static str, what: &str, timeout: bool) {
        let counter = if timeout { &self.timeouts } else { &self.errors };
        counter.fetch_add(1, Ordering::Relaxed);
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let mut log = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.last_error = Some(format!("{op}: {what}"));
        if was_up || log.down_since.is_none() {
            log.down_since = Some(Instant::now());
        }
        log.unlogged += 1;
        // one line per interval, however many requests fail
        if was_up || log.logged_at.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(op, error = what, failures = log.unlogged, "redis call failed; routes fall back per on_state_error");
            log.logged_at = Some(Instant::now());
            log.unlogged = 0;
        }
    }

    fn view(&self, url: String) -> HealthView {
        let log = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        HealthView {
            backend: "redis",
            url,
            up: self.is_up(),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            last_error: log.last_error.clone(),
            down_for_secs: log.down_since.map(|t| t.elapsed().as_secs()),
        }
    }
}

/// The connections to one Redis server.
pub struct Redis {
    pub def: RedisDef,
    client: redis::Client,
    conns: Vec<ArcSwapOption<ConnectionManager>>,
    next: AtomicUsize,
    pub health: Health,
    /// Where the connections and background loops run.
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.def.display_url()).finish()
    }
}

impl Redis {
    /// Starts connecting in the background: a server down at start-up is not fatal, the
    /// routes fall back until it answers.
    pub fn start(def: RedisDef) -> Result<Arc<Redis>, SharedError> {
        let client = match (&def.ca_file, &def.client_cert) {
            (None, None) => redis::Client::open(def.url.as_str())?,
            (ca, client) => {
                let read = |p: &std::path::PathBuf| std::fs::read(p).map_err(|source| SharedError::File { path: p.display().to_string(), source });
                let client_tls = match client {
                    Some((cert, key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
                    None => None,
                };
                let root_cert = ca.as_ref().map(read).transpose()?;
                redis::Client::build_with_tls(def.url.as_str(), redis::TlsCertificates { client_tls, root_cert })?
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fastgate-redis")
            .enable_all()
            .build()
            .map_err(SharedError::Runtime)?;
        let conns = (0..def.pool_size).map(|_| ArcSwapOption::empty()).collect();
        let redis = Arc::new(Redis { def, client, conns, next: AtomicUsize::new(0), health: Health::default(), rt });
        let keeper = redis.clone();
        redis.rt.spawn(async move { keeper.keep_connected().await });
        Ok(redis)
    }

    /// Opens missing connections and probes a server marked down, every `PROBE_EVERY`.
    /// The connection managers reconnect by themselves once made.
    async fn keep_connected(self: Arc<Self>) {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.def.timeout.max(Duration::from_millis(500)))
            .set_response_timeout(self.def.timeout.max(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(1000);
        loop {
            for slot in &self.conns {
                if slot.load().is_none() {
                    match self.client.get_connection_manager_with_config(config.clone()).await {
                        Ok(c) => slot.store(Some(Arc::new(c))),
                        Err(e) => {
                            self.health.failed("connect", &e.to_string(), false);
                            break;
                        }
                    }
                }
            }
            if !self.health.is_up() && self.probe_all().await {
                self.health.ok();
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Whether every connection answers PING: a manager reconnects only after a call on it
    /// failed, so each is called; marking the server up after one answer would send the next
    /// calls to connections still broken.
    async fn probe_all(&self) -> bool {
        let bound = self.def.timeout.max(Duration::from_millis(500));
        let mut all = true;
        for slot in &self.conns {
            let Some(conn) = slot.load_full() else { return false };
            let mut conn = (*conn).clone();
            let answered = tokio::time::timeout(bound, redis::cmd("PING").query_async::<()>(&mut conn)).await;
            all &= matches!(answered, Ok(Ok(())));
        }
        all
    }

    /// A connection of the pool, round robin; `None` while none is open.
    fn conn(&self) -> Option<ConnectionManager> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        self.conns.get(i)?.load().as_deref().cloned()
    }

    /// One call, bounded by the timeout; refused at once while the server is down.
    pub async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.health.is_up() {
            self.health.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(SharedError::Down);
        }
        let Some(conn) = self.conn() else {
            return Err(SharedError::Down);
        };
        match tokio::time::timeout(self.def.timeout, call(conn)).await {
            Ok(Ok(v)) => {
                self.health.ok();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.health.failed(op, &e.to_string(), false);
                Err(SharedError::Redis(e))
            }
            Err(_) => {
                self.health.failed(op, "timed out", true);
                Err(SharedError::Timeout(self.def.timeout))
            }
        }
    }

    /// Runs `on_message` for every message on `channel`, for the life of the process, and
    /// `on_subscribed` at each (re)subscription: messages sent while unsubscribed are lost,
    /// so whatever they would have dropped must be dropped then.
    pub fn subscribe(
        self: &Arc<Self>,
        channel: String,
        on_subscribed: impl Fn() + Send + Sync + 'static,
        on_message: impl Fn(&[u8]) + Send + Sync + 'static,
    ) {
        use futures_util::StreamExt as _;
        let me = self.clone();
        self.rt.spawn(async move {
            loop {
                match me.client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            on_subscribed();
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                on_message(msg.get_payload_bytes());
                            }
                            tracing::warn!(channel, "redis subscription lost; resubscribing");
                        }
                        Err(e) => tracing::debug!(error = %e, "redis subscribe failed"),
                    },
                    Err(e) => tracing::debug!(error = %e, "redis pub/sub connect failed"),
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }

    /// Runs a future on the connections' runtime: work that must not wait on a request.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(work);
    }

    pub fn health_view(&self) -> HealthView {
        self.health.view(self.def.display_url())
    }

    /// A key under the configured prefix.
    pub fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.def.key_prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
        k.extend_from_slice(self.def.key_prefix.as_bytes());
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(b':');
            }
            k.extend_from_slice(p);
        }
        k
    }
}
