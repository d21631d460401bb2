//! Body caps. The request body is refused from `Content-Length` before a byte is read (413),
//! then counted while a body of unknown length streams: the backend never receives more than
//! the cap. The response body cap gives 502 when the backend declares too much, and cuts the
//! connection when a streamed body crosses it: never a silently truncated body.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::registry::{keys, Env, MaterializeError, Scope, Spec};
use super::{Cut, Directives, Exchange, Flow, Policy};
use crate::model::diag::Diagnostics;
use crate::model::units::Size;
use toml::Spanned;
use crate::problem::{GatewayError, Problem};
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use pingora::http::ResponseHeader;

keys! {
    /// Largest request body; larger gets 413 (default 10MiB).
    #[schema(default = "10MiB")]
    max_body: Spanned<Size>,
    /// Request bodies up to this are read whole, framing checked, before the backend sees
    /// the request; larger ones are refused (413). At most 64 KiB.
    #[schema(example = "64KiB")]
    buffer_request_body: Spanned<Size>,
    /// Cap on the response body the backend may send.
    max_response_body: Spanned<Size>,
}

/// The definition and the live policy: plain values, nothing to build.
/// The request body cap when neither the route nor `[defaults]` sets one.
pub const MAX_BODY: u64 = 10 * 1024 * 1024;
/// The largest `buffer_request_body`: the size of the buffer pingora replays a body from.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyLimits {
    /// Request body cap in bytes.
    pub max_body: u64,
    /// Response body cap in bytes.
    pub max_response_body: Option<u64>,
    /// `buffer_request_body`: bodies up to this are read whole (by the proxy, which owns the
    /// session) before the request goes upstream.
    pub buffer: Option<u64>,
}

#[derive(Debug, Default)]
pub struct BodyScratch {
    request_seen: u64,
    response_seen: u64,
}

/// What the declared `Content-Length` says about the cap.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Fits,
    TooLarge,
    Unknown,
    Invalid,
}

pub fn check_declared(content_length: Option<&[u8]>, max: u64) -> Declared {
    let Some(raw) = content_length else {
        return Declared::Unknown;
    };
    match std::str::from_utf8(raw).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(n) if n > max => Declared::TooLarge,
        Some(_) => Declared::Fits,
        None => Declared::Invalid,
    }
}

/// Adds a chunk to the running count; true when the cap is crossed.
#[must_use]
pub fn exceeds(seen: &mut u64, chunk: usize, max: u64) -> bool {
    *seen = seen.saturating_add(chunk as u64);
    *seen > max
}

fn iec(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

impl Spec for BodyLimits {
    type Keys = Keys;
    type Def = BodyLimits;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<BodyLimits> {
        let buffer = match &keys.buffer_request_body {
            Some(b) if b.get_ref().0 == 0 || b.get_ref().0 > MAX_BUFFERED_BODY => cx.error(
                b.span(),
                format!("`buffer_request_body` must be between 1 byte and {} KiB", MAX_BUFFERED_BODY / 1024),
                "pingora replays a buffered body from a 64 KiB buffer; larger bodies stream (max_body still caps them)",
            ),
            Some(b) => Some(b.get_ref().0),
            None => None,
        };
        Some(BodyLimits {
            max_body: keys.max_body.as_ref().map_or(MAX_BODY, |s| s.get_ref().0),
            max_response_body: keys.max_response_body.as_ref().map(|s| s.get_ref().0),
            buffer,
        })
    }

    fn materialize(def: Option<&BodyLimits>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.cloned())
    }

    fn summary(def: &BodyLimits) -> String {
        let mut s = format!("max_body {}", iec(def.max_body));
        if let Some(b) = def.buffer {
            s.push_str(&format!(", buffer_request_body {}", iec(b)));
        }
        if let Some(cap) = def.max_response_body {
            s.push_str(&format!(", max_response_body {}", iec(cap)));
        }
        s
    }

    fn facts(def: &BodyLimits, out: &mut serde_json::Map<String, serde_json::Value>) {
        out.insert("max_body".into(), def.max_body.into());
    }
}

impl BodyLimits {
    fn too_large(&self) -> GatewayError {
        GatewayError::new(
            Problem::PayloadTooLarge,
            format!("request body is larger than this route's limit of {} bytes", self.max_body),
        )
    }
}

impl Policy for BodyLimits {
    type Scratch = BodyScratch;

    async fn on_request(&self, x: &Exchange<'_>, _st: &mut BodyScratch, d: &mut Directives) -> Flow {
        let declared = x.req.headers.get(CONTENT_LENGTH).map(|v| v.as_bytes());
        match check_declared(declared, self.max_body) {
            Declared::Fits | Declared::Unknown => Flow::Continue,
            Declared::TooLarge => {
                // The body is never read: the connection cannot carry another request.
                d.close = true;
                Flow::Respond(self.too_large())
            }
            Declared::Invalid => {
                d.close = true;
                Flow::Respond(GatewayError::new(Problem::BadRequest, "invalid Content-Length"))
            }
        }
    }

    fn on_request_body(&self, chunk: &mut Option<Bytes>, st: &mut BodyScratch) -> Result<(), GatewayError> {
        let Some(c) = chunk.as_ref() else { return Ok(()) };
        if exceeds(&mut st.request_seen, c.len(), self.max_body) {
            // Drop the chunk that crossed the cap: the backend never receives more than the cap.
            *chunk = None;
            return Err(self.too_large());
        }
        Ok(())
    }

    async fn on_response(
        &self,
        _x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        _st: &mut BodyScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        let Some(cap) = self.max_response_body else { return Ok(()) };
        let declared = resp.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > cap) {
            return Err(GatewayError::new(
                Problem::ResponseTooLarge,
                format!("upstream response is larger than this route's limit of {cap} bytes"),
            ));
        }
        Ok(())
    }

    fn on_response_body(&self, body: &mut Option<Bytes>, _eos: bool, st: &mut BodyScratch) -> Result<(), Cut> {
        let (Some(cap), Some(chunk)) = (self.max_response_body, body.as_ref()) else { return Ok(()) };
        if exceeds(&mut st.response_seen, chunk.len(), cap) {
            // The header is out: cut the connection rather than hand over a truncated body.
            *body = None;
            return Err(Cut {
                code: Problem::ResponseTooLarge.code(),
                why: "response body exceeds max_response_body",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures_util::FutureExt as _;
    use super::*;
    use crate::policy::tests::exchange;

    #[test]
    fn declared_lengths() {
        assert_eq!(check_declared(Some(b"10"), 10), Declared::Fits);
        assert_eq!(check_declared(Some(b"11"), 10), Declared::TooLarge);
        assert_eq!(check_declared(None, 10), Declared::Unknown);
        assert_eq!(check_declared(Some(b"x"), 10), Declared::Invalid);
    }

    #[test]
    fn streamed_count() {
        let mut seen = 0;
        assert!(!exceeds(&mut seen, 6, 10));
        assert!(exceeds(&mut seen, 6, 10));
    }

    #[test]
    fn declared_too_large_is_refused_and_closes() {
        let p = BodyLimits { max_body: 4, max_response_body: None, buffer: None };
        let mut req = pingora::http::RequestHeader::build("POST", b"/x", None).unwrap();
        req.insert_header("content-length", "5").unwrap();
        let (mut st, mut d) = (BodyScratch::default(), Directives::default());
        match p.on_request(&exchange(&req), &mut st, &mut d).now_or_never().unwrap() {
            Flow::Respond(e) => assert_eq!(e.problem, Problem::PayloadTooLarge),
            Flow::Continue => panic!("not refused"),
        }
        assert!(d.close);
    }

    #[test]
    fn streamed_request_body_drops_the_crossing_chunk() {
        let p = BodyLimits { max_body: 4, max_response_body: None, buffer: None };
        let mut st = BodyScratch::default();
        let mut chunk = Some(Bytes::from_static(b"abc"));
        assert!(p.on_request_body(&mut chunk, &mut st).is_ok());
        let mut chunk = Some(Bytes::from_static(b"de"));
        assert!(p.on_request_body(&mut chunk, &mut st).is_err());
        assert!(chunk.is_none());
    }

    #[test]
    fn streamed_response_over_the_cap_is_cut() {
        let p = BodyLimits { max_body: 4, max_response_body: Some(3), buffer: None };
        let mut st = BodyScratch::default();
        let mut body = Some(Bytes::from_static(b"abcd"));
        assert_eq!(p.on_response_body(&mut body, false, &mut st).unwrap_err().code, "response_too_large");
        assert!(body.is_none());
    }
}
