//! pingora-cache's `Storage` over our `CacheStore`: the glue that lets pingora's HTTP cache
//! logic (RFC 9111 freshness, cache lock, stale serving, revalidation) run on any store.
//!
//! Bodies are buffered per object while a miss is written (objects over `max_object_size`
//! are never admitted: pingora stops the write and streams them through).

use super::store::{BodyWriter, CacheStore, DecodedMeta, MetaTimes, StoreKey, StoredMeta, StoredObject};
use super::EntryInfo;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::cache::meta::CacheMeta;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct PingoraStorage {
    pub store: Arc<dyn CacheStore>,
    pub tag_header: http::HeaderName,
}

fn store_err(e: impl std::fmt::Display) -> Box<Error> {
    Error::explain(ErrorType::InternalError, format!("cache store: {e}"))
}

/// After freshness ends, an entry is kept at least this long so it can be revalidated (a 304
/// instead of a body) rather than refetched.
const REVALIDATION_GRACE: u32 = 30;

/// How long a store keeps an object: while fresh, then while a stale window allows serving it
/// or revalidation can reuse it. Size pressure may evict it sooner.
pub fn retention(meta: &CacheMeta) -> Duration {
    let fresh = meta.fresh_until().duration_since(SystemTime::now()).unwrap_or_default();
    let stale = meta.stale_while_revalidate_sec().max(meta.stale_if_error_sec()).max(REVALIDATION_GRACE);
    fresh + Duration::from_secs(u64::from(stale))
}

/// The store key of a pingora cache key: its combined (primary + variance) hash.
fn store_key(key: &impl CacheHashKey) -> StoreKey {
    key.combined_bin()
}

fn stored_meta(meta: &CacheMeta) -> Result<StoredMeta> {
    let (internal, header) = meta.serialize()?;
    Ok(StoredMeta { internal, header, decoded: Some(decoded_of(meta)) })
}

/// `meta` with its decoded form, for a store that was given only the serialized parts (an
/// object read from Redis): its hits then decompress nothing, and the cache's fast path and
/// the front door can answer them. Left as it is when the parts do not decode.
pub fn with_decoded(meta: StoredMeta) -> StoredMeta {
    if meta.decoded.is_some() {
        return meta;
    }
    match CacheMeta::deserialize(&meta.internal, &meta.header) {
        Ok(m) => StoredMeta { decoded: Some(decoded_of(&m)), ..meta },
        Err(_) => meta,
    }
}

fn decoded_of(meta: &CacheMeta) -> DecodedMeta {
    // `CacheMeta::new` sets updated and provenance to created: only such a meta rebuilds exactly.
    let rebuildable = meta.updated() == meta.created() && meta.provenance() == meta.created();
    let times = rebuildable.then(|| MetaTimes {
        fresh_until: meta.fresh_until(),
        created: meta.created(),
        stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
        stale_if_error_sec: meta.stale_if_error_sec(),
        variance: meta.variance(),
        epoch_override: meta.epoch_override(),
    });
    DecodedMeta { header: meta.response_header_copy(), times }
}

/// The serialized header of an empty 200 response, made once: `CacheMeta` can only be built
/// from serialized parts, so a hit with a decoded header deserializes the small internal part
/// with this cheap stand-in and then puts the real header in place.
fn placeholder_header() -> &'static [u8] {
    static PLACEHOLDER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PLACEHOLDER.get_or_init(|| {
        let header = pingora::http::ResponseHeader::build(200, Some(0)).ok();
        header
            .and_then(|h| CacheMeta::new(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH, 0, 0, h).serialize().ok())
            .map(|(_, h)| h)
            .unwrap_or_default()
    })
}

fn decode_meta(meta: &StoredMeta) -> Result<CacheMeta> {
    match &meta.decoded {
        Some(DecodedMeta { header, times: Some(t) }) => {
            let mut m = CacheMeta::new(t.fresh_until, t.created, t.stale_while_revalidate_sec, t.stale_if_error_sec, header.clone());
            if let Some(v) = t.variance {
                m.set_variance_key(v);
            }
            if let Some(e) = t.epoch_override {
                m.set_epoch_override(e);
            }
            Ok(m)
        }
        Some(DecodedMeta { header, times: None }) => {
            let mut m = CacheMeta::deserialize(&meta.internal, placeholder_header())?;
            *m.response_header_mut() = header.clone();
            Ok(m)
        }
        None => CacheMeta::deserialize(&meta.internal, &meta.header),
    }
}

fn tags_of(meta: &CacheMeta, header: &http::HeaderName) -> Vec<String> {
    meta.headers()
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ' ']))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[async_trait]
impl Storage for PingoraStorage {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(obj) = self.store.get(&store_key(key)).await.map_err(store_err)? else {
            return Ok(None);
        };
        let meta = decode_meta(&obj.meta)?;
        let end = obj.body.len();
        Ok(Some((meta, Box::new(Hit { obj, pos: 0, end }))))
    }

    async fn get_miss_handler(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<MissHandler> {
        let info = key.extensions.get::<EntryInfo>().cloned().unwrap_or_default();
        Ok(Box::new(Miss {
            storage: self,
            key: store_key(key),
            meta: stored_meta(meta)?,
            ttl: retention(meta),
            tags: {
                let mut tags = tags_of(meta, &self.tag_header);
                tags.extend(info.tags.iter().cloned());
                if let Some(e) = &info.entities {
                    e.entry_tags(&info.path, &info.url, &mut tags);
                }
                tags
            },
            info,
            body: BodyWriter::default(),
        }))
    }

    async fn purge(&'static self, target: PurgeTarget<'_>, _type: PurgeType, _trace: &SpanHandle) -> Result<PurgeOutcome> {
        let removed = self.store.remove(&store_key(target.key())).await.map_err(store_err)?;
        Ok(if removed { PurgeOutcome::Purged(None) } else { PurgeOutcome::NotFound })
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        self.store
            .update_meta(&store_key(key), stored_meta(meta)?, retention(meta))
            .await
            .map_err(store_err)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct Hit {
    /// The whole object, shared with the store: cloning the body's block list cost an
    /// allocation per hit.
    obj: Arc<StoredObject>,
    /// The next byte to send, and the end of the (possibly sought) range.
    pos: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let chunk = self.obj.body.chunk_at(self.pos, self.end);
        if chunk.is_empty() {
            return Ok(None);
        }
        self.pos += chunk.len();
        Ok(Some(chunk))
    }

    async fn finish(self: Box<Self>, _storage: &'static (dyn Storage + Sync), _key: &CacheKey, _trace: &SpanHandle) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.obj.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek start beyond end");
        }
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.obj.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    storage: &'static PingoraStorage,
    key: StoreKey,
    meta: StoredMeta,
    ttl: Duration,
    tags: Vec<String>,
    info: EntryInfo,
    body: BodyWriter,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.push(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss { storage, key, meta, ttl, mut tags, info, body } = *self;
        // Copied as it arrived, not kept: a chunk may be a slice of a larger read buffer the
        // store's size bound would never see.
        let size = body.written();
        let body = body.finish();
        if let (Some(e), Some(decoded)) = (&info.entities, &meta.decoded) {
            e.body_tags(&decoded.header, &body, &mut tags);
        }
        let obj = StoredObject {
            meta,
            body,
            forms: Default::default(),
            stamp: 0,
            url: info.url,
            path: info.path,
            tags,
        };
        // a write dropped what this answer shows while it was on its way: it is the state
        // before the write, served to this client but not kept
        if storage.store.purged_since(info.seq, &obj) {
            tracing::debug!(path = %obj.path, "not stored: a write since the request dropped what it shows");
            return Ok(MissFinishType::Created(size));
        }
        storage.store.put(key, obj, ttl).await.map_err(store_err)?;
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    #[test]
    fn decoded_and_serialized_headers_give_the_same_meta() {
        let mut header = ResponseHeader::build(203, None).unwrap();
        header.insert_header("content-type", "application/json").unwrap();
        header.insert_header("etag", "\"v1\"").unwrap();
        header.insert_header("x-custom", "yes").unwrap();
        let now = SystemTime::now();
        let mut meta = CacheMeta::new(now + Duration::from_secs(60), now - Duration::from_secs(5), 7, 9, header);
        meta.set_variance_key(*b"0123456789abcdef");
        let stored = stored_meta(&meta).unwrap();
        assert!(stored.decoded.as_ref().unwrap().times.is_some());
        let shared = StoredMeta { decoded: None, ..stored.clone() };
        let mut header_only = stored.clone();
        header_only.decoded.as_mut().unwrap().times = None;
        for m in [decode_meta(&stored).unwrap(), decode_meta(&header_only).unwrap(), decode_meta(&shared).unwrap()] {
            assert_eq!(m.response_header().status, 203);
            assert_eq!(m.headers().get("etag").unwrap(), "\"v1\"");
            assert_eq!(m.headers().get("x-custom").unwrap(), "yes");
            assert_eq!(m.fresh_until(), meta.fresh_until());
            assert_eq!(m.created(), meta.created());
            assert_eq!(m.updated(), meta.updated());
            assert_eq!(m.stale_while_revalidate_sec(), 7);
            assert_eq!(m.stale_if_error_sec(), 9);
            assert_eq!(m.variance(), meta.variance());
            assert_eq!(m.provenance(), meta.provenance());
            assert_eq!(m.epoch(), meta.epoch());
        }
    }

    #[test]
    fn a_revalidated_meta_is_not_rebuilt_from_parts() {
        let header = ResponseHeader::build(200, None).unwrap();
        let created = SystemTime::now() - Duration::from_secs(100);
        let mut meta = CacheMeta::new(created + Duration::from_secs(10), created, 0, 0, header);
        meta.update_freshness(SystemTime::now() + Duration::from_secs(60), 0, 0);
        let stored = stored_meta(&meta).unwrap();
        assert!(stored.decoded.as_ref().unwrap().times.is_none());
        let m = decode_meta(&stored).unwrap();
        assert_eq!(m.updated(), meta.updated());
        assert_eq!(m.created(), meta.created());
        assert_eq!(m.fresh_until(), meta.fresh_until());
    }
}
