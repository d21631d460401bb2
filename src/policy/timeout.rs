//! Upstream timeouts: connect, read (between two reads), and a total deadline for the whole
//! exchange, enforced on the upstream socket options and checked between body chunks.
//!
//! Streams have no total deadline: a WebSocket upgrade, a `streaming = true` route, or a
//! response that turns out to be `text/event-stream` (or `101`) only idles out after
//! `stream_idle` between reads. A deadline that passes after the header went out cuts the
//! connection: that is the only honest signal left.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::registry::{above_zero, keys, Env, MaterializeError, RouteTraits, Scope, Spec};
use super::{Cut, Directives, Exchange, Policy};
use crate::model::diag::Diagnostics;
use crate::model::units::Dur;
use toml::Spanned;
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use pingora::cache::CachePhase;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::PeerOptions;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole upstream exchange, from connect to the last body byte (not for streams).
    pub total: Duration,
    pub connect: Duration,
    /// Longest wait between two reads from the upstream; at most `total`.
    pub read: Duration,
    /// Longest wait between two reads on a streaming exchange (SSE, WebSocket).
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            total: TIMEOUT,
            connect: CONNECT_TIMEOUT,
            read: TIMEOUT,
            stream_idle: STREAM_IDLE_TIMEOUT,
        }
    }
}

/// Defaults when neither the route nor `[defaults]` says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const SLOW_THRESHOLD: Duration = Duration::from_millis(100);

keys! {
    /// Total time for the whole upstream exchange.
    #[schema(default = "30s")]
    timeout: Spanned<Dur>,
    /// Time to connect to a server (default 2s).
    #[schema(default = "2s")]
    connect_timeout: Spanned<Dur>,
    /// Longest wait between two reads from the upstream.
    read_timeout: Spanned<Dur>,
    /// A streaming route has no total timeout; reads may idle up to `stream_idle_timeout`.
    #[schema(default = false)]
    streaming: Spanned<bool>,
    /// A streaming route's longest wait between two reads (default 5m).
    #[schema(default = "5m")]
    stream_idle_timeout: Spanned<Dur>,
    /// A request slower than this logs a warning and counts in `fastgate_slow_requests_total`.
    #[schema(default = "100ms")]
    slow_threshold: Spanned<Dur>,
}

/// A route's timeouts as configured, and how the route's requests are timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutDef {
    pub timeouts: Timeouts,
    /// The route streams: no total timeout, `stream_idle` between reads.
    pub streaming: bool,
    pub slow_threshold: Duration,
}

impl Spec for Timeouts {
    type Keys = Keys;
    type Def = TimeoutDef;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<TimeoutDef> {
        let total = above_zero(cx, &keys.timeout, "timeout").unwrap_or(TIMEOUT);
        let connect = above_zero(cx, &keys.connect_timeout, "connect_timeout").unwrap_or(CONNECT_TIMEOUT);
        // Without its own value, the read timeout is the total timeout: one slow read cannot
        // outlast it.
        let mut read = above_zero(cx, &keys.read_timeout, "read_timeout").unwrap_or(total);
        if let Some(r) = keys.read_timeout.as_ref().filter(|_| read > total) {
            cx.warn(
                r.span(),
                format!("`read_timeout` {read:?} is longer than the route's `timeout` {total:?}; {total:?} is used"),
                "no single read can outlast the whole exchange: lower `read_timeout` or raise `timeout`",
            );
            read = total;
        }
        let stream_idle = above_zero(cx, &keys.stream_idle_timeout, "stream_idle_timeout").unwrap_or(STREAM_IDLE_TIMEOUT);
        let slow_threshold = above_zero(cx, &keys.slow_threshold, "slow_threshold").unwrap_or(SLOW_THRESHOLD);
        Some(TimeoutDef {
            timeouts: Timeouts { total, connect, read, stream_idle },
            streaming: keys.streaming.as_ref().is_some_and(|s| *s.get_ref()),
            slow_threshold,
        })
    }

    fn materialize(def: Option<&TimeoutDef>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.map(|d| d.timeouts.clone()))
    }

    fn summary(def: &TimeoutDef) -> String {
        let t = &def.timeouts;
        if def.streaming {
            format!("streaming (idle {:?})", t.stream_idle)
        } else {
            format!("timeout {:?} (connect {:?}, read {:?})", t.total, t.connect, t.read)
        }
    }

    fn facts(def: &TimeoutDef, out: &mut serde_json::Map<String, serde_json::Value>) {
        let t = &def.timeouts;
        out.insert("timeout_ms".into(), (t.total.as_millis() as u64).into());
        out.insert("connect_timeout_ms".into(), (t.connect.as_millis() as u64).into());
        out.insert("read_timeout_ms".into(), (t.read.as_millis() as u64).into());
        out.insert("streaming".into(), def.streaming.into());
    }

    fn route_traits(def: &TimeoutDef, t: &mut RouteTraits) {
        t.streaming = def.streaming;
        t.slow_threshold = def.slow_threshold;
    }
}

#[derive(Debug, Default)]
pub struct TimeoutScratch {
    streaming: bool,
    deadline: Option<Instant>,
}

impl Policy for Timeouts {
    type Scratch = TimeoutScratch;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut TimeoutScratch, _d: &mut Directives) -> super::Flow {
        st.streaming = x.streaming;
        super::Flow::Continue
    }

    /// Called again when pingora retries a failed reused connection: the deadline stays the
    /// one armed first, counted from the request's start.
    fn on_peer(&self, x: &Exchange<'_>, st: &mut TimeoutScratch, opts: &mut PeerOptions) {
        opts.connection_timeout = Some(self.connect);
        if st.streaming {
            opts.read_timeout = Some(self.stream_idle);
            return;
        }
        let deadline = *st.deadline.get_or_insert(x.started + self.total);
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        opts.read_timeout = Some(self.read.min(remaining));
        opts.write_timeout = Some(self.read.min(remaining));
    }

    async fn on_response(
        &self,
        x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut TimeoutScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        // A body served from the cache (a hit, or a stale copy after the upstream timed out)
        // owes nothing to the upstream deadline.
        if matches!(x.cache_phase, CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating | CachePhase::Revalidated) {
            st.deadline = None;
        }
        let event_stream = resp
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS || event_stream {
            st.streaming = true;
        }
        Ok(())
    }

    fn on_response_body(&self, _body: &mut Option<Bytes>, eos: bool, st: &mut TimeoutScratch) -> Result<(), Cut> {
        if !st.streaming && !eos && st.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Cut {
                code: Problem::UpstreamTimeout.code(),
                why: "total upstream timeout exceeded mid-response",
            });
        }
        Ok(())
    }

    fn on_done(&self, st: &TimeoutScratch, out: &mut Outcome) {
        out.streaming = st.streaming;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures_util::FutureExt as _;
    use super::*;
    use crate::policy::tests::exchange;
    use crate::policy::Flow;

    #[test]
    fn read_timeout_never_outlasts_the_deadline() {
        let t = Timeouts { total: Duration::from_millis(200), connect: Duration::from_secs(1), read: Duration::from_secs(5), stream_idle: Duration::from_secs(60) };
        let req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        let x = exchange(&req);
        let mut st = TimeoutScratch::default();
        assert!(matches!(t.on_request(&x, &mut st, &mut Directives::default()).now_or_never().unwrap(), Flow::Continue));
        let mut opts = PeerOptions::new();
        t.on_peer(&x, &mut st, &mut opts);
        assert!(opts.read_timeout.unwrap() <= Duration::from_millis(200));
        assert_eq!(opts.connection_timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn an_event_stream_has_no_deadline() {
        let t = Timeouts { total: Duration::from_millis(1), ..Timeouts::default() };
        let mut st = TimeoutScratch { streaming: false, deadline: Some(Instant::now() - Duration::from_secs(1)) };
        let mut body = Some(Bytes::from_static(b"x"));
        assert!(t.on_response_body(&mut body, false, &mut st).is_err());
        st.streaming = true;
        assert!(t.on_response_body(&mut body, false, &mut st).is_ok());
    }
}
