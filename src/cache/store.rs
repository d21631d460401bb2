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

/// The block size of stored bodies. A power of two, so the allocator serves it from one size
/// class with no rounding.
pub const BLOCK: usize = 16 * 1024;

/// A stored body: blocks of exactly `BLOCK` bytes, the last one exactly as long as what is
/// left. Bodies of every length share one block size, so a block freed by an eviction is
/// reused by the next body whatever its length; one allocation per body, sized to the body,
/// left the allocator's pages of each size class part-used, and RSS at about 1.6x the bound.
#[derive(Debug, Clone, Default)]
pub struct Body {
    blocks: Vec<Bytes>,
    len: usize,
    /// What the blocks take from the allocator: what a size bound must weigh.
    allocated: usize,
}

impl Body {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// The whole body in one slice: borrowed when it is one block, else copied (what a reader
    /// of the whole text, such as the entity scan, needs).
    pub fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.blocks.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [one] => std::borrow::Cow::Borrowed(one),
            many => std::borrow::Cow::Owned(many.concat()),
        }
    }

    /// The part of the body from `pos` to the end of its block or `end`, whichever is first:
    /// a slice of one block, no copy. Empty at or past `end`.
    pub fn chunk_at(&self, pos: usize, end: usize) -> Bytes {
        let end = end.min(self.len);
        if pos >= end {
            return Bytes::new();
        }
        let (i, off) = (pos / BLOCK, pos % BLOCK);
        let block = &self.blocks[i];
        block.slice(off..block.len().min(end - i * BLOCK))
    }

    /// The body as stored, block by block, each with whether it is the last: what a body
    /// filter is handed (an empty body is one empty, last piece). No copy.
    pub fn pieces(&self) -> impl Iterator<Item = (Bytes, bool)> + '_ {
        let n = self.blocks.len().max(1);
        (0..n).map(move |i| (self.blocks.get(i).cloned().unwrap_or_default(), i + 1 == n))
    }
}

impl From<&[u8]> for Body {
    fn from(data: &[u8]) -> Body {
        let mut w = BodyWriter::default();
        w.push(data);
        w.finish()
    }
}

/// Builds a `Body` from the chunks of a response as they arrive, copying each once.
#[derive(Default)]
pub struct BodyWriter {
    blocks: Vec<Bytes>,
    current: Vec<u8>,
    len: usize,
}

impl BodyWriter {
    pub fn push(&mut self, mut data: &[u8]) {
        self.len += data.len();
        while !data.is_empty() {
            if self.current.capacity() == 0 {
                self.current = Vec::with_capacity(BLOCK);
            }
            let n = (BLOCK - self.current.len()).min(data.len());
            self.current.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.current.len() == BLOCK {
                self.blocks.push(Bytes::from(std::mem::take(&mut self.current)));
            }
        }
    }

    /// Bytes pushed so far.
    pub fn written(&self) -> usize {
        self.len
    }

    pub fn finish(mut self) -> Body {
        let mut allocated = self.blocks.len() * BLOCK;
        if self.current.len() >= BLOCK / 2 {
            // kept as a whole block (and weighed as one): more blocks to reuse, one copy fewer
            allocated += BLOCK;
            self.blocks.push(Bytes::from(self.current));
        } else if !self.current.is_empty() {
            // a short end copied into an allocation of its own length: shrinking in place would
            // keep the block's size class
            allocated += self.current.len();
            self.blocks.push(Bytes::copy_from_slice(&self.current));
        }
        Body { blocks: self.blocks, len: self.len, allocated }
    }
}

/// The compressed forms of a stored body, each made the first time a client asks for it
/// (`policy::compress`) and then served as it is to every client that asks again: gzip,
/// brotli, zstd, in that order. Counted in the object's weight once made (the store reweighs
/// it), dropped with the object.
#[derive(Debug, Clone, Default)]
pub struct Forms([std::sync::OnceLock<Option<Body>>; 3]);

impl Forms {
    /// The form in `slot` (0 gzip, 1 brotli, 2 zstd), made by `make` if it is not yet (`None`:
    /// it cannot be, and is not tried again for this object); and whether this call made it.
    /// Concurrent first requests wait for one maker.
    pub fn get_or_make(&self, slot: usize, make: impl FnOnce() -> Option<Body>) -> (Option<&Body>, bool) {
        let Some(cell) = self.0.get(slot) else { return (None, false) };
        let mut made = false;
        let form = cell.get_or_init(|| {
            made = true;
            make()
        });
        (form.as_ref(), made)
    }

    /// Sets the form in `slot`, read from a shared store with its body; an existing one is kept.
    pub fn set(&self, slot: usize, form: Body) {
        if let Some(cell) = self.0.get(slot) {
            let _ = cell.set(Some(form));
        }
    }

    /// The forms made so far, by slot.
    pub fn made(&self) -> impl Iterator<Item = (usize, &Body)> {
        self.0.iter().enumerate().filter_map(|(i, c)| Some((i, c.get()?.as_ref()?)))
    }

    /// Bytes the forms made so far take.
    pub fn allocated(&self) -> usize {
        self.0.iter().filter_map(|c| c.get()?.as_ref()).map(Body::allocated).sum()
    }
}

/// A stored response: its `StoredMeta` and body, plus what purges select on.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub meta: StoredMeta,
    pub body: Body,
    /// Compressed forms of `body`, made on demand; a shared store shares them with the body.
    pub forms: Forms,
    /// The version of this object in a shared store (its expiry there, in unix ms; 0 when it
    /// was never shared): a form made here is written back only to the same version.
    pub stamp: u64,
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
        self.body.allocated() + self.forms.allocated() + self.meta.internal.len() + self.meta.header.len() + decoded + self.url.len() * 2 + 128
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
    /// The object if this process holds it, without waiting on anything: what the fresh-hit
    /// fast path reads. A miss here says nothing; `get` decides.
    fn get_local(&self, _key: &StoreKey) -> Option<Arc<StoredObject>> {
        None
    }
    /// Removes what `selector` selects from what this process holds, without waiting on
    /// anything: for the end of a response body, where nothing can be awaited. `purge` still
    /// has to run for a shared store's other copies.
    fn purge_local(&self, _selector: &PurgeSelector) -> usize {
        0
    }
    /// Weighs `obj`, held under `key`, again: it grew in place (a compressed form was made).
    fn reweigh(&self, _key: &StoreKey, _obj: &Arc<StoredObject>) {}
    /// Whether a purge numbered after `seq` (`purge_seq` when the request began) selected
    /// `obj`: a response that was on its way from the backend while a write dropped what it
    /// shows holds the state before the write, and must not be stored after the purge.
    fn purged_since(&self, _seq: u64, _obj: &StoredObject) -> bool {
        false
    }
}

/// Purges so far in this process: a response's request notes it, and the store refuses to
/// keep the response if a purge since then selected it (`CacheStore::purged_since`).
static PURGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The number of the last purge made in this process.
pub fn purge_seq() -> u64 {
    PURGES.load(std::sync::atomic::Ordering::Acquire)
}

/// Numbers a purge that is about to run.
pub fn next_purge() -> u64 {
    PURGES.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1
}

impl PurgeSelector {
    /// Whether this purge would remove `obj`.
    pub fn selects(&self, obj: &StoredObject) -> bool {
        match self {
            PurgeSelector::All => true,
            PurgeSelector::Tag(t) => obj.tags.iter().any(|x| x == t),
            PurgeSelector::Url(u) => obj.url == *u,
            PurgeSelector::Path(p) => obj.path == *p,
            PurgeSelector::PathPrefix(p) => path_under(&obj.path, p),
        }
    }
}

/// Whether `path` is `prefix` or below it, on whole segments.
pub fn path_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(body: &Body, mut pos: usize, end: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = body.chunk_at(pos, end);
            if chunk.is_empty() {
                return out;
            }
            assert!(chunk.len() <= BLOCK);
            pos += chunk.len();
            out.extend_from_slice(&chunk);
        }
    }

    #[test]
    fn bodies_in_blocks_read_back_whole_and_by_range() {
        let data: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        // pushed in uneven pieces, as a response arrives
        let mut w = BodyWriter::default();
        for piece in data.chunks(5000) {
            w.push(piece);
        }
        let body = w.finish();
        assert_eq!(body.len(), data.len());
        assert_eq!(read_all(&body, 0, usize::MAX), data);
        for (start, end) in [(0, 1), (BLOCK - 1, BLOCK + 1), (BLOCK, 2 * BLOCK), (100, 3 * BLOCK + 50), (data.len(), data.len())] {
            assert_eq!(read_all(&body, start, end), data[start..end], "{start}..{end}");
        }
        // a short end is its own exact allocation; a long one stays a whole block
        assert_eq!(body.allocated(), 3 * BLOCK + 100);
        let long_end = Body::from(&data[..BLOCK + BLOCK / 2]);
        assert_eq!(long_end.allocated(), 2 * BLOCK);
        assert_eq!(read_all(&long_end, 0, usize::MAX), data[..BLOCK + BLOCK / 2]);
        let empty = Body::from(&[][..]);
        assert!(empty.is_empty() && empty.allocated() == 0 && read_all(&empty, 0, 10).is_empty());
    }
}
