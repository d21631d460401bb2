//! The narrow interface every cache backend implements: objects by key, purges by selector.
//!
//! The embedded memory store implements it; a shared store (Redis) plugs in behind the same
//! trait without touching the cache policy or the pingora glue. Objects are stored exactly as
//! the upstream sent them (identity encoding): compression happens per client on the way out.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::Duration;

/// pingora's serialized `CacheMeta`: `internal` (freshness, variance: a few dozen bytes) and
/// `header` (the response header, zstd-compressed by pingora).
#[derive(Debug, Clone)]
pub struct StoredMeta {
    pub internal: Vec<u8>,
    pub header: Vec<u8>,
    /// The same metadata, decoded, for stores in this process: decompressing `header` was the
    /// largest single cost of a cache hit. A shared store keeps only the bytes.
    pub decoded: Option<DecodedMeta>,
}

/// `CacheMeta` in parts it can be rebuilt from without deserializing.
#[derive(Debug, Clone)]
pub struct DecodedMeta {
    pub header: ResponseHeader,
    /// Enough to rebuild the whole meta with `CacheMeta::new`, for an entry never revalidated
    /// (`updated == created == provenance`); otherwise only the header is reused.
    pub times: Option<MetaTimes>,
}

#[derive(Debug, Clone, Copy)]
pub struct MetaTimes {
    pub fresh_until: std::time::SystemTime,
    pub created: std::time::SystemTime,
    pub stale_while_revalidate_sec: u32,
    pub stale_if_error_sec: u32,
    pub variance: Option<[u8; 16]>,
    pub epoch_override: Option<std::time::SystemTime>,
}

/// A stored response: its `StoredMeta` and body, plus what purges select on.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub meta: StoredMeta,
    pub body: Bytes,
    /// Normalized path + sorted query (`url_identity`): purge by URL removes every variant.
    pub url: String,
    /// Normalized path, for purge by prefix.
    pub path: String,
    /// From the route's `tags`, the keyed credentials, and the response's tag header.
    pub tags: Vec<String>,
}

impl StoredObject {
    /// Bytes this object costs, for size-bounded stores.
    pub fn weight(&self) -> usize {
        // a decoded header: its fields twice (pingora keeps a case-preserving copy of the names)
        // plus the maps' per-entry overhead
        let decoded = self.meta.decoded.as_ref().map_or(0, |d| {
            d.header.headers.iter().map(|(k, v)| 2 * k.as_str().len() + v.len() + 64).sum()
        });
        self.body.len() + self.meta.internal.len() + self.meta.header.len() + decoded + self.url.len() * 2 + 128
    }
}

/// A stored object's key: pingora's combined (primary + variance) hash. Kept binary: a hex
/// string cost an allocation and about 1k instructions per lookup (`bench/callgrind`); a
/// shared store encodes it at its own boundary.
pub type StoreKey = [u8; 16];

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeSelector {
    All,
    Tag(String),
    /// `url_identity` of a path and query: every variant, under every host.
    Url(String),
    /// Every object of this normalized path, whatever its query, variant or host.
    Path(String),
    /// Every object whose path is this or below it, on whole segments.
    PathPrefix(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache store unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
}

#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<StoredObject>>, StoreError>;
    /// Stores `obj` for at most `ttl` (its freshness plus every stale window).
    async fn put(&self, key: StoreKey, obj: StoredObject, ttl: Duration) -> Result<(), StoreError>;
    /// Replaces the metadata of a stored object (after a 304 revalidation).
    async fn update_meta(&self, key: &StoreKey, meta: StoredMeta, ttl: Duration) -> Result<bool, StoreError>;
    async fn remove(&self, key: &StoreKey) -> Result<bool, StoreError>;
    /// Removes what `selector` selects; returns how many objects went.
    async fn purge(&self, selector: &PurgeSelector) -> Result<usize, StoreError>;
    fn stats(&self) -> StoreStats;
}

/// Whether `path` is `prefix` or below it, on whole segments.
pub fn path_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}
