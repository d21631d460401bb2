//! pingora-cache's `Storage` over our `CacheStore`: the glue that lets pingora's HTTP cache
//! logic (RFC 9111 freshness, cache lock, stale serving, revalidation) run on any store.
//!
//! Bodies are buffered per object while a miss is written (objects over `max_object_size`
//! are never admitted: pingora stops the write and streams them through).

use super::store::{CacheStore, StoredObject};
use super::EntryInfo;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
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
        let Some(obj) = self.store.get(&key.combined()).await.map_err(store_err)? else {
            return Ok(None);
        };
        let meta = CacheMeta::deserialize(&obj.meta.0, &obj.meta.1)?;
        let end = obj.body.len();
        Ok(Some((meta, Box::new(Hit { body: obj.body, start: 0, end, done: false }))))
    }

    async fn get_miss_handler(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<MissHandler> {
        let info = key.extensions.get::<EntryInfo>().cloned().unwrap_or_default();
        Ok(Box::new(Miss {
            storage: self,
            key: key.combined(),
            meta: meta.serialize()?,
            ttl: retention(meta),
            tags: tags_of(meta, &self.tag_header),
            info,
            body: BytesMut::new(),
        }))
    }

    async fn purge(&'static self, target: PurgeTarget<'_>, _type: PurgeType, _trace: &SpanHandle) -> Result<PurgeOutcome> {
        let removed = self.store.remove(&target.key().combined()).await.map_err(store_err)?;
        Ok(if removed { PurgeOutcome::Purged(None) } else { PurgeOutcome::NotFound })
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        self.store
            .update_meta(&key.combined(), meta.serialize()?, retention(meta))
            .await
            .map_err(store_err)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(self: Box<Self>, _storage: &'static (dyn Storage + Sync), _key: &CacheKey, _trace: &SpanHandle) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.unwrap_or(len).min(len);
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek start beyond end");
        }
        self.start = start;
        self.end = end;
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
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
    key: String,
    meta: (Vec<u8>, Vec<u8>),
    ttl: Duration,
    tags: Vec<String>,
    info: EntryInfo,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss { storage, key, meta, ttl, tags, info, body } = *self;
        let size = body.len();
        let obj = StoredObject {
            meta,
            body: body.freeze(),
            url: info.url,
            path: info.path,
            tags,
        };
        storage.store.put(key, obj, ttl).await.map_err(store_err)?;
        Ok(MissFinishType::Created(size))
    }
}
