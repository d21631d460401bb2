//! Per-route policies, compiled from `[defaults]` merged with the route's own keys.
//!
//! A route holds concrete values, not a list of boxed filters: each policy is plain data that
//! the proxy phases consult in a fixed order.

pub mod limits;

use std::time::Duration;

/// Built-in defaults, used where neither the route nor `[defaults]` says otherwise.
pub mod builtin {
    use std::time::Duration;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const MAX_BODY: u64 = 10 * 1024 * 1024;
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    pub timeouts: Timeouts,
    /// Request body cap in bytes.
    pub max_body: u64,
    /// The route streams: no total timeout, `stream_idle` between reads.
    pub streaming: bool,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            timeouts: Timeouts::default(),
            max_body: builtin::MAX_BODY,
            streaming: false,
        }
    }
}
