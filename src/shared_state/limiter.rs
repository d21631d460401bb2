//! The distributed rate limiter: the same GCRA as the local limiter, its state (one
//! theoretical arrival time per key) in Redis, each decision one server-side script
//! (`EVALSHA`, one round trip). Keys expire when their bucket would be full again, so idle
//! keys vanish by themselves.
//!
//! Two ways to spare round trips, each with its accuracy:
//! - **precheck** (on by default): a key Redis refused is refused locally until the wait
//!   Redis gave is over. A refusal changes nothing in Redis and the arrival time never moves
//!   back, so Redis would refuse too: exact, except that the local wait starts one round trip
//!   late (a request up to one round trip after the key frees may still be refused).
//! - **lease** (`lease = N` > 1): a replica takes up to N tokens per round trip and spends
//!   them locally for at most `LEASE_FOR`. Redis counts a token when leased, so the sum
//!   admitted never exceeds the limit's tokens; it may come early (a token leased at t is
//!   spent by t + `LEASE_FOR`), and up to N - 1 leased tokens per replica and key go unspent
//!   when their lease runs out.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{Redis, SharedError};
use dashmap::DashMap;
use std::hash::Hash;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// How long leased tokens may be spent.
pub const LEASE_FOR: Duration = Duration::from_secs(1);

/// KEYS[1]: the bucket. ARGV: emission interval (microseconds), burst, tokens wanted.
/// Returns {granted, tokens left after, microseconds: until a token is free when refused,
/// until the bucket is full again when granted}.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local free = math.floor((now + burst * interval - tat) / interval)
if free < 1 then
  return {0, 0, math.ceil(tat - now - (burst - 1) * interval)}
end
local granted = math.min(want, free)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {granted, free - granted, math.ceil(new_tat - now)}
",
    )
});

/// What Redis (or the local shortcuts) decided for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted, with the tokens left and the time until the bucket is full again.
    Allow { remaining: u32, full_in: Duration },
    /// Refused; a token is free again after this long.
    Refuse { wait: Duration },
}

#[derive(Debug)]
struct Lease {
    left: u32,
    until: Instant,
    /// Tokens Redis had left after the lease: reported with what is left of the lease.
    remaining: u32,
    full_in: Duration,
}

/// One limit's view of the shared limiter: its key space, its local shortcuts.
#[derive(Debug)]
pub struct SharedLimit<K: Eq + Hash> {
    redis: Arc<Redis>,
    /// `prefix` + `rl:` + route + `:` + limit name + `:`
    base: Vec<u8>,
    interval_us: f64,
    burst: u32,
    refused: DashMap<K, Instant>,
    leases: DashMap<K, Lease>,
}

impl<K: Eq + Hash + Clone> SharedLimit<K> {
    pub fn new(redis: Arc<Redis>, route: &str, limit: &str, per: Duration, count: u32, burst: u32) -> Self {
        let base = redis.key(&[b"rl", route.as_bytes(), limit.as_bytes(), b""]);
        SharedLimit {
            redis,
            base,
            interval_us: per.as_secs_f64() * 1e6 / f64::from(count),
            burst,
            refused: DashMap::new(),
            leases: DashMap::new(),
        }
    }

    /// Decides for `key` (written as `text` in Redis). An error means Redis could not be
    /// asked: the caller falls back as its route says.
    pub async fn check(&self, key: &K, text: &[u8]) -> Result<Verdict, SharedError> {
        let now = Instant::now();
        if self.redis.def.precheck
            && let Some(until) = self.refused.get(key).map(|u| *u)
        {
            if until > now {
                return Ok(Verdict::Refuse { wait: until - now });
            }
            self.refused.remove(key);
        }
        let lease = self.redis.def.lease;
        if lease > 1
            && let Some(mut l) = self.leases.get_mut(key)
            && l.left > 0
            && l.until > now
        {
            l.left -= 1;
            return Ok(Verdict::Allow { remaining: l.remaining + l.left, full_in: l.full_in });
        }
        let mut bucket = Vec::with_capacity(self.base.len() + text.len());
        bucket.extend_from_slice(&self.base);
        bucket.extend_from_slice(text);
        let (interval, burst) = (self.interval_us, self.burst);
        let (granted, remaining, micros): (u32, u32, u64) = self
            .redis
            .run("rate_limit", |mut c| async move {
                GCRA.key(bucket).arg(interval).arg(burst).arg(lease).invoke_async(&mut c).await
            })
            .await?;
        let micros = Duration::from_micros(micros);
        if granted == 0 {
            if self.redis.def.precheck {
                self.refused.insert(key.clone(), Instant::now() + micros);
            }
            return Ok(Verdict::Refuse { wait: micros });
        }
        if lease > 1 {
            let left = granted - 1;
            if left > 0 {
                self.leases.insert(key.clone(), Lease { left, until: now + LEASE_FOR, remaining, full_in: micros });
            } else {
                self.leases.remove(key);
            }
            return Ok(Verdict::Allow { remaining: remaining + left, full_in: micros });
        }
        Ok(Verdict::Allow { remaining, full_in: micros })
    }

    /// Drops shortcuts whose time is over (run on the maintenance timer).
    pub fn evict_idle(&self) {
        let now = Instant::now();
        self.refused.retain(|_, until| *until > now);
        self.leases.retain(|_, l| l.until > now && l.left > 0);
    }
}
