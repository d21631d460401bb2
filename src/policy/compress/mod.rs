//! Response compression policy: which algorithm a client gets (by `Accept-Encoding` q-values,
//! ties broken by the route's order), and which responses are worth compressing (content type,
//! size, not already encoded). Every encoding is done here, not by pingora's compression
//! module: gzip and zstd on states kept per thread (the module allocates and initializes a new
//! one per response), brotli because pingora 0.9.1's brotli stream is never finished
//! (cloudflare/pingora#1013) and strict decoders reject such a body.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod codec;

use super::registry::{keys, Env, MaterializeError, Scope, Spec};
use super::{Cut, Directives, Exchange, Flow, Policy};
use crate::model::diag::Diagnostics;
use crate::model::units::{Size, Toggle};
use codec::Stream;
use serde::Deserialize;
use toml::Spanned;
use bytes::Bytes;
use crate::cache::store::{Body, BodyWriter, StoredObject};
use crate::problem::GatewayError;
use crate::telemetry::outcome::Outcome;
use http::header::{HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY};
use pingora::protocols::http::compression::Algorithm;
use pingora::http::{RequestHeader, ResponseHeader};

keys! {
    /// Response compression: `"off"`, `"on"` (the built-in settings) or a table.
    #[schema(example = "on")]
    compress: Spanned<Toggle<RawCompress>>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawCompress {
    /// In order of preference on equal q-values.
    #[schema(example_toml = r#"["br", "zstd", "gzip"]"#)]
    pub algorithms: Option<Vec<Spanned<String>>>,
    /// Smaller responses are sent as they are (default 1KiB).
    #[schema(default = "1KiB")]
    pub min_size: Option<Spanned<Size>>,
    /// Content-type prefixes that are compressed.
    pub types: Option<Vec<Spanned<String>>>,
    /// gzip level, 1 to 9 (default 6).
    #[schema(default = 6)]
    pub gzip_level: Option<Spanned<u32>>,
    /// brotli level, 0 to 11 (default 2).
    #[schema(default = 2)]
    pub brotli_level: Option<Spanned<u32>>,
    /// zstd level, 1 to 19 (default 3).
    #[schema(default = 3)]
    pub zstd_level: Option<Spanned<u32>>,
}

/// The definition and the live policy: plain values (the encoders' states are kept per thread,
/// not per route).
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
            algorithms: vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip],
            min_size: DEFAULT_MIN_SIZE,
            types: DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
            gzip_level: 6,
            // measured on a 20 KiB JSON body (bench, scenario 2): level 2 is smaller than 3
            // and 4 and the cheapest level smaller than gzip's output
            brotli_level: 2,
            zstd_level: 3,
        }
    }
}

impl Spec for CompressPolicy {
    type Keys = Keys;
    type Def = CompressPolicy;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<CompressPolicy> {
        let raw = match keys.compress.as_ref()?.get_ref() {
            Toggle::Off => return None,
            Toggle::On(None) => return Some(CompressPolicy::default()),
            Toggle::On(Some(raw)) => raw,
        };
        let RawCompress { algorithms, min_size, types, gzip_level, brotli_level, zstd_level } = raw;
        let d = CompressPolicy::default();
        let mut algs = Vec::new();
        if let Some(list) = algorithms {
            for a in list {
                match parse_algorithm(a.get_ref()) {
                    Some(alg) => algs.push(alg),
                    None => {
                        cx.error::<()>(a.span(), format!("unknown compression algorithm {:?}", a.get_ref()), "use \"zstd\", \"br\" or \"gzip\"");
                    }
                }
            }
            if algs.is_empty() && !list.is_empty() {
                return None;
            }
        } else {
            algs = d.algorithms.clone();
        }
        let mut level = |v: &Option<Spanned<u32>>, max: u32, default: u32, name: &str| match v {
            Some(l) if *l.get_ref() == 0 || *l.get_ref() > max => {
                cx.error::<()>(l.span(), format!("`{name}` must be 1 to {max}"), format!("leave it out for the default, {default}"));
                default
            }
            Some(l) => *l.get_ref(),
            None => default,
        };
        let gzip_level = level(gzip_level, 9, d.gzip_level, "gzip_level");
        let brotli_level = level(brotli_level, 11, d.brotli_level, "brotli_level");
        let zstd_level = level(zstd_level, 19, d.zstd_level, "zstd_level");
        Some(CompressPolicy {
            algorithms: algs,
            min_size: min_size.as_ref().map_or(d.min_size, |s| s.get_ref().0),
            types: types.as_ref().map_or(d.types, |t| t.iter().map(|s| s.get_ref().trim().to_ascii_lowercase()).collect()),
            gzip_level,
            brotli_level,
            zstd_level,
        })
    }

    fn materialize(def: Option<&CompressPolicy>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.cloned())
    }

    fn summary(def: &CompressPolicy) -> String {
        let algs: Vec<&str> = def.algorithms.iter().map(|a| token(*a)).collect();
        format!("compress {} from {}", algs.join("/"), bytesize::ByteSize(def.min_size).display().iec())
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

/// The levels of the forms kept with stored bodies (gzip, brotli, zstd): each is made once per
/// entry and sent on every hit that asks for it, so they are higher than the streaming ones.
/// Measured on the benchmark's 20 KiB JSON body (identity 20,384 B): gzip 9 saves 2.5% over 6
/// for twelve times the work; brotli 5 is 1,323 B (level 2: 1,522 B) for the same 0.4 ms,
/// brotli 11 is 1,108 B for 18 ms; zstd 9 is 1,254 B (level 3: 1,723 B) in 0.17 ms, zstd 19
/// 1,204 B in 8.8 ms. On realistic traffic most entries are hit a few times: the cheap levels
/// that save the most bytes.
const STORED_LEVELS: [u32; 3] = [6, 5, 9];

/// Larger stored bodies are compressed per response, as responses that are not stored are: a
/// form is made on the thread serving the hit, and a megabyte at brotli 5 takes about 20 ms.
const MAX_FORM_BODY: usize = 1 << 20;

/// A stored body compressed whole at `level`.
fn encode_whole(alg: Algorithm, level: u32, body: &Body) -> Option<Body> {
    let mut stream = Stream::new(alg, level, Some(body.len() as u64))?;
    let mut out = BodyWriter::default();
    let (mut pos, len) = (0, body.len());
    loop {
        let chunk = body.chunk_at(pos, len);
        pos += chunk.len();
        let end = pos >= len;
        out.push(&stream.encode(&chunk, end).ok()?);
        if end {
            return Some(out.finish());
        }
    }
}

impl CompressPolicy {
    /// The compressed form of a stored body to send instead of compressing it again, when this
    /// response gets one: made the first time a client asks for it (then its encoding is
    /// returned beside it). `None` when the client gets no encoding, the response is not one to
    /// compress, or its body is too large.
    pub fn stored_form<'o>(&self, obj: &'o StoredObject, header: &ResponseHeader, st: &mut CompressScratch) -> (Option<&'o Body>, Option<&'static str>) {
        let Some((alg, i)) = st.chosen.and_then(|a| Some((a, slot(a)?))) else { return (None, None) };
        if st.head || obj.body.len() > MAX_FORM_BODY || !self.eligible(header) {
            return (None, None);
        }
        let (form, made) = obj.forms.get_or_make(i, || encode_whole(alg, STORED_LEVELS[i], &obj.body));
        if let Some(f) = form {
            st.precompressed = Some((obj.body.len(), f.len()));
        }
        (form, made.then(|| token(alg)))
    }

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
        // compared without a lower-cased copy: this runs on every response a client could get
        // compressed, cache hits included
        let starts = |ct: &str, prefix: &str| ct.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
        let type_ok = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            let ct = ct.trim();
            // An event stream must reach the client event by event, not when a compressor flushes.
            !starts(ct, "text/event-stream") && self.types.iter().any(|t| starts(ct, t))
        });
        let size_ok = match h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
            Some(len) => len >= self.min_size,
            None => true, // streamed: size unknown, compress
        };
        type_ok && size_ok
    }
}

/// The encoding chosen for this request's response, if any.
#[derive(Default)]
pub struct CompressScratch {
    chosen: Option<Algorithm>,
    head: bool,
    stream: Option<Stream>,
    /// Bytes into and out of our own encoder, for the outcome.
    sizes: Option<(usize, usize)>,
    /// The body sent is a stored form (`stored_form`): its identity and encoded lengths.
    precompressed: Option<(usize, usize)>,
}

impl std::fmt::Debug for CompressScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressScratch").field("chosen", &self.chosen).finish()
    }
}

/// What the response's fields become when the gateway encodes its body: the encoding; no
/// length but chunked framing (the body is streamed: without either, HTTP/1.1 frames it by
/// closing the connection); no `Accept-Ranges` (ranges of the encoded stream cannot be
/// served); `Vary`; and a weak validator (another byte representation of the same resource,
/// RFC 9110 8.8.1). As pingora's compression module does; HTTP/2 drops `Transfer-Encoding`.
/// `length`: the encoded body's, when it is known (a stored form): then it is sent with its
/// length, not chunked.
fn mark_encoded(resp: &mut ResponseHeader, coding: &'static str, length: Option<usize>) -> Result<(), GatewayError> {
    let fail = |e: pingora::BError| GatewayError::new(crate::problem::Problem::Internal, format!("compression headers: {e}"));
    resp.insert_header(CONTENT_ENCODING, coding).map_err(fail)?;
    resp.remove_header(&ACCEPT_RANGES);
    match length {
        Some(n) => resp.insert_header(CONTENT_LENGTH, n).map_err(fail)?,
        None => {
            resp.remove_header(&CONTENT_LENGTH);
            resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked")).map_err(fail)?;
        }
    }
    let varies = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding")))
    });
    if !varies {
        resp.append_header(VARY, "Accept-Encoding").map_err(fail)?;
    }
    if let Some(tag) = resp.headers.get(ETAG).map(|t| t.as_bytes().to_vec()) {
        if tag.starts_with(b"\"") {
            let weak = HeaderValue::from_bytes(&[b"W/", tag.as_slice()].concat()).map_err(|e| GatewayError::new(crate::problem::Problem::Internal, e.to_string()))?;
            resp.insert_header(ETAG, weak).map_err(fail)?;
        } else if !tag.starts_with(b"W/") {
            resp.remove_header(&ETAG);
        }
    }
    Ok(())
}

impl Policy for CompressPolicy {
    type Scratch = CompressScratch;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut CompressScratch, _d: &mut Directives) -> Flow {
        if let Some(alg) = self.choose(x.req.headers.get(ACCEPT_ENCODING)) {
            st.chosen = Some(alg);
            st.head = x.req.method == http::Method::HEAD;
        }
        Flow::Continue
    }

    fn on_upstream_request(&self, _x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut CompressScratch) -> Result<(), GatewayError> {
        // The gateway compresses one canonical form: ask the backend for identity.
        up.remove_header(&ACCEPT_ENCODING);
        Ok(())
    }

    async fn on_response(
        &self,
        _x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut CompressScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        // a stored form: `stored_form` found the response eligible, the body is already encoded
        if let (Some(alg), Some((identity, encoded))) = (st.chosen, st.precompressed) {
            st.sizes = Some((identity, encoded));
            return mark_encoded(resp, token(alg), Some(encoded));
        }
        let Some(alg) = st.chosen.filter(|_| self.eligible(resp)) else {
            st.chosen = None;
            return Ok(());
        };
        let size = resp.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !st.head {
            let stream = Stream::new(alg, self.level(alg), size);
            if stream.is_none() {
                st.chosen = None;
                return Ok(());
            }
            st.stream = stream;
        }
        mark_encoded(resp, token(alg), None)
    }

    fn on_response_body(&self, body: &mut Option<Bytes>, eos: bool, st: &mut CompressScratch) -> Result<(), Cut> {
        let Some(enc) = st.stream.as_mut() else { return Ok(()) };
        let data = body.as_deref().unwrap_or_default();
        match enc.encode(data, eos) {
            Ok(out) => *body = (!out.is_empty()).then(|| Bytes::from(out)),
            // nothing can be sent that the client could decode from here on
            Err(why) => return Err(Cut { code: "compression_failed", why }),
        }
        if eos {
            st.sizes = Some(enc.sizes());
            st.stream = None;
        }
        Ok(())
    }

    fn on_done(&self, st: &CompressScratch, out: &mut Outcome) {
        out.compression = st.chosen.map(token);
        if let Some(sizes) = st.sizes {
            out.compressed = Some(sizes);
        }
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
        assert_eq!(choose("gzip, br"), Some("br"));
        assert_eq!(choose("gzip, zstd"), Some("zstd"));
        assert_eq!(choose("gzip;q=1.0, zstd;q=0.5"), Some("gzip"));
        assert_eq!(choose("zstd;q=0, br;q=0.1, gzip;q=0.2"), Some("gzip"));
        assert_eq!(choose("br"), Some("br"));
        assert_eq!(choose("gzip, deflate, br"), Some("br"));
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
