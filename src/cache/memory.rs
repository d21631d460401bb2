//! The embedded store: moka (TinyLFU admission, LRU eviction), bounded in bytes, with per-object
//! expiry, and indexes by URL, by tag and by path (ordered, so a subtree is one range) so
//! purges and invalidate-on-write need no scan.

use super::store::{next_purge, path_under, CacheStore, PurgeSelector, StoreError, StoreKey, StoreStats, StoredMeta, StoredObject};
use async_trait::async_trait;
use dashmap::DashMap;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Entry {
    obj: Arc<StoredObject>,
    ttl: Duration,
    /// Written again only to be weighed again (a form was made): its expiry stays.
    reweighed: bool,
}

struct Expiry;

impl moka::Expiry<StoreKey, Entry> for Expiry {
    fn expire_after_create(&self, _k: &StoreKey, v: &Entry, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(&self, _k: &StoreKey, v: &Entry, _now: Instant, left: Option<Duration>) -> Option<Duration> {
        if v.reweighed { left } else { Some(v.ttl) }
    }
}

/// aHash (randomly seeded, built to resist chosen collisions: tags come from bodies and
/// requests): SipHash was most of the cost of indexing a stored list's entity tags.
type Keys = HashSet<StoreKey, ahash::RandomState>;
type Index = DashMap<String, Keys, ahash::RandomState>;
/// Paths in order: the objects under a prefix are one contiguous range.
type PathIndex = RwLock<BTreeMap<String, Keys>>;

pub struct MemoryStore {
    cache: Cache<StoreKey, Entry>,
    by_url: Arc<Index>,
    by_tag: Arc<Index>,
    by_path: Arc<PathIndex>,
    evictions: Arc<AtomicU64>,
    /// The last purges, numbered: what `purged_since` reads.
    recent: Mutex<VecDeque<(u64, PurgeSelector)>>,
}

/// How many purges `purged_since` remembers: at a hundred purges a second, 40 s of them. A
/// response slower than that is not stored if any purge ran meanwhile.
const RECENT_PURGES: usize = 4096;

fn unindex_path(index: &PathIndex, path: &str, key: &StoreKey) {
    // a poisoned lock only means another thread panicked mid-update; the map is still sound
    let mut map = index.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(set) = map.get_mut(path) {
        set.remove(key);
        if set.is_empty() {
            map.remove(path);
        }
    }
}

fn unindex(index: &Index, name: &str, key: &StoreKey) {
    if let Some(mut set) = index.get_mut(name) {
        set.remove(key);
        if set.is_empty() {
            drop(set);
            index.remove_if(name, |_, s| s.is_empty());
        }
    }
}

/// What the weighed contents may reach for a `max_size` of `max_bytes`: a tenth is left for
/// what weights cannot see (the allocator's part-used pages, per-entry bookkeeping), so that
/// resident memory, not only the weighed sum, stays near `max_size` (measured by the test
/// `max_size_bounds_resident_memory_under_overfill`).
fn weighed_bound(max_bytes: u64) -> u64 {
    max_bytes - max_bytes / 10
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        let by_url: Arc<Index> = Arc::default();
        let by_tag: Arc<Index> = Arc::default();
        let by_path: Arc<PathIndex> = Arc::default();
        let evictions = Arc::new(AtomicU64::new(0));
        let (u, t, p, e) = (by_url.clone(), by_tag.clone(), by_path.clone(), evictions.clone());
        let cache = Cache::builder()
            .max_capacity(weighed_bound(max_bytes))
            .weigher(|_k: &StoreKey, v: &Entry| u32::try_from(v.obj.weight()).unwrap_or(u32::MAX))
            .expire_after(Expiry)
            .eviction_listener(move |key: Arc<StoreKey>, v: Entry, cause| {
                if cause == RemovalCause::Size {
                    e.fetch_add(1, Ordering::Relaxed);
                }
                // A replaced entry is re-indexed by `put`; everything else leaves the indexes.
                if cause != RemovalCause::Replaced {
                    unindex(&u, &v.obj.url, &key);
                    unindex_path(&p, &v.obj.path, &key);
                    for tag in &v.obj.tags {
                        unindex(&t, tag, &key);
                    }
                }
            })
            .build();
        MemoryStore {
            cache,
            by_url,
            by_tag,
            by_path,
            evictions,
            recent: Mutex::default(),
        }
    }

    fn remove_keys(&self, keys: Vec<StoreKey>) -> usize {
        let mut n = 0;
        for k in keys {
            if self.cache.remove(&k).is_some() {
                n += 1;
            }
        }
        // run the eviction listener now, so the indexes are current when the purge returns
        self.cache.run_pending_tasks();
        n
    }
}

/// The store's operations, synchronous: nothing in them waits.
impl MemoryStore {
    pub fn get_now(&self, key: &StoreKey) -> Result<Option<Arc<StoredObject>>, StoreError> {
        Ok(self.cache.get(key).map(|e| e.obj))
    }

    /// Stores `obj` and hands it back: an object larger than the whole store is not kept,
    /// but the caller still has it to serve.
    pub fn put_now(&self, key: StoreKey, obj: StoredObject, ttl: Duration) -> Result<Arc<StoredObject>, StoreError> {
        self.by_url.entry(obj.url.clone()).or_default().insert(key);
        self.by_path
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(obj.path.clone())
            .or_default()
            .insert(key);
        for tag in &obj.tags {
            self.by_tag.entry(tag.clone()).or_default().insert(key);
        }
        let obj = Arc::new(obj);
        self.cache.insert(key, Entry { obj: obj.clone(), ttl, reweighed: false });
        // moka applies writes (and so evicts) only every 64 of them: up to 64 bodies over the
        // bound, which the allocator then keeps. Applying them now holds the bound at every put;
        // puts come from misses, which already cost a backend round trip.
        self.cache.run_pending_tasks();
        Ok(obj)
    }

    pub fn update_meta_now(&self, key: &StoreKey, meta: StoredMeta, ttl: Duration) -> Result<bool, StoreError> {
        let Some(old) = self.cache.get(key) else { return Ok(false) };
        let mut obj = (*old.obj).clone();
        obj.meta = meta;
        self.cache.insert(*key, Entry { obj: Arc::new(obj), ttl, reweighed: false });
        Ok(true)
    }

    /// Weighs `obj` again if it is still what `key` holds (a later put may have replaced it).
    pub fn reweigh_now(&self, key: &StoreKey, obj: &Arc<StoredObject>) {
        use moka::ops::compute::Op;
        self.cache.entry(*key).and_compute_with(|held| match held {
            Some(e) if Arc::ptr_eq(&e.value().obj, obj) => Op::Put(Entry { reweighed: true, ..e.into_value() }),
            _ => Op::Nop,
        });
        // a form is made on a hit: evict now, as a put does, to hold the bound
        self.cache.run_pending_tasks();
    }

    pub fn remove_now(&self, key: &StoreKey) -> Result<bool, StoreError> {
        Ok(self.remove_keys(vec![*key]) == 1)
    }

    pub fn purge_now(&self, selector: &PurgeSelector) -> Result<usize, StoreError> {
        {
            let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == RECENT_PURGES {
                recent.pop_front();
            }
            recent.push_back((next_purge(), selector.clone()));
        }
        let keys: Vec<StoreKey> = match selector {
            PurgeSelector::All => {
                self.cache.run_pending_tasks();
                let n = self.cache.entry_count() as usize;
                self.cache.invalidate_all();
                self.cache.run_pending_tasks();
                return Ok(n);
            }
            PurgeSelector::Tag(tag) => self.by_tag.get(tag).map(|s| s.iter().cloned().collect()).unwrap_or_default(),
            PurgeSelector::Url(url) => self.by_url.get(url).map(|s| s.iter().cloned().collect()).unwrap_or_default(),
            PurgeSelector::Path(path) => {
                let map = self.by_path.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                map.get(path).map(|s| s.iter().cloned().collect()).unwrap_or_default()
            }
            PurgeSelector::PathPrefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                let map = self.by_path.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                map.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                    .take_while(|(p, _)| p.starts_with(prefix))
                    .filter(|(p, _)| path_under(p, prefix))
                    .flat_map(|(_, keys)| keys.iter().cloned())
                    .collect()
            }
        };
        Ok(self.remove_keys(keys))
    }

    /// Whether a purge after `seq` selected `obj`; when the record no longer reaches back to
    /// `seq`, it may have, and the answer is yes.
    pub fn purged_since_now(&self, seq: u64, obj: &StoredObject) -> bool {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_PURGES && recent.front().is_some_and(|(s, _)| *s > seq + 1) {
            return true;
        }
        recent.iter().rev().take_while(|(s, _)| *s > seq).any(|(_, sel)| sel.selects(obj))
    }

    pub fn stats_now(&self) -> StoreStats {
        self.cache.run_pending_tasks();
        StoreStats {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl CacheStore for MemoryStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<StoredObject>>, StoreError> {
        self.get_now(key)
    }
    async fn put(&self, key: StoreKey, obj: StoredObject, ttl: Duration) -> Result<(), StoreError> {
        self.put_now(key, obj, ttl).map(drop)
    }
    async fn update_meta(&self, key: &StoreKey, meta: StoredMeta, ttl: Duration) -> Result<bool, StoreError> {
        self.update_meta_now(key, meta, ttl)
    }
    async fn remove(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.remove_now(key)
    }
    async fn purge(&self, selector: &PurgeSelector) -> Result<usize, StoreError> {
        self.purge_now(selector)
    }
    fn purge_local(&self, selector: &PurgeSelector) -> usize {
        self.purge_now(selector).unwrap_or(0)
    }

    fn purged_since(&self, seq: u64, obj: &StoredObject) -> bool {
        self.purged_since_now(seq, obj)
    }

    fn reweigh(&self, key: &StoreKey, obj: &Arc<StoredObject>) {
        self.reweigh_now(key, obj);
    }

    fn get_local(&self, key: &StoreKey) -> Option<Arc<StoredObject>> {
        self.cache.get(key).map(|e| e.obj)
    }

    fn stats(&self) -> StoreStats {
        self.stats_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::Body;

    fn k(n: u8) -> StoreKey {
        [n; 16]
    }

    fn obj(url: &str, tags: &[&str], size: usize) -> StoredObject {
        StoredObject {
            meta: StoredMeta { internal: vec![], header: vec![], decoded: None },
            body: vec![b'x'; size].as_slice().into(),
            forms: Default::default(),
            stamp: 0,
            url: url.into(),
            path: url.split('?').next().unwrap_or("/").to_string(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn purge_by_tag_url_prefix_and_all() {
        let s = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        s.put(k(1), obj("/api/a", &["t1"], 10), ttl).await.unwrap();
        s.put(k(2), obj("/api/a", &["t2"], 10), ttl).await.unwrap();
        s.put(k(3), obj("/api/b/c", &["t1", "t3"], 10), ttl).await.unwrap();
        s.put(k(4), obj("/other", &[], 10), ttl).await.unwrap();
        assert_eq!(s.purge(&PurgeSelector::Tag("t1".into())).await.unwrap(), 2);
        assert!(s.get(&k(1)).await.unwrap().is_none());
        assert_eq!(s.purge(&PurgeSelector::Tag("t1".into())).await.unwrap(), 0);
        assert_eq!(s.purge(&PurgeSelector::Url("/api/a".into())).await.unwrap(), 1);
        s.put(k(5), obj("/api/b/d", &[], 10), ttl).await.unwrap();
        s.put(k(6), obj("/api/bb", &[], 10), ttl).await.unwrap();
        assert_eq!(s.purge(&PurgeSelector::PathPrefix("/api/b".into())).await.unwrap(), 1);
        s.put(k(7), obj("/q?a=1", &[], 10), ttl).await.unwrap();
        s.put(k(8), obj("/q?a=2", &[], 10), ttl).await.unwrap();
        assert_eq!(s.purge(&PurgeSelector::Path("/q".into())).await.unwrap(), 2);
        assert_eq!(s.purge(&PurgeSelector::All).await.unwrap(), 2);
        assert_eq!(s.stats().entries, 0);
        assert!(s.by_url.is_empty() && s.by_tag.is_empty());
        assert!(s.by_path.read().unwrap().is_empty());
    }

    #[tokio::test]
    async fn size_bound_evicts() {
        let s = MemoryStore::new(20_000);
        for i in 0..50 {
            s.put(k(i), obj(&format!("/{i}"), &[], 1000), Duration::from_secs(60)).await.unwrap();
        }
        s.cache.run_pending_tasks();
        let st = s.stats();
        assert!(st.bytes <= 20_000, "{st:?}");
        assert!(st.evictions > 0, "{st:?}");
    }

    /// A form made on a stored object counts in the bound once the store weighs it again; the
    /// entry keeps its expiry; an object replaced meanwhile is not written back.
    #[tokio::test]
    async fn a_grown_object_is_weighed_again_and_keeps_its_expiry() {
        let s = MemoryStore::new(1 << 20);
        let held = s.put_now(k(1), obj("/a", &[], 4000), Duration::from_millis(300)).unwrap();
        let before = s.stats().bytes;
        let (form, made) = held.forms.get_or_make(0, || Some(Body::from(&[7u8; 3000][..])));
        assert!(form.is_some() && made);
        let (_, again) = held.forms.get_or_make(0, || unreachable!("made once"));
        assert!(!again);
        s.reweigh_now(&k(1), &held);
        let after = s.stats().bytes;
        assert!(after >= before + 3000, "{before} -> {after}");
        std::thread::sleep(Duration::from_millis(400));
        assert!(s.get_now(&k(1)).unwrap().is_none(), "the reweigh did not extend the entry's life");

        let old = s.put_now(k(2), obj("/b", &[], 100), Duration::from_secs(60)).unwrap();
        let new = s.put_now(k(2), obj("/b", &[], 200), Duration::from_secs(60)).unwrap();
        s.reweigh_now(&k(2), &old);
        assert!(Arc::ptr_eq(&s.get_now(&k(2)).unwrap().unwrap(), &new));
    }
}
