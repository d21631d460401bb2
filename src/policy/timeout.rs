//! Upstream timeouts: connect, read (between two reads), and a total deadline for the whole
//! exchange, enforced on the upstream socket options and checked between body chunks.
//!
//! Streams have no total deadline: a WebSocket upgrade, a `streaming = true` route, or a
//! response that turns out to be `text/event-stream` (or `101`) only idles out after
//! `stream_idle` between reads. A deadline that passes after the header went out cuts the
//! connection: that is the only honest signal left.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{builtin, Cut, Directives, Exchange, Policy};
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use pingora::cache::CachePhase;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::PeerOptions;
use std::time::{Duration, Instant};

/// A route's `retry`: more attempts for an exchange that failed before any of the response
/// reached the client. A failed connect is retried for every method (nothing was sent); a
/// reset or a timeout after the request was sent only for GET, HEAD and OPTIONS, which a
/// backend may see twice. Another server of the upstream is tried first when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts after the first.
    pub attempts: u32,
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
}

impl Retry {
    pub const MAX_ATTEMPTS: u32 = 5;
}

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
            total: builtin::TIMEOUT,
            connect: builtin::CONNECT_TIMEOUT,
            read: builtin::TIMEOUT,
            stream_idle: builtin::STREAM_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Default)]
pub struct TimeoutState {
    streaming: bool,
    deadline: Option<Instant>,
}

impl Policy for Timeouts {
    type State = TimeoutState;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut TimeoutState, _d: &mut Directives) -> super::Flow {
        st.streaming = x.streaming;
        super::Flow::Continue
    }

    /// Called again when pingora retries a failed reused connection: the deadline stays the
    /// one armed first, counted from the request's start.
    fn on_peer(&self, x: &Exchange<'_>, st: &mut TimeoutState, opts: &mut PeerOptions) {
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
        st: &mut TimeoutState,
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

    fn on_response_body(&self, _body: &mut Option<Bytes>, eos: bool, st: &mut TimeoutState) -> Result<(), Cut> {
        if !st.streaming && !eos && st.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Cut {
                code: Problem::UpstreamTimeout.code(),
                why: "total upstream timeout exceeded mid-response",
            });
        }
        Ok(())
    }

    fn on_done(&self, st: &TimeoutState, out: &mut Outcome) {
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
        let mut st = TimeoutState::default();
        assert!(matches!(t.on_request(&x, &mut st, &mut Directives::default()).now_or_never().unwrap(), Flow::Continue));
        let mut opts = PeerOptions::new();
        t.on_peer(&x, &mut st, &mut opts);
        assert!(opts.read_timeout.unwrap() <= Duration::from_millis(200));
        assert_eq!(opts.connection_timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn an_event_stream_has_no_deadline() {
        let t = Timeouts { total: Duration::from_millis(1), ..Timeouts::default() };
        let mut st = TimeoutState { streaming: false, deadline: Some(Instant::now() - Duration::from_secs(1)) };
        let mut body = Some(Bytes::from_static(b"x"));
        assert!(t.on_response_body(&mut body, false, &mut st).is_err());
        st.streaming = true;
        assert!(t.on_response_body(&mut body, false, &mut st).is_ok());
    }
}
