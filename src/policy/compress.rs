//! Response compression policy: which algorithm a client gets (by `Accept-Encoding` q-values,
//! ties broken by the route's order), and which responses are worth compressing (content type,
//! size, not already encoded). The compressing itself is pingora's streaming module.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{Directives, Exchange, Flow, Policy};
use crate::problem::GatewayError;
use crate::telemetry::outcome::Outcome;
use http::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::protocols::http::compression::Algorithm;
use pingora::http::{RequestHeader, ResponseHeader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressPolicy {
    /// Preference order on equal q-values.
    pub algorithms: Vec<Algorithm>,
    pub min_size: u64,
    /// Content-type prefixes, lower case.
    pub types: Vec<String>,
    pub gzip_level: u32,
    pub brotli_level: u32,
    pub zstd_level: u32,
}

pub const DEFAULT_MIN_SIZE: u64 = 1024;
pub const DEFAULT_TYPES: &[&str] = &[
    "application/json",
    "application/problem+json",
    "application/javascript",
    "application/xml",
    "text/",
    "image/svg+xml",
];

impl Default for CompressPolicy {
    fn default() -> Self {
        CompressPolicy {
            // No brotli: pingora 0.9.1 never finishes a brotli stream (cloudflare/pingora#1013),
            // and strict decoders (Node's fetch among them) reject every such body.
            algorithms: vec![Algorithm::Zstd, Algorithm::Gzip],
            min_size: DEFAULT_MIN_SIZE,
            types: DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
            gzip_level: 6,
            brotli_level: 4,
            zstd_level: 3,
        }
    }
}

pub fn parse_algorithm(token: &str) -> Option<Algorithm> {
    let t = token.trim();
    if t.eq_ignore_ascii_case("gzip") {
        Some(Algorithm::Gzip)
    } else if t.eq_ignore_ascii_case("br") || t.eq_ignore_ascii_case("brotli") {
        Some(Algorithm::Brotli)
    } else if t.eq_ignore_ascii_case("zstd") {
        Some(Algorithm::Zstd)
    } else {
        None
    }
}

fn slot(a: Algorithm) -> Option<usize> {
    match a {
        Algorithm::Gzip => Some(0),
        Algorithm::Brotli => Some(1),
        Algorithm::Zstd => Some(2),
        _ => None,
    }
}

pub fn token(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Gzip => "gzip",
        Algorithm::Brotli => "br",
        Algorithm::Zstd => "zstd",
        _ => "identity",
    }
}

impl CompressPolicy {
    pub fn level(&self, a: Algorithm) -> u32 {
        match a {
            Algorithm::Gzip => self.gzip_level,
            Algorithm::Brotli => self.brotli_level,
            Algorithm::Zstd => self.zstd_level,
            _ => 0,
        }
    }

    /// The best algorithm the client accepts (RFC 9110 12.5.3): highest q wins, q=0 refuses,
    /// `*` covers encodings not named; ties go to the route's order.
    pub fn choose(&self, accept_encoding: Option<&HeaderValue>) -> Option<Algorithm> {
        let header = accept_encoding?.to_str().ok()?;
        // q per known coding (gzip, br, zstd), and for `*`; no allocation on the request path
        let mut named: [Option<f32>; 3] = [None; 3];
        let mut star: Option<f32> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .map_or(Some(1.0), |v| v.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            if coding == "*" {
                star = Some(q);
            } else if let Some(i) = parse_algorithm(coding).and_then(slot) {
                named[i] = Some(q);
            }
        }
        let mut best: Option<(Algorithm, f32)> = None;
        for a in &self.algorithms {
            let q = slot(*a).and_then(|i| named[i]).or(star).filter(|q| *q > 0.0);
            if let Some(q) = q
                && best.is_none_or(|(_, bq)| q > bq)
            {
                best = Some((*a, q));
            }
        }
        best.map(|(a, _)| a)
    }

    /// Whether this response should be compressed.
    pub fn eligible(&self, resp: &ResponseHeader) -> bool {
        let h = &resp.headers;
        if h.contains_key(CONTENT_ENCODING) || !resp.status.is_success() || resp.status.as_u16() == 204 || resp.status.as_u16() == 206 {
            return false;
        }
        let type_ok = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            // An event stream must reach the client event by event, not when a compressor flushes.
            !ct.starts_with("text/event-stream") && self.types.iter().any(|t| ct.starts_with(t.as_str()))
        });
        let size_ok = match h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
            Some(len) => len >= self.min_size,
            None => true, // streamed: size unknown, compress
        };
        type_ok && size_ok
    }
}

/// The encoding chosen for this request's response, if any.
#[derive(Debug, Default)]
pub struct CompressState {
    chosen: Option<Algorithm>,
}

impl Policy for CompressPolicy {
    type State = CompressState;

    /// Chosen before pingora's modules see the request: the engine's compression module
    /// must be switched on before its own request hook runs.
    fn on_request(&self, x: &Exchange<'_>, st: &mut CompressState, d: &mut Directives) -> Flow {
        if let Some(alg) = self.choose(x.req.headers.get(ACCEPT_ENCODING)) {
            st.chosen = Some(alg);
            d.compress = Some((alg, self.level(alg)));
        }
        Flow::Continue
    }

    fn on_upstream_request(&self, _x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut CompressState) -> Result<(), GatewayError> {
        // The gateway compresses one canonical form: ask the backend for identity.
        up.remove_header(&ACCEPT_ENCODING);
        Ok(())
    }

    async fn on_response(
        &self,
        _x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut CompressState,
        d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if st.chosen.is_some() && !self.eligible(resp) {
            st.chosen = None;
            d.compress_off = true;
        }
        Ok(())
    }

    fn on_done(&self, st: &CompressState, out: &mut Outcome) {
        out.compression = st.chosen.map(token);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn choose(ae: &str) -> Option<&'static str> {
        CompressPolicy::default().choose(Some(&HeaderValue::from_str(ae).unwrap())).map(token)
    }

    #[test]
    fn q_values_decide() {
        assert_eq!(choose("gzip"), Some("gzip"));
        assert_eq!(choose("gzip, br"), Some("gzip"));
        assert_eq!(choose("gzip, zstd"), Some("zstd"));
        assert_eq!(choose("gzip;q=1.0, zstd;q=0.5"), Some("gzip"));
        assert_eq!(choose("zstd;q=0, br;q=0.1, gzip;q=0.2"), Some("gzip"));
        assert_eq!(choose("br"), None);
        assert_eq!(choose("*"), Some("zstd"));
        assert_eq!(choose("*;q=0.5, gzip;q=0.8"), Some("gzip"));
        assert_eq!(choose("gzip;q=0, *;q=0"), None);
        assert_eq!(choose("identity"), None);
        assert_eq!(choose("deflate"), None);
        assert_eq!(CompressPolicy::default().choose(None), None);
    }

    fn resp(ct: &str, len: Option<u64>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        if let Some(l) = len {
            r.insert_header("content-length", l).unwrap();
        }
        r
    }

    #[test]
    fn eligibility() {
        let p = CompressPolicy::default();
        assert!(p.eligible(&resp("application/json", Some(5000))));
        assert!(p.eligible(&resp("text/plain", None)));
        assert!(!p.eligible(&resp("text/event-stream", None)));
        assert!(!p.eligible(&resp("application/json", Some(100))));
        assert!(!p.eligible(&resp("image/png", Some(5000))));
        let mut r = resp("application/json", Some(5000));
        r.insert_header("content-encoding", "gzip").unwrap();
        assert!(!p.eligible(&r));
    }
}
