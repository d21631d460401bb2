//! The shared store: objects in Redis, so an entry filled through one replica is a hit on the
//! others, with a small in-process tier (L1, a `MemoryStore`) in front so hot hits never leave
//! the process.
//!
//! Layout under the key prefix: `c:<hex key>` holds one object (its metadata, purge fields,
//! compressed forms and body in one value, expiring with the object); `ct:<tag>`, `cu:<url>` and `cp:<path>` are
//! sets of hex keys, and `cpaths` orders the paths for purges by prefix. A purge runs as one
//! script in Redis, then goes out on the `inval` channel, and every replica drops what it
//! selects from its L1; a replica whose subscription was lost drops its whole L1 when it
//! subscribes again, since it may have missed purges.
//!
//! While Redis cannot be reached the store is the L1 alone: gets miss through to it, puts fill
//! it only, and purges reach this replica's L1 and answer an error so the caller knows the
//! other replicas were not told.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::cache::memory::MemoryStore;
use crate::cache::store::{Body, CacheStore, PurgeSelector, StoreError, StoreKey, StoreStats, StoredMeta, StoredObject};
use super::Redis;
use async_trait::async_trait;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Format version of a stored value: a replica never decodes a layout it does not know.
/// `FGC2` added the compressed forms; a value of the first layout is read without them.
const MAGIC: &[u8; 4] = b"FGC2";
const MAGIC_V1: &[u8; 4] = b"FGC1";

/// ARGV: object key, the version written (the value's first 12 bytes: `MAGIC` and the expiry
/// it was put with), the value with its forms. A form made on one replica goes into the shared
/// value only while that value is the same version (a newer put, a purge: nothing written), so
/// a form is never paired with another body; the value keeps its expiry.
static SHARE_FORMS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GETRANGE', ARGV[1], 0, 11) == ARGV[2] then
  redis.call('SET', ARGV[1], ARGV[3], 'KEEPTTL')
  return 1
end
return 0
",
    )
});

/// ARGV: prefix, hex key, ttl (ms), value, url, path, tags... Stores the object and indexes it;
/// each index lives as long as its longest-lived member.
static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local p, hex, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('SET', p .. 'c:' .. hex, ARGV[4], 'PX', ttl)
local function index(set)
  redis.call('SADD', set, hex)
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
end
index(p .. 'cu:' .. ARGV[5])
index(p .. 'cp:' .. ARGV[6])
redis.call('ZADD', p .. 'cpaths', 0, ARGV[6])
for i = 7, #ARGV do index(p .. 'ct:' .. ARGV[i]) end
return 1
",
    )
});

/// ARGV: prefix, kind (tag, url, path, prefix), value. Deletes what the selector selects and
/// returns how many objects went.
static PURGE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local p, kind, v = ARGV[1], ARGV[2], ARGV[3]
local function drop(set)
  local n = 0
  for _, hex in ipairs(redis.call('SMEMBERS', set)) do
    n = n + redis.call('DEL', p .. 'c:' .. hex)
  end
  redis.call('DEL', set)
  return n
end
if kind == 'tag' then return drop(p .. 'ct:' .. v) end
if kind == 'url' then return drop(p .. 'cu:' .. v) end
if kind == 'path' then
  redis.call('ZREM', p .. 'cpaths', v)
  return drop(p .. 'cp:' .. v)
end
local n = 0
for _, path in ipairs(redis.call('ZRANGEBYLEX', p .. 'cpaths', '[' .. v, '[' .. v .. '\255')) do
  local after = string.sub(path, #v + 1, #v + 1)
  if after == '' or after == '/' then
    n = n + drop(p .. 'cp:' .. path)
    redis.call('ZREM', p .. 'cpaths', path)
  end
end
return n
",
    )
});

pub struct SharedStore {
    redis: Arc<Redis>,
    l1: Arc<MemoryStore>,
    max_object_size: usize,
    /// Tells this replica's own messages apart on the channel.
    origin: [u8; 8],
    channel: String,
}

impl SharedStore {
    pub fn new(redis: Arc<Redis>) -> Arc<Self> {
        let def = &redis.def;
        let l1 = Arc::new(MemoryStore::new(def.local_cache_size));
        let origin = uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]);
        let channel = String::from_utf8_lossy(&redis.key(&[b"inval"])).into_owned();
        let store = Arc::new(SharedStore { max_object_size: def.max_object_size, l1: l1.clone(), origin, channel: channel.clone(), redis: redis.clone() });
        let (on_sub, on_msg) = (l1.clone(), l1);
        redis.subscribe(
            channel,
            move || {
                let _ = on_sub.purge_now(&PurgeSelector::All);
            },
            move |msg| {
                if let Some((from, what)) = decode_message(msg)
                    && from != origin
                {
                    let _ = match what {
                        Message::Key(k) => on_msg.remove_now(&k).map(drop),
                        Message::Purge(sel) => on_msg.purge_now(&sel).map(drop),
                    };
                }
            },
        );
        store
    }

    fn object_key(&self, key: &StoreKey) -> Vec<u8> {
        self.redis.key(&[b"c", hex::encode(key).as_bytes()])
    }

    /// Tells the other replicas to drop their L1 copies; best effort (a lost message is what
    /// resubscription covers).
    async fn publish(&self, what: &Message) -> Result<(), StoreError> {
        let msg = encode_message(&self.origin, what);
        let channel = self.channel.clone();
        self.redis
            .run("cache_publish", |mut c| async move { redis::cmd("PUBLISH").arg(channel).arg(msg).query_async::<()>(&mut c).await })
            .await
            .map_err(unavailable)
    }
}

fn unavailable(e: crate::shared_state::SharedError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl CacheStore for SharedStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Arc<StoredObject>>, StoreError> {
        if let Some(hit) = self.l1.get_now(key)? {
            return Ok(Some(hit));
        }
        let k = self.object_key(key);
        let Ok(value) = self.redis.run("cache_get", |mut c| async move { redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await }).await else {
            // Redis unreachable: a miss, served by the backend
            return Ok(None);
        };
        let Some((expires, mut obj)) = value.as_deref().and_then(decode_object) else { return Ok(None) };
        obj.stamp = expires;
        // decoded once here, not on each hit; and a decoded entry can be a fast hit
        obj.meta = crate::cache::engine::with_decoded(obj.meta);
        let left = expires.saturating_sub(now_ms());
        if left == 0 {
            return Ok(None);
        }
        // served from what Redis gave, whether or not the L1 keeps it (an object larger than
        // `local_cache_size` is not kept, and was never a hit before)
        self.l1.put_now(*key, obj, Duration::from_millis(left)).map(Some)
    }

    async fn put(&self, key: StoreKey, mut obj: StoredObject, ttl: Duration) -> Result<(), StoreError> {
        let shared = (obj.body.len() <= self.max_object_size).then(|| {
            let ttl_ms = (ttl.as_millis() as u64).max(1);
            obj.stamp = now_ms() + ttl_ms;
            let value = encode_object(&obj, obj.stamp);
            let mut args: Vec<Vec<u8>> = vec![
                self.redis.def.key_prefix.as_bytes().to_vec(),
                hex::encode(key).into_bytes(),
                ttl_ms.to_string().into_bytes(),
                value,
                obj.url.as_bytes().to_vec(),
                obj.path.as_bytes().to_vec(),
            ];
            args.extend(obj.tags.iter().map(|t| t.as_bytes().to_vec()));
            args
        });
        self.l1.put_now(key, obj, ttl)?;
        if let Some(args) = shared {
            // Another replica may hold an older copy of this key in its L1 (a refill after
            // expiry): it is told to drop it.
            let stored = self
                .redis
                .run("cache_put", |mut c| async move {
                    let mut inv = PUT.prepare_invoke();
                    for a in args {
                        inv.arg(a);
                    }
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
            if stored.is_ok() {
                let _ = self.publish(&Message::Key(key)).await;
            }
        }
        Ok(())
    }

    async fn update_meta(&self, key: &StoreKey, meta: StoredMeta, ttl: Duration) -> Result<bool, StoreError> {
        let local = self.l1.update_meta_now(key, meta.clone(), ttl)?;
        let k = self.object_key(key);
        let Ok(Some(value)) = self.redis.run("cache_get", |mut c| async move { redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await }).await else {
            return Ok(local);
        };
        let Some((_, mut obj)) = decode_object(&value) else { return Ok(local) };
        obj.meta = meta;
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let value = encode_object(&obj, now_ms() + ttl_ms);
        let k = self.object_key(key);
        let stored = self
            .redis
            .run("cache_put", |mut c| async move { redis::cmd("SET").arg(k).arg(value).arg("PX").arg(ttl_ms).query_async::<()>(&mut c).await })
            .await;
        if stored.is_ok() {
            let _ = self.publish(&Message::Key(*key)).await;
        }
        Ok(true)
    }

    async fn remove(&self, key: &StoreKey) -> Result<bool, StoreError> {
        let local = self.l1.remove_now(key)?;
        let k = self.object_key(key);
        let removed = self.redis.run("cache_remove", |mut c| async move { redis::cmd("DEL").arg(k).query_async::<u64>(&mut c).await }).await.map_err(unavailable)?;
        self.publish(&Message::Key(*key)).await?;
        Ok(local || removed > 0)
    }

    async fn purge(&self, selector: &PurgeSelector) -> Result<usize, StoreError> {
        let local = self.l1.purge_now(selector)?;
        let prefix = self.redis.def.key_prefix.clone();
        let removed = match selector {
            PurgeSelector::All => {
                let pattern = format!("{prefix}c*");
                self.redis
                    .run("cache_purge", |mut c| async move {
                        let mut cursor = 0u64;
                        let mut n = 0usize;
                        loop {
                            let (next, keys): (u64, Vec<Vec<u8>>) =
                                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut c).await?;
                            n += keys.iter().filter(|k| k.get(prefix.len() + 1) == Some(&b':')).count();
                            if !keys.is_empty() {
                                redis::cmd("UNLINK").arg(keys).query_async::<()>(&mut c).await?;
                            }
                            if next == 0 {
                                return Ok(n);
                            }
                            cursor = next;
                        }
                    })
                    .await
            }
            sel => {
                let (kind, value) = match sel {
                    PurgeSelector::Tag(t) => ("tag", t.clone()),
                    PurgeSelector::Url(u) => ("url", u.clone()),
                    PurgeSelector::Path(p) => ("path", p.clone()),
                    PurgeSelector::PathPrefix(p) => ("prefix", p.trim_end_matches('/').to_string()),
                    PurgeSelector::All => ("all", String::new()),
                };
                self.redis
                    .run("cache_purge", |mut c| async move { PURGE.arg(prefix).arg(kind).arg(value).invoke_async::<usize>(&mut c).await })
                    .await
            }
        }
        .map_err(unavailable)?;
        self.publish(&Message::Purge(selector.clone())).await?;
        Ok(removed.max(local))
    }

    /// L1 only: its copies are dropped by the same invalidation messages `get` relies on.
    fn get_local(&self, key: &StoreKey) -> Option<Arc<StoredObject>> {
        self.l1.get_local(key)
    }

    /// A form was made: weighed in the L1, and written into the shared value (in the
    /// background, at most once per form and entry) so the replicas that fill their L1 from
    /// Redis later get it with the body instead of compressing again.
    fn reweigh(&self, key: &StoreKey, obj: &Arc<StoredObject>) {
        self.l1.reweigh_now(key, obj);
        if obj.stamp == 0 || obj.body.len() > self.max_object_size {
            return;
        }
        let value = encode_object(obj, obj.stamp);
        let version = value.get(..12).map(<[u8]>::to_vec).unwrap_or_default();
        let k = self.object_key(key);
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let _ = redis
                .run("cache_share_form", |mut c| async move { SHARE_FORMS.arg(k).arg(version).arg(value).invoke_async::<i64>(&mut c).await })
                .await;
        });
    }

    fn purge_local(&self, selector: &PurgeSelector) -> usize {
        self.l1.purge_now(selector).unwrap_or(0)
    }

    /// The L1 records every purge this replica made or was told of.
    fn purged_since(&self, seq: u64, obj: &StoredObject) -> bool {
        self.l1.purged_since_now(seq, obj)
    }

    fn stats(&self) -> StoreStats {
        self.l1.stats_now()
    }
}

/// `MAGIC`, expiry (unix ms, u64), then internal, header, url, path as u32-length-prefixed
/// fields, the tag count (u32) and each tag, the form count (u32) and each form (its slot, a
/// byte, and the form as a field), then the body to the end.
fn encode_object(obj: &StoredObject, expires_ms: u64) -> Vec<u8> {
    let m = &obj.meta;
    let fields: [&[u8]; 4] = [&m.internal, &m.header, obj.url.as_bytes(), obj.path.as_bytes()];
    let forms: Vec<(usize, &Body)> = obj.forms.made().collect();
    let size = 20
        + fields.iter().map(|f| f.len() + 4).sum::<usize>()
        + obj.tags.iter().map(|t| t.len() + 4).sum::<usize>()
        + forms.iter().map(|(_, f)| f.len() + 5).sum::<usize>()
        + obj.body.len();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&expires_ms.to_be_bytes());
    let field = |out: &mut Vec<u8>, f: &[u8]| {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    };
    for f in fields {
        field(&mut out, f);
    }
    out.extend_from_slice(&(obj.tags.len() as u32).to_be_bytes());
    for t in &obj.tags {
        field(&mut out, t.as_bytes());
    }
    out.extend_from_slice(&(forms.len() as u32).to_be_bytes());
    for (slot, form) in forms {
        out.push(slot as u8);
        out.extend_from_slice(&(form.len() as u32).to_be_bytes());
        form.pieces().for_each(|(piece, _)| out.extend_from_slice(&piece));
    }
    obj.body.pieces().for_each(|(piece, _)| out.extend_from_slice(&piece));
    out
}

/// `None` for anything not written by `encode_object` (another version, another program).
fn decode_object(mut v: &[u8]) -> Option<(u64, StoredObject)> {
    fn take<'a>(v: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (v.get(..n)?, v.get(n..)?);
        *v = rest;
        Some(head)
    }
    fn u32_of(v: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(v, 4)?.try_into().ok()?) as usize)
    }
    fn field(v: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32_of(v)?;
        take(v, n).map(<[u8]>::to_vec)
    }
    let version = take(&mut v, 4)?;
    if version != MAGIC && version != MAGIC_V1 {
        return None;
    }
    let expires = u64::from_be_bytes(take(&mut v, 8)?.try_into().ok()?);
    let internal = field(&mut v)?;
    let header = field(&mut v)?;
    let url = String::from_utf8(field(&mut v)?).ok()?;
    let path = String::from_utf8(field(&mut v)?).ok()?;
    let count = u32_of(&mut v)?;
    let mut tags = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        tags.push(String::from_utf8(field(&mut v)?).ok()?);
    }
    let forms = crate::cache::store::Forms::default();
    if version == MAGIC {
        for _ in 0..u32_of(&mut v)? {
            let slot = usize::from(*take(&mut v, 1)?.first()?);
            forms.set(slot, Body::from(field(&mut v)?.as_slice()));
        }
    }
    let obj = StoredObject {
        meta: StoredMeta { internal, header, decoded: None },
        body: Body::from(v),
        forms,
        stamp: 0,
        url,
        path,
        tags,
    };
    Some((expires, obj))
}

enum Message {
    Key(StoreKey),
    Purge(PurgeSelector),
}

/// origin (8 bytes), then `k` + the 16-byte key, or a selector: `a`, `t`+tag, `u`+url,
/// `p`+path, `r`+prefix.
fn encode_message(origin: &[u8; 8], what: &Message) -> Vec<u8> {
    let mut out = origin.to_vec();
    match what {
        Message::Key(k) => {
            out.push(b'k');
            out.extend_from_slice(k);
        }
        Message::Purge(sel) => {
            let (tag, text) = match sel {
                PurgeSelector::All => (b'a', ""),
                PurgeSelector::Tag(t) => (b't', t.as_str()),
                PurgeSelector::Url(u) => (b'u', u.as_str()),
                PurgeSelector::Path(p) => (b'p', p.as_str()),
                PurgeSelector::PathPrefix(p) => (b'r', p.as_str()),
            };
            out.push(tag);
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

fn decode_message(msg: &[u8]) -> Option<([u8; 8], Message)> {
    let origin: [u8; 8] = msg.get(..8)?.try_into().ok()?;
    let (&kind, rest) = msg.get(8..)?.split_first()?;
    let text = || String::from_utf8(rest.to_vec()).ok();
    let what = match kind {
        b'k' => Message::Key(rest.try_into().ok()?),
        b'a' => Message::Purge(PurgeSelector::All),
        b't' => Message::Purge(PurgeSelector::Tag(text()?)),
        b'u' => Message::Purge(PurgeSelector::Url(text()?)),
        b'p' => Message::Purge(PurgeSelector::Path(text()?)),
        b'r' => Message::Purge(PurgeSelector::PathPrefix(text()?)),
        _ => return None,
    };
    Some((origin, what))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn objects_and_messages_round_trip() {
        let obj = StoredObject {
            meta: StoredMeta { internal: vec![1, 2, 3], header: vec![9; 40], decoded: None },
            body: Body::from(&b"{\"id\": 1}"[..]),
            forms: Default::default(),
            stamp: 0,
            url: "/api/items?a=1".into(),
            path: "/api/items".into(),
            tags: vec!["items".into(), "user:7".into()],
        };
        let (exp, back) = decode_object(&encode_object(&obj, 1234)).unwrap();
        assert_eq!(exp, 1234);
        assert_eq!((back.url.as_str(), back.path.as_str(), back.tags.clone()), ("/api/items?a=1", "/api/items", obj.tags.clone()));
        assert_eq!((back.meta.internal, back.meta.header), (obj.meta.internal.clone(), obj.meta.header.clone()));
        assert_eq!(back.body.chunk_at(0, 100), &b"{\"id\": 1}"[..]);
        // cut short or from elsewhere: refused, never a panic
        let bytes = encode_object(&obj, 1);
        for n in 0..bytes.len() - obj.body.len() {
            assert!(decode_object(&bytes[..n]).is_none(), "{n}");
        }
        assert!(decode_object(b"GET / HTTP/1.1").is_none());
        // a form goes with its body; a value of the first layout reads without forms
        obj.forms.set(1, Body::from(&b"br-form"[..]));
        let (_, back) = decode_object(&encode_object(&obj, 5)).unwrap();
        let forms: Vec<(usize, Bytes)> = back.forms.made().map(|(i, f)| (i, f.chunk_at(0, 100))).collect();
        assert_eq!(forms, vec![(1, Bytes::from_static(b"br-form"))]);
        assert_eq!(back.body.chunk_at(0, 100), &b"{\"id\": 1}"[..]);
        let mut v1 = encode_object(&StoredObject { forms: Default::default(), ..obj.clone() }, 5);
        v1[..4].copy_from_slice(MAGIC_V1);
        let at = v1.len() - obj.body.len() - 4;
        v1.drain(at..at + 4); // the first layout had no form count
        let (_, back) = decode_object(&v1).unwrap();
        assert_eq!((back.forms.made().count(), back.body.chunk_at(0, 100)), (0, Bytes::from_static(b"{\"id\": 1}")));

        let origin = [7u8; 8];
        for sel in [PurgeSelector::All, PurgeSelector::Tag("t".into()), PurgeSelector::PathPrefix("/api".into())] {
            let (o, m) = decode_message(&encode_message(&origin, &Message::Purge(sel.clone()))).unwrap();
            assert!(o == origin && matches!(m, Message::Purge(s) if s == sel));
        }
        let (_, m) = decode_message(&encode_message(&origin, &Message::Key([3; 16]))).unwrap();
        assert!(matches!(m, Message::Key(k) if k == [3; 16]));
        assert!(decode_message(b"short").is_none());
    }
}
