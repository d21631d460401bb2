//! The front door: a fresh cache hit answered on the connection, right after the connection
//! layer has read its head, without a pingora session.
//!
//! Most of a hit's cost through pingora is the engine itself: the session and its futures
//! moved between the accept loop and the proxy's phases, and the header maps built for it
//! (bench/README, "Where the time goes"). A hit needs none of it. A plain HTTP/1.1 GET whose
//! route caches is looked up here first; when the store holds a fresh entry without variants,
//! the route's request-phase policies run (server limits, request id, rate limits), then its
//! response-phase policies on the stored header, and the answer is written straight to the
//! socket with the fields pingora would write (`Date`, `Connection`) and recorded in the same
//! outcome. Everything else, a miss included, goes to pingora untouched: nothing is taken
//! from any budget before the hit is known, so no request is counted twice.

use super::ctx::{Ctx, Decision};
use super::engine::{cache_key, cut, view};
use super::respond::problem_response;
use crate::cache::store::Body;
use super::{Gateway, Sent};
use crate::model::matcher::strip_port;
use crate::policy::cache::FULL_PATH_FIELDS;
use crate::model::normalize::normalize_with;
use crate::policy::{Directives, Flow, Policy};
use crate::problem::GatewayError;
use crate::runtime::Runtime;
use bytes::{BufMut, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method};
use pingora::cache::key::CacheHashKey;
use pingora::cache::{CachePhase, NoCacheReason};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::Stream;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The most fields a head the front door answers may have: more go to pingora.
const MAX_FIELDS: usize = 64;

/// Bodies up to this go out in one write with their header.
const ONE_WRITE: usize = 64 * 1024;

/// What the front door did with a request.
pub enum Door {
    /// Not a fresh hit it may answer: pingora serves the request from its head.
    Pass,
    /// Answered; the connection may carry the next request.
    KeepAlive,
    /// Answered (or the client went away); the connection ends.
    Close,
}

/// Request fields that take a request past the front door: a body or an upgrade, and what
/// the cache's fast path leaves to pingora (`FULL_PATH_FIELDS`).
fn passes(name: &str) -> bool {
    const NAMES: [&str; 4] = ["content-length", "transfer-encoding", "upgrade", "expect"];
    NAMES.iter().chain(FULL_PATH_FIELDS.iter()).any(|n| n.eq_ignore_ascii_case(name))
}

/// A field value as `HeaderValue::to_str` reads it: visible ASCII and tabs.
fn text(v: &[u8]) -> Option<&str> {
    v.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)).then(|| std::str::from_utf8(v).ok()).flatten()
}

impl Gateway {
    /// Answers `head` when it is a fresh hit (see the module's comment); `Door::Pass` leaves
    /// the request to pingora with nothing of it recorded or counted.
    pub async fn front_door(&self, rt: &Arc<Runtime>, head: &[u8], stream: &mut Stream, peer_ip: Option<IpAddr>, tls: bool, shutting_down: bool) -> Door {
        if !rt.front_door {
            return Door::Pass;
        }
        // what the route table and the cache key need, read off the head before anything is built
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut raw = httparse::Request::new(&mut fields);
        let (Ok(httparse::Status::Complete(n)), Some("GET"), Some(1), Some(target)) = (raw.parse(head), raw.method, raw.version, raw.path) else {
            return Door::Pass;
        };
        // one request at a time: pipelined bytes after this head stay with pingora
        if n != head.len() || !target.starts_with('/') || target.contains('#') {
            return Door::Pass;
        }
        let mut host = None;
        for h in raw.headers.iter() {
            if h.name.eq_ignore_ascii_case("host") {
                host = text(h.value).map(|v| strip_port(v.trim()));
            } else if h.name.eq_ignore_ascii_case("connection") {
                if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                    return Door::Pass;
                }
            } else if passes(h.name) {
                return Door::Pass;
            }
        }
        let raw_path = target.split_once('?').map_or(target, |(p, _)| p);
        let Ok(path) = normalize_with(raw_path, rt.limits.encoded_slash) else { return Door::Pass };
        let Some((route, params)) = rt.routes.lookup(&Method::GET, host, &path) else { return Door::Pass };
        if !route.hits_at_front_door() {
            return Door::Pass;
        }
        let Some(cache) = route.policies.cache.as_ref() else { return Door::Pass };
        let Some(policy) = cache.policy.as_ref() else { return Door::Pass };

        // the request as pingora would parse it, for the key and the policies
        let Ok(mut req) = RequestHeader::build_no_case(Method::GET, target.as_bytes(), Some(raw.headers.len())) else {
            return Door::Pass;
        };
        for h in raw.headers.iter() {
            let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) else {
                return Door::Pass;
            };
            if req.append_header(name, value).is_err() {
                return Door::Pass;
            }
        }
        let remove = &rt.forwarding.remove_request_headers;
        if policy.bypass(&req.method, &req.headers).is_some() || req.headers.keys().any(|k| remove.contains(k)) {
            return Door::Pass;
        }
        let route = route.clone();
        let mut ctx = Ctx::new(rt.clone(), self.app.track());
        if let std::borrow::Cow::Owned(p) = path {
            ctx.core.rewritten_path = Some(p);
        }
        ctx.core.params = params;
        let before = CachePhase::Disabled(NoCacheReason::NeverEnabled);
        let mut d = Directives::default();
        // pure checks (pingora refuses the same way): nothing is taken before the hit is known
        if let Flow::Respond(_) = rt.limits.on_request(&view(&req, &ctx.core, before, None), &mut (), &mut d).await {
            return Door::Pass;
        }
        let Some(hit) = cache.fresh_hit(&cache_key(&req, &ctx.core, policy).combined_bin()) else { return Door::Pass };

        // a fresh hit: from here the request is this door's to answer
        self.app.metrics.front_door_answered();
        self.identify(&req, &mut ctx, peer_ip, tls);
        ctx.decision = Decision::Routed(route);
        self.enter_route(&req, &mut ctx, before, false, &mut d).await;
        let refusal = match &ctx.decision {
            Decision::Rejected { err, .. } => Some(err.clone()),
            _ => None,
        };
        let answered = match refusal {
            Some(err) => self.refuse(&mut ctx, err, stream, !d.close && !shutting_down).await,
            None => {
                ctx.core.fast_hit = true;
                let crate::policy::cache::FreshHit { mut header, obj, key } = hit;
                let body = self.hit_body(&mut ctx, &obj, &header, &key);
                match self.outgoing(&req, &mut ctx, CachePhase::Hit, None, &mut header, &mut d).await {
                    Ok(()) => send(&mut ctx, header, body, stream, !d.close && !shutting_down).await,
                    Err(err) => self.refuse(&mut ctx, err, stream, false).await,
                }
            }
        };
        let (sent, alive, error) = match answered {
            Ok((sent, alive)) => (sent, alive, None),
            // noted by `cut`
            Err((sent, Broken::Cut)) => (sent, false, None),
            Err((sent, Broken::Write(e))) => (sent, false, Some(format!("writing the response: {e}"))),
        };
        self.finish(&req, &mut ctx, sent, error);
        if alive {
            Door::KeepAlive
        } else {
            let _ = stream.shutdown().await;
            Door::Close
        }
    }

    /// A refusal at the front door: problem+json, with the route's fields, as `respond`.
    async fn refuse(&self, ctx: &mut Ctx, err: GatewayError, stream: &mut Stream, alive: bool) -> Answered {
        let (mut header, body) = problem_response(ctx, err);
        let mut out = BytesMut::with_capacity(512 + body.len());
        head_bytes(&mut header, alive, &mut out);
        out.put_slice(&body);
        let status = header.status.as_u16();
        match write(stream, &out).await {
            Ok(()) => Ok((Sent { status, bytes_in: 0, bytes_out: body.len() }, alive)),
            Err(e) => Err((Sent { status, bytes_in: 0, bytes_out: 0 }, Broken::Write(e))),
        }
    }
}

/// The status line and fields as pingora writes a response (`http_resp_header_to_buf`), with
/// the `Date` and `Connection` it adds.
fn head_bytes(header: &mut ResponseHeader, alive: bool, out: &mut BytesMut) {
    let _ = header.insert_header(DATE, get_cached_date());
    let _ = header.insert_header(CONNECTION, if alive { "keep-alive" } else { "close" });
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(header.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = header.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    header.header_to_h1_wire(out);
    out.put_slice(b"\r\n");
}

/// Writes a hit: its header, then its body through the route's body filters, framed by its
/// length or, when a filter rewrites it (a field selection, a body over the stored forms'
/// bound compressed as it goes), chunked, as pingora frames a hit of unknown length.
async fn send(ctx: &mut Ctx, mut header: ResponseHeader, body: &Body, stream: &mut Stream, alive: bool) -> Answered {
    let status = header.status.as_u16();
    let chunked = if header.headers.contains_key(CONTENT_LENGTH) {
        false
    } else {
        let _ = header.insert_header(TRANSFER_ENCODING, "chunked");
        true
    };
    let mut out = BytesMut::with_capacity(512 + body.len().min(ONE_WRITE));
    head_bytes(&mut header, alive, &mut out);
    let mut sent = Sent { status, bytes_in: 0, bytes_out: 0 };
    for (piece, end) in body.pieces() {
        let mut data = Some(piece);
        if let Some(route) = ctx.decision.route()
            && let Err(c) = route.policies.on_response_body(&mut data, end, &mut ctx.record.scratch)
        {
            cut(ctx, c);
            let _ = write(stream, &out).await;
            return Err((sent, Broken::Cut));
        }
        if let Some(b) = data.filter(|b| !b.is_empty()) {
            sent.bytes_out += b.len();
            if chunked {
                out.put_slice(format!("{:X}\r\n", b.len()).as_bytes());
                out.put_slice(&b);
                out.put_slice(b"\r\n");
            } else {
                out.put_slice(&b);
            }
        }
        if end && chunked {
            out.put_slice(b"0\r\n\r\n");
        }
        if end || out.len() >= ONE_WRITE {
            if let Err(e) = write(stream, &out).await {
                return Err((sent, Broken::Write(e)));
            }
            out.clear();
        }
    }
    Ok((sent, alive))
}

/// Writes `bytes` and flushes: the answer is whole on the wire before the next head is read.
async fn write(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// How an answer went: what was sent and whether the connection may go on, or what ended it.
type Answered = Result<(Sent, bool), (Sent, Broken)>;

/// Why an answer ended the connection early.
enum Broken {
    /// A body filter cut the body (noted in the outcome).
    Cut,
    /// The client could not be written to.
    Write(std::io::Error),
}
