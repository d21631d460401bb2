//! Per-route policies, compiled from `[defaults]` merged with the route's own keys.
//!
//! A route holds concrete values, not a list of boxed filters: each policy is plain data that
//! the proxy phases consult in a fixed order.

pub mod compress;
pub mod concurrency;
pub mod limits;
pub mod ratelimit;

use std::time::Duration;

/// Built-in defaults, used where neither the route nor `[defaults]` says otherwise.
pub mod builtin {
    use std::time::Duration;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const MAX_BODY: u64 = 10 * 1024 * 1024;
    pub const SLOW_THRESHOLD: Duration = Duration::from_millis(100);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole upstream exchange, from connect to the last body byte (not for streams).
    pub total: Duration,
    pub connect: Duration,
    /// Longest wait between two reads from the upstream.
    pub read: Duration,
    /// Longest wait between two reads on a streaming exchange (SSE, WebSocket).
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            total: builtin::TIMEOUT,
            connect: builtin::CONNECT_TIMEOUT,
            read: builtin::TIMEOUT,
            stream_idle: builtin::STREAM_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug)]
pub struct RoutePolicy {
    pub timeouts: Timeouts,
    /// Request body cap in bytes.
    pub max_body: u64,
    /// Response body cap in bytes.
    pub max_response_body: Option<u64>,
    /// The route streams: no total timeout, `stream_idle` between reads.
    pub streaming: bool,
    pub rate_limits: Option<ratelimit::RateLimits>,
    pub concurrency: Option<std::sync::Arc<concurrency::Concurrency>>,
    pub compress: Option<compress::CompressPolicy>,
    pub cache: Option<crate::cache::CachePolicy>,
    pub invalidate_tags: Vec<crate::cache::TagTemplate>,
    pub slow_threshold: Duration,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            timeouts: Timeouts::default(),
            max_body: builtin::MAX_BODY,
            max_response_body: None,
            streaming: false,
            rate_limits: None,
            concurrency: None,
            compress: None,
            cache: None,
            invalidate_tags: Vec::new(),
            slow_threshold: builtin::SLOW_THRESHOLD,
        }
    }
}

/// Request limits of the `[server]` table, applied before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_uri_length: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub client_body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub access_log: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_uri_length: 8 * 1024,
            max_header_count: 100,
            max_header_bytes: 32 * 1024,
            client_body_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            access_log: true,
        }
    }
}

impl std::fmt::Display for RoutePolicy {
    /// The policy in words, for `fastgate check`, the admin API and the status page.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.timeouts;
        if self.streaming {
            write!(f, "streaming (idle {:?})", t.stream_idle)?;
        } else {
            write!(f, "timeout {:?} (connect {:?}, read {:?})", t.total, t.connect, t.read)?;
        }
        write!(f, ", max_body {}", bytesize::ByteSize(self.max_body).display().iec())?;
        if let Some(cap) = self.max_response_body {
            write!(f, ", max_response_body {}", bytesize::ByteSize(cap).display().iec())?;
        }
        if let Some(rl) = &self.rate_limits {
            for l in &rl.limits {
                let d = &l.def;
                let per = match d.per.as_secs() {
                    1 if d.per.subsec_nanos() == 0 => "s".to_string(),
                    60 if d.per.subsec_nanos() == 0 => "m".to_string(),
                    3600 if d.per.subsec_nanos() == 0 => "h".to_string(),
                    _ => format!("{:?}", d.per),
                };
                write!(f, ", rate {}/{per} burst {} by {}", d.count, d.burst, d.name)?;
            }
            if !rl.bypass_nets.is_empty() || rl.bypass_key_count > 0 {
                write!(f, " (bypass: {} nets, {} keys)", rl.bypass_nets.len(), rl.bypass_key_count)?;
            }
        }
        if let Some(c) = &self.concurrency {
            write!(f, ", max {} in flight", c.def.max)?;
            if c.def.queue > 0 {
                write!(f, " (queue {}, {:?})", c.def.queue, c.def.queue_timeout)?;
            }
        }
        if let Some(c) = &self.cache {
            write!(f, ", cache ttl {:?}", c.ttl)?;
            if !c.stale_while_revalidate.is_zero() {
                write!(f, " swr {:?}", c.stale_while_revalidate)?;
            }
            if !c.stale_if_error.is_zero() {
                write!(f, " sie {:?}", c.stale_if_error)?;
            }
            if !c.key_headers.is_empty() {
                let names: Vec<&str> = c.key_headers.iter().map(|h| h.as_str()).collect();
                write!(f, " keyed by {}", names.join(","))?;
            }
            if c.public {
                f.write_str(" public")?;
            }
        }
        if !self.invalidate_tags.is_empty() {
            write!(f, ", invalidates {} tag(s) on write", self.invalidate_tags.len())?;
        }
        if let Some(c) = &self.compress {
            let algs: Vec<&str> = c.algorithms.iter().map(|a| compress::token(*a)).collect();
            write!(f, ", compress {} from {}", algs.join("/"), bytesize::ByteSize(c.min_size).display().iec())?;
        }
        Ok(())
    }
}
