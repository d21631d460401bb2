//! One error format: a FastAPI error body from the backend (`{"detail": "..."}`, or the 422
//! validation list) is rewritten into the gateway's own problem+json shape, with a stable code
//! and the request id (`problem::from_fastapi`).
//!
//! The response header leaves before its body is read, so what can be known from the header
//! decides: a JSON error (status 400 and up, `application/json`, no content coding, at most
//! `MAX_ERROR_BODY` long) is announced as `application/problem+json` without a length. Its body
//! is then rewritten when it has FastAPI's shape, and otherwise sent as it came (a JSON object
//! with members of its own is still a valid problem document, RFC 9457 3). Anything else
//! passes untouched.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::registry::{keys, Env, MaterializeError, Scope, Spec};
use super::{Cut, Directives, Exchange, Policy};
use crate::model::diag::Diagnostics;
use toml::Spanned;
use crate::problem::{self, GatewayError};
use crate::telemetry::outcome::Outcome;
use super::support::gather::{self, Gather, Gathered};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::http::ResponseHeader;

/// Error bodies longer than this pass untouched: FastAPI's are a few hundred bytes, a
/// validation list of a large body a few KiB.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

keys! {
    /// Rewrite FastAPI error bodies (`{"detail": ...}`) into the gateway's problem+json.
    #[schema(example = true)]
    normalize_errors: Spanned<bool>,
}

/// Nothing to configure beyond on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NormalizeErrors;

impl Spec for NormalizeErrors {
    type Keys = Keys;
    type Def = NormalizeErrors;

    fn compile(keys: &Keys, _cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<NormalizeErrors> {
        keys.normalize_errors.as_ref().is_some_and(|b| *b.get_ref()).then_some(NormalizeErrors)
    }

    fn materialize(def: Option<&NormalizeErrors>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.copied())
    }

    fn summary(_def: &NormalizeErrors) -> String {
        "normalize_errors".into()
    }
}

#[derive(Debug, Default)]
pub struct ErrorsScratch {
    body: Gather,
    request_id: String,
    status: u16,
    /// The code the body was rewritten to.
    code: Option<&'static str>,
}

/// A JSON body the header says may be rewritten.
fn rewritable(resp: &ResponseHeader, head: bool) -> bool {
    if head || resp.status.as_u16() < 400 || resp.headers.contains_key(CONTENT_ENCODING) {
        return false;
    }
    let json = gather::media_type(resp).is_some_and(|t| t == "application/json");
    let small = gather::content_length(resp).is_none_or(|n| n <= MAX_ERROR_BODY as u64);
    json && small
}

impl Policy for NormalizeErrors {
    type Scratch = ErrorsScratch;

    async fn on_response(
        &self,
        x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut ErrorsScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if rewritable(resp, x.req.method == http::Method::HEAD) {
            st.body.start(gather::content_length(resp), MAX_ERROR_BODY);
            st.status = resp.status.as_u16();
            st.request_id = x.request_id.to_string();
            resp.remove_header(&CONTENT_LENGTH);
            let _ = resp.insert_header(CONTENT_TYPE, problem::CONTENT_TYPE);
        }
        Ok(())
    }

    fn on_response_body(&self, body: &mut Option<Bytes>, eos: bool, st: &mut ErrorsScratch) -> Result<(), Cut> {
        if let Gathered::Whole(original) = st.body.push(body, eos) {
            *body = Some(match problem::from_fastapi(st.status, &original, &st.request_id) {
                Some((rewritten, code)) => {
                    st.code = Some(code);
                    rewritten
                }
                None => original,
            });
        }
        Ok(())
    }

    fn on_done(&self, st: &ErrorsScratch, out: &mut Outcome) {
        out.backend_error = st.code;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resp(status: u16, ct: &str, len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        r.insert_header(CONTENT_TYPE, ct).unwrap();
        if let Some(n) = len {
            r.insert_header(CONTENT_LENGTH, n).unwrap();
        }
        r
    }

    #[test]
    fn only_small_json_errors_are_rewritable() {
        assert!(rewritable(&resp(404, "application/json", Some(30)), false));
        assert!(rewritable(&resp(422, "application/json; charset=utf-8", None), false));
        assert!(!rewritable(&resp(404, "application/json", Some(30)), true));
        assert!(!rewritable(&resp(200, "application/json", Some(30)), false));
        assert!(!rewritable(&resp(500, "text/plain", Some(30)), false));
        assert!(!rewritable(&resp(400, "application/problem+json", Some(30)), false));
        assert!(!rewritable(&resp(400, "application/json", Some(MAX_ERROR_BODY + 1)), false));
    }

    #[test]
    fn a_body_in_pieces_is_rewritten_once_at_the_end() {
        let p = NormalizeErrors;
        let mut st = ErrorsScratch { status: 404, request_id: "r".into(), ..Default::default() };
        st.body.start(None, MAX_ERROR_BODY);
        let mut first = Some(Bytes::from_static(b"{\"detail\":"));
        p.on_response_body(&mut first, false, &mut st).unwrap();
        assert!(first.is_none());
        let mut last = Some(Bytes::from_static(b"\"Item not found\"}"));
        p.on_response_body(&mut last, true, &mut st).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&last.unwrap()).unwrap();
        assert_eq!((v["code"].as_str(), v["detail"].as_str()), (Some("not_found"), Some("Item not found")));
        assert_eq!(st.code, Some("not_found"));
    }
}
