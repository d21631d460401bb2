//! The proxy listener's connection layer, between the accept loop and pingora's HTTP/1
//! session: connection limits, the whole-head deadline, and refusals of heads pingora would
//! answer with its own empty 400.
//!
//! pingora reads a request head with a 60 s timeout per read, so a client trickling a byte at
//! a time holds a connection for ever, and it answers a malformed head before any `ProxyHttp`
//! hook runs. Here the head is read first, under one deadline, and checked by the same parser
//! pingora uses; a good head is handed to pingora as the session's already-read bytes, so
//! pingora parses it without another read. Every refusal is problem+json with a request id,
//! and the connection is closed.
//!
//! HTTP/2 (negotiated by ALPN, on TLS listeners) goes to pingora unchanged: its streams have
//! their own flow control and no head to trickle.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::front::Door;
use super::Gateway;
use crate::app::App;
use crate::edge::forwarding::new_request_id;
use crate::edge::limits::ServerLimits;
use crate::problem::{self, GatewayError, Problem};
use async_trait::async_trait;
use bytes::BytesMut;
use dashmap::DashMap;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The most header fields a head may have: pingora's own bound, so a head accepted here is
/// never refused by pingora's parser for its count.
const MAX_FIELDS: usize = 256;

/// Client connections open, across the plain and the HTTPS listener.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    per_client: DashMap<IpAddr, usize>,
}

/// Which listener an `Edge` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Plain,
    Tls,
}

/// Wraps the HTTP proxy app `A` with the connection layer.
pub struct Edge<A> {
    proxy: Arc<A>,
    /// Answers fresh cache hits before `proxy` sees them (`front`); `None` where pingora must
    /// count every request (a keep-alive request limit).
    front: Option<Gateway>,
    app: Arc<App>,
    conns: Arc<Connections>,
    listener: Listener,
}

impl<A: HttpServerApp> Edge<A> {
    pub fn new(proxy: A, app: Arc<App>, conns: Arc<Connections>, listener: Listener) -> Self {
        let limited = proxy.server_options().is_some_and(|o| o.keepalive_request_limit.is_some());
        let front = (!limited).then(|| Gateway::new(app.clone()));
        Edge { proxy: Arc::new(proxy), front, app, conns, listener }
    }
}

impl<A> Edge<A> {

    /// Takes a connection slot, or says which limit is reached.
    fn admit(&self, peer: Option<IpAddr>, limits: &ServerLimits, trusted: bool) -> Result<Slot<'_>, &'static str> {
        let c = &*self.conns;
        if c.open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            c.open.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections");
        }
        let client = match peer.filter(|_| !trusted) {
            Some(ip) => {
                let mut n = c.per_client.entry(ip).or_insert(0);
                if *n >= limits.max_connections_per_client {
                    drop(n);
                    c.open.fetch_sub(1, Ordering::AcqRel);
                    return Err("max_connections_per_client");
                }
                *n += 1;
                Some(ip)
            }
            None => None,
        };
        self.app.metrics.connection_opened();
        Ok(Slot { conns: c, app: &self.app, client })
    }
}

/// A connection's place in the counts, given back when it closes.
struct Slot<'a> {
    conns: &'a Connections,
    app: &'a App,
    client: Option<IpAddr>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.client {
            // the entry goes with its last connection: the map holds live clients only
            self.conns.per_client.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
        self.app.metrics.connection_closed();
    }
}

/// Where the plain listener sends a request under `redirect_to_https`, or `None` for one that
/// stays on plain HTTP: an ACME HTTP-01 challenge (a certificate is issued over port 80), or a
/// head without a usable Host.
fn https_location(head: &[u8], port: u16) -> Option<String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(head).ok()?;
    let target = req.path?;
    if target.starts_with("/.well-known/acme-challenge/") || !target.starts_with('/') {
        return None;
    }
    let host = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host"))?.value;
    let host = std::str::from_utf8(host).ok()?.trim();
    // the name without its port; an IPv6 literal keeps its brackets
    let name = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b));
    if !valid {
        return None;
    }
    Some(if port == 443 { format!("https://{name}{target}") } else { format!("https://{name}:{port}{target}") })
}

/// How reading a head ended.
enum Head {
    /// A complete, well-formed head (and any bytes after it), for pingora to parse.
    Ready(BytesMut),
    /// Closed, timed out idle, or shut down before a request began: nothing to answer.
    Gone,
    /// Answered with this problem, then closed.
    Refused(GatewayError, &'static str),
}

/// Reads one request head. The client has `idle` to start it (the keep-alive timeout between
/// requests; `header_timeout` on a new connection) and `header_timeout` from its first byte
/// to finish it. Stops waiting for a next request when the server shuts down.
async fn read_head(stream: &mut Stream, limits: &ServerLimits, fresh: bool, shutdown: &mut ShutdownWatch) -> Head {
    let mut buf = BytesMut::with_capacity(1024);
    let started = Instant::now();
    let idle = if fresh { limits.header_timeout } else { limits.keepalive_timeout };
    let first = tokio::select! {
        biased;
        r = tokio::time::timeout(idle, stream.read_buf(&mut buf)) => r,
        // a new connection is served even while draining: its client has already connected
        _ = shutdown.wait_for(|stop| *stop), if !fresh => return Head::Gone,
    };
    match first {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Head::Gone,
    }
    let deadline = if fresh { started } else { Instant::now() } + limits.header_timeout;
    // The request line and fields with their separators: past this, 431 follows anyway.
    let max = limits.max_uri_length + limits.max_header_bytes + 4 * limits.max_header_count + 64;
    loop {
        match check(&buf) {
            Parsed::Complete => return Head::Ready(buf),
            Parsed::Invalid(why) => {
                let err = GatewayError::new(Problem::BadRequest, format!("malformed request head: {why}"));
                return Head::Refused(err, "malformed_head");
            }
            Parsed::Connect => {
                let err = GatewayError::new(Problem::MethodNotAllowed, format!("CONNECT is not served here; allowed: {}", limits.allow))
                    .allow(limits.allow.clone());
                return Head::Refused(err, "malformed_head");
            }
            Parsed::TooManyFields => {
                let err = GatewayError::new(Problem::HeadersTooLarge, format!("more than {MAX_FIELDS} header fields"));
                return Head::Refused(err, "head_too_large");
            }
            Parsed::Partial if buf.len() > max => {
                let err = GatewayError::new(Problem::HeadersTooLarge, format!("request head over {max} bytes"));
                return Head::Refused(err, "head_too_large");
            }
            Parsed::Partial => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Head::Gone,
            Err(_) => {
                let detail = format!("the request head did not arrive within server.header_timeout ({:?})", limits.header_timeout);
                return Head::Refused(GatewayError::new(Problem::RequestTimeout, detail), "header_timeout");
            }
        }
    }
}

/// Whether the connection layer would hand `buf` to pingora as a complete head: for the fuzz
/// target, which looks for inputs that make the check panic.
pub fn check_head(buf: &[u8]) -> bool {
    matches!(check(buf), Parsed::Complete)
}

enum Parsed {
    Complete,
    Partial,
    TooManyFields,
    Connect,
    Invalid(&'static str),
}

/// The head in `buf`, checked with httparse as pingora will parse it, and for the framing and
/// authority faults pingora's `validate_request` refuses, so that every refusal is ours.
/// pingora percent-encodes a request target with spaces, quotes or angle brackets and tries
/// again; those are refused here instead, as RFC 9112 3.2 and nginx do.
fn check(buf: &[u8]) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooManyFields,
        Err(e) => {
            return Parsed::Invalid(match e {
                httparse::Error::Token => "invalid character in the request line",
                httparse::Error::Version => "not an HTTP/1.x request line",
                httparse::Error::HeaderName => "invalid header field name",
                httparse::Error::HeaderValue => "invalid header field value",
                httparse::Error::NewLine => "invalid line ending",
                _ => "unparseable",
            })
        }
    }
    if req.method == Some("CONNECT") {
        return Parsed::Connect;
    }
    match framing(&req) {
        Some(why) => Parsed::Invalid(why),
        None => Parsed::Complete,
    }
}

/// What is wrong with a parsed head's `Host`, `Content-Length` or `Transfer-Encoding`, as
/// RFC 9110 8.6, RFC 9112 6.1 and 6.3 and pingora judge them.
fn framing(req: &httparse::Request<'_, '_>) -> Option<&'static str> {
    let (mut hosts, mut length, mut coding) = (0, None::<u64>, None::<&[u8]>);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // identical duplicates (lines or a comma list) are one length; anything else is not
            for part in h.value.split(|b| *b == b',') {
                let part = part.trim_ascii();
                let n = match std::str::from_utf8(part).ok().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
                    Some(p) => p.parse::<u64>().ok(),
                    None => None,
                };
                match (n, length) {
                    (None, _) => return Some("invalid Content-Length"),
                    (Some(n), Some(l)) if n != l => return Some("differing Content-Length values"),
                    (n, _) => length = n,
                }
            }
        }
    }
    if hosts > 1 {
        return Some("more than one Host field");
    }
    if let Some(coding) = coding {
        if req.version == Some(0) {
            return Some("Transfer-Encoding in an HTTP/1.0 request");
        }
        let last = coding.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
        if !last.eq_ignore_ascii_case(b"chunked") {
            return Some("the final transfer coding is not chunked");
        }
    }
    None
}

/// Writes `err` on a connection no session owns yet, then closes it. What the client already
/// sent is read first (briefly): closing with unread bytes makes the kernel reset the
/// connection, which can destroy the answer before the client reads it.
async fn refuse(mut stream: Stream, err: &GatewayError) {
    // on the heap: a 4 KiB array here sat in every connection's future, idle ones too
    // (measured with heaptrack: 4.9 KiB per connection for `process_new`, 1.1 KiB without)
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut sink)).await;
    let bytes = problem::http1_bytes(err, &new_request_id());
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[async_trait]
impl<A> ServerApp for Edge<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let runtime = self.app.runtime();
        let peer = stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let trusted = peer.is_some_and(|ip| runtime.forwarding.is_trusted(ip));
        let _slot = match self.admit(peer, &runtime.limits, trusted) {
            Ok(slot) => slot,
            Err(reason) => {
                self.app.metrics.connection_refused(reason);
                let detail = format!("server.{reason} reached; try again shortly");
                refuse(stream, &GatewayError::new(Problem::TooManyConnections, detail).retry_after(1)).await;
                return None;
            }
        };
        drop(runtime);
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        let mut shutdown_rx = shutdown.clone();
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut fresh = true;
        loop {
            // the limits in force now: a reload applies from the next request
            let runtime = self.app.runtime();
            // A new connection counts as in flight until its first head is read: a drain
            // that starts meanwhile waits for it (up to header_timeout) instead of closing a
            // connection whose client has already written, or is about to.
            let waiting = fresh.then(|| self.app.track_connection());
            let head = match read_head(&mut stream, &runtime.limits, fresh, &mut shutdown_rx).await {
                Head::Ready(head) => head,
                Head::Gone => return None,
                Head::Refused(err, reason) => {
                    self.app.metrics.connection_refused(reason);
                    tracing::debug!(?peer, reason, detail = %err.detail, "request head refused");
                    refuse(stream, &err).await;
                    return None;
                }
            };
            if self.listener == Listener::Plain
                && let Some(port) = runtime.redirect_https
                && let Some(location) = https_location(&head, port)
            {
                let bytes = problem::redirect_http1_bytes(&location, &new_request_id());
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                })
                .await;
                return None;
            }
            if let Some(front) = &self.front {
                let (tls, stopping) = (self.listener == Listener::Tls, *shutdown.borrow());
                match front.front_door(&runtime, &head, &mut stream, peer, tls, stopping).await {
                    Door::Pass => {}
                    Door::KeepAlive => {
                        fresh = false;
                        continue;
                    }
                    Door::Close => return None,
                }
            }
            drop(runtime);
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(p) => p.apply_to_session(&mut session),
                // as pingora's own loop starts a connection
                None => {
                    session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                    session.set_keepalive_reuses_remaining(self.proxy.server_options().and_then(|o| o.keepalive_request_limit));
                }
            }
            session.set_pipelined_prefix(head);
            let reused = self.proxy.process_new_http(session, shutdown).await;
            // held until the request has its own count (from its context), so there is no gap
            drop(waiting);
            let reused = reused?;
            (stream, persistent) = reused.consume();
            fresh = false;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_checked_as_pingora_parses_them() {
        assert!(matches!(check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Parsed::Complete));
        assert!(matches!(check(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
        assert!(matches!(check(b"GET / HTTP/1.1\nHost: a\n\n"), Parsed::Complete));
        assert!(matches!(check(b"GET /a b HTTP/1.1\r\n\r\n"), Parsed::Invalid(_)));
        assert!(matches!(check(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Parsed::Invalid(_)));
        assert!(matches!(check(b"GET / FTP/1.1\r\n\r\n"), Parsed::Invalid(_)));
        assert!(matches!(check(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), Parsed::Connect));
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ] {
            assert!(matches!(check(bad), Parsed::Invalid(_)), "{}", String::from_utf8_lossy(bad));
        }
        for good in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
        ] {
            assert!(matches!(check(good), Parsed::Complete), "{}", String::from_utf8_lossy(good));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(check(&many), Parsed::TooManyFields));
    }
}
