//! Response compression policy: which algorithm a client gets (by `Accept-Encoding` q-values,
//! ties broken by the route's order), and which responses are worth compressing (content type,
//! size, not already encoded). Every encoding is done here, not by pingora's compression
//! module: gzip and zstd on states kept per thread (the module allocates and initializes a new
//! one per response), brotli because pingora 0.9.1's brotli stream is never finished
//! (cloudflare/pingora#1013) and strict decoders reject such a body.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{Cut, Directives, Exchange, Flow, Policy};
use bytes::Bytes;
use crate::problem::GatewayError;
use crate::telemetry::outcome::Outcome;
use http::header::{HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY};
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

/// brotli's window: 256 KiB (lgwin 18) rather than the format's 4 MiB default, so an encoder
/// costs under a megabyte per response in flight; API bodies gain next to nothing from more.
const BROTLI_WINDOW_BITS: u32 = 18;

/// A brotli stream over one response body: each chunk is flushed as it comes (a streamed
/// response must not wait for the next), the last one finishes the stream.
struct BrotliStream {
    /// `None` once the stream is finished.
    w: Option<brotli::CompressorWriter<Vec<u8>>>,
    bytes_in: usize,
    bytes_out: usize,
}

impl BrotliStream {
    /// `size`: the body's length when the response declared it. The window is then cut to the
    /// body (the encoder's ring buffer scales with it: a 20 KiB body needs a 32 KiB window, not
    /// 256 KiB). brotli's `size_hint` is left out: measured, it made level 5 five times slower.
    fn new(level: u32, size: Option<u64>) -> Self {
        let window = size.map_or(BROTLI_WINDOW_BITS, |n| (64 - n.max(1).saturating_sub(1).leading_zeros()).clamp(10, BROTLI_WINDOW_BITS));
        let params = brotli::enc::BrotliEncoderParams { quality: level as i32, lgwin: window as i32, ..Default::default() };
        let w = brotli::CompressorWriter::with_params(Vec::new(), 4096, &params);
        BrotliStream { w: Some(w), bytes_in: 0, bytes_out: 0 }
    }

    fn encode(&mut self, data: &[u8], end: bool) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        let Some(w) = self.w.as_mut() else { return Ok(Vec::new()) };
        self.bytes_in += data.len();
        w.write_all(data)?;
        let out = match end {
            // finishing is what into_inner does
            true => self.w.take().map(brotli::CompressorWriter::into_inner).unwrap_or_default(),
            false => {
                w.flush()?;
                std::mem::take(w.get_mut())
            }
        };
        self.bytes_out += out.len();
        Ok(out)
    }
}

/// Compressor states kept per thread, by level, for the next response: pingora's module
/// allocates and initializes one per response (a zlib-ng state is about 270 KiB with a 64 KiB
/// table zeroed at birth; a zstd context sizes its tables anew). A kept one is only reset.
/// The pool fills only with responses compressed at the same time on one thread (a body that
/// arrives whole takes a state and gives it back within one poll), and is bounded in bytes:
/// a zstd context is 1.3 MiB at level 1, 3.5 MiB at level 3 and 90 MiB at level 19 (measured
/// with `ZSTD_sizeof_CCtx`); one over the budget is freed after its response, as before.
const KEEP_BYTES: usize = 8 << 20;

/// Idle states of one kind: (level, bytes, state).
type Kept<T> = std::cell::RefCell<Vec<(u32, usize, T)>>;

thread_local! {
    static GZIP_STATES: Kept<Gzip> = const { std::cell::RefCell::new(Vec::new()) };
    static ZSTD_STATES: Kept<Zstd> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How much of its input a compressor step must push out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Nothing: the compressor may hold input back (a body of known length, until its end).
    No,
    /// All of it, the stream kept open (each chunk of a streamed body).
    Chunk,
    /// All of it, and the stream's end.
    End,
}

/// A compressor whose state can be kept between responses.
trait Codec: Sized + 'static {
    const NAME: &'static str;
    fn pool() -> &'static std::thread::LocalKey<Kept<Self>>;
    fn create(level: u32) -> Option<Self>;
    /// Back to the start of a stream, ready for the next response; its size in bytes, `None`
    /// when it cannot be reused.
    fn reset(&mut self) -> Option<usize>;
    /// Compresses `data`, appending to `out` (grown as needed).
    fn step(&mut self, data: &[u8], out: &mut Vec<u8>, flush: Flush) -> Result<(), ()>;
}

/// zlib-ng's deflate state, in a gzip wrapper.
struct Gzip(Box<flate2::Compress>);

impl Codec for Gzip {
    const NAME: &'static str = "the gzip encoder failed";

    fn pool() -> &'static std::thread::LocalKey<Kept<Self>> {
        &GZIP_STATES
    }

    fn create(level: u32) -> Option<Self> {
        // 15: the format's 32 KiB window, as pingora's and nginx's gzip
        Some(Gzip(Box::new(flate2::Compress::new_gzip(flate2::Compression::new(level), 15))))
    }

    fn reset(&mut self) -> Option<usize> {
        self.0.reset();
        // flate2 does not say: zlib-ng's state with the 32 KiB window
        Some(270 << 10)
    }

    fn step(&mut self, mut data: &[u8], out: &mut Vec<u8>, flush: Flush) -> Result<(), ()> {
        use flate2::{FlushCompress, Status};
        let mode = match flush {
            Flush::No => FlushCompress::None,
            Flush::Chunk => FlushCompress::Sync,
            Flush::End => FlushCompress::Finish,
        };
        loop {
            let before = self.0.total_in();
            let status = self.0.compress_vec(data, out, mode).map_err(|_| ())?;
            data = &data[(self.0.total_in() - before) as usize..];
            let room_left = out.len() < out.capacity();
            match status {
                Status::StreamEnd => return Ok(()),
                // all input taken and, for a flush, all output written
                _ if data.is_empty() && room_left && flush != Flush::End => return Ok(()),
                _ if !room_left => out.reserve(out.capacity().max(256)),
                _ => {}
            }
        }
    }
}

/// A zstd compression context.
struct Zstd(zstd::zstd_safe::CCtx<'static>);

impl Codec for Zstd {
    const NAME: &'static str = "the zstd encoder failed";

    fn pool() -> &'static std::thread::LocalKey<Kept<Self>> {
        &ZSTD_STATES
    }

    fn create(level: u32) -> Option<Self> {
        let mut c = zstd::zstd_safe::CCtx::try_create()?;
        c.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level as i32)).ok()?;
        Some(Zstd(c))
    }

    fn reset(&mut self) -> Option<usize> {
        // a frame cut short is dropped; the parameters (the level) stay
        self.0.reset(zstd::zstd_safe::ResetDirective::SessionOnly).ok()?;
        Some(self.0.sizeof())
    }

    fn step(&mut self, data: &[u8], out: &mut Vec<u8>, flush: Flush) -> Result<(), ()> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
        let op = match flush {
            Flush::No => ZSTD_EndDirective::ZSTD_e_continue,
            Flush::Chunk => ZSTD_EndDirective::ZSTD_e_flush,
            Flush::End => ZSTD_EndDirective::ZSTD_e_end,
        };
        let mut input = zstd::zstd_safe::InBuffer::around(data);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            let pos = out.len();
            let mut ob = zstd::zstd_safe::OutBuffer::around_pos(out, pos);
            // for a flush or the end: what is left to write out; 0 when done
            let left = self.0.compress_stream2(&mut ob, &mut input, op).map_err(|_| ())?;
            if input.pos() == data.len() && (flush == Flush::No || left == 0) {
                return Ok(());
            }
        }
    }
}

/// One response body through a kept compressor state. A body of unknown length (streamed) is
/// flushed chunk by chunk, so a client sees each part as the backend sends it; one of known
/// length only at its end (zstd then writes one frame that declares its size).
struct Pooled<C: Codec> {
    /// `None` once the stream is finished (the state is back in the pool).
    c: Option<C>,
    level: u32,
    flush_chunks: bool,
    bytes_in: usize,
    bytes_out: usize,
}

impl<C: Codec> Pooled<C> {
    fn new(level: u32, size: Option<u64>) -> Option<Self> {
        let kept = C::pool().with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|(l, _, _)| *l == level)?;
            Some(p.swap_remove(i).2)
        });
        let c = kept.or_else(|| C::create(level))?;
        Some(Pooled { c: Some(c), level, flush_chunks: size.is_none(), bytes_in: 0, bytes_out: 0 })
    }

    fn encode(&mut self, data: &[u8], end: bool) -> Result<Vec<u8>, &'static str> {
        let Some(c) = self.c.as_mut() else { return Ok(Vec::new()) };
        self.bytes_in += data.len();
        let flush = match (end, self.flush_chunks) {
            (true, _) => Flush::End,
            (false, true) => Flush::Chunk,
            (false, false) => Flush::No,
        };
        // JSON compresses about 10x: a quarter of the input is room enough for one pass
        let mut out = Vec::with_capacity(data.len() / 4 + 64);
        c.step(data, &mut out, flush).map_err(|()| C::NAME)?;
        if end {
            self.give_back();
        }
        self.bytes_out += out.len();
        Ok(out)
    }

    /// Keeps the state (reset) unless the kind's idle states would pass `KEEP_BYTES`.
    fn give_back(&mut self) {
        let Some(mut c) = self.c.take() else { return };
        let Some(bytes) = c.reset() else { return };
        C::pool().with(|p| {
            let mut p = p.borrow_mut();
            if p.iter().map(|(_, b, _)| b).sum::<usize>() + bytes <= KEEP_BYTES {
                p.push((self.level, bytes, c));
            }
        });
    }
}

impl<C: Codec> Drop for Pooled<C> {
    /// A response cut short still gives its state back.
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The gateway's own encoder of one response body.
enum Stream {
    /// Boxed: a brotli encoder is about 5.6 KiB.
    Brotli(Box<BrotliStream>),
    Gzip(Pooled<Gzip>),
    Zstd(Pooled<Zstd>),
}

impl Stream {
    fn encode(&mut self, data: &[u8], end: bool) -> Result<Vec<u8>, &'static str> {
        match self {
            Stream::Brotli(b) => b.encode(data, end).map_err(|_| "the brotli encoder failed"),
            Stream::Gzip(g) => g.encode(data, end),
            Stream::Zstd(z) => z.encode(data, end),
        }
    }

    fn sizes(&self) -> (usize, usize) {
        match self {
            Stream::Brotli(b) => (b.bytes_in, b.bytes_out),
            Stream::Gzip(g) => (g.bytes_in, g.bytes_out),
            Stream::Zstd(z) => (z.bytes_in, z.bytes_out),
        }
    }
}

/// The encoding chosen for this request's response, if any.
#[derive(Default)]
pub struct CompressState {
    chosen: Option<Algorithm>,
    head: bool,
    stream: Option<Stream>,
    /// Bytes into and out of our own encoder, for the outcome.
    sizes: Option<(usize, usize)>,
}

impl std::fmt::Debug for CompressState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressState").field("chosen", &self.chosen).finish()
    }
}

/// What the response's fields become when the gateway encodes its body: the encoding; no
/// length but chunked framing (the body is streamed: without either, HTTP/1.1 frames it by
/// closing the connection); no `Accept-Ranges` (ranges of the encoded stream cannot be
/// served); `Vary`; and a weak validator (another byte representation of the same resource,
/// RFC 9110 8.8.1). As pingora's compression module does; HTTP/2 drops `Transfer-Encoding`.
fn mark_encoded(resp: &mut ResponseHeader, coding: &'static str) -> Result<(), GatewayError> {
    let fail = |e: pingora::BError| GatewayError::new(crate::problem::Problem::Internal, format!("compression headers: {e}"));
    resp.insert_header(CONTENT_ENCODING, coding).map_err(fail)?;
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked")).map_err(fail)?;
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
    type State = CompressState;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut CompressState, _d: &mut Directives) -> Flow {
        if let Some(alg) = self.choose(x.req.headers.get(ACCEPT_ENCODING)) {
            st.chosen = Some(alg);
            st.head = x.req.method == http::Method::HEAD;
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
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        let Some(alg) = st.chosen.filter(|_| self.eligible(resp)) else {
            st.chosen = None;
            return Ok(());
        };
        let size = resp.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !st.head {
            let stream = match alg {
                Algorithm::Brotli => Some(Stream::Brotli(Box::new(BrotliStream::new(self.brotli_level, size)))),
                // no state (out of memory): this response goes out as it is
                Algorithm::Gzip => Pooled::new(self.gzip_level, size).map(Stream::Gzip),
                Algorithm::Zstd => Pooled::new(self.zstd_level, size).map(Stream::Zstd),
                _ => None,
            };
            if stream.is_none() {
                st.chosen = None;
                return Ok(());
            }
            st.stream = stream;
        }
        mark_encoded(resp, token(alg))
    }

    fn on_response_body(&self, body: &mut Option<Bytes>, eos: bool, st: &mut CompressState) -> Result<(), Cut> {
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

    fn on_done(&self, st: &CompressState, out: &mut Outcome) {
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
    fn brotli_streams_finish_and_decode_to_the_identity_body() {
        let pattern = b"{\"id\": 1, \"name\": \"item\"}, ";
        let body: Vec<u8> = (0..20_000).map(|i| pattern[i % pattern.len()]).collect();
        let mut enc = BrotliStream::new(4, None);
        let mut out = Vec::new();
        for (i, chunk) in body.chunks(6000).enumerate() {
            out.extend(enc.encode(chunk, false).unwrap());
            assert!(!out.is_empty(), "chunk {i} was flushed");
        }
        out.extend(enc.encode(&[], true).unwrap());
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut brotli::Decompressor::new(out.as_slice(), 4096), &mut decoded).unwrap();
        assert_eq!(decoded, body);
        assert!(out.len() < body.len() / 10);
        // a declared size picks a smaller window: the same bytes come back
        let mut enc = BrotliStream::new(4, Some(body.len() as u64));
        let out = enc.encode(&body, true).unwrap();
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut brotli::Decompressor::new(out.as_slice(), 4096), &mut decoded).unwrap();
        assert_eq!(decoded, body);
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut decoded).unwrap();
        decoded
    }

    #[test]
    fn gzip_streams_decode_and_reuse_their_state() {
        let pattern = b"{\"id\": 1, \"name\": \"item\"}, ";
        let body: Vec<u8> = (0..50_000).map(|i| pattern[i % pattern.len()]).collect();
        for round in 0..3 {
            // unknown length: every chunk flushed, so a streamed part reaches the client
            let mut enc = Pooled::<Gzip>::new(2, None).unwrap();
            let mut out = Vec::new();
            for (i, chunk) in body.chunks(7000).enumerate() {
                let part = enc.encode(chunk, false).unwrap();
                assert!(!part.is_empty(), "round {round}: chunk {i} was flushed");
                out.extend(part);
            }
            out.extend(enc.encode(&[], true).unwrap());
            assert_eq!(gunzip(&out), body, "round {round}");
            assert_eq!((enc.bytes_in, enc.bytes_out), (body.len(), out.len()));
            // known length: one stream, finished at the end
            let mut enc = Pooled::<Gzip>::new(2, Some(body.len() as u64)).unwrap();
            let mut out = enc.encode(&body[..20_000], false).unwrap();
            out.extend(enc.encode(&body[20_000..], true).unwrap());
            assert_eq!(gunzip(&out), body);
            assert!(out.len() < body.len() / 20);
        }
        // one after another, the streams shared one state; two at once take two
        let kept = || GZIP_STATES.with(|p| p.borrow().iter().filter(|(l, _, _)| *l == 2).count());
        assert_eq!(kept(), 1);
        let (mut a, mut b) = (Pooled::<Gzip>::new(2, None).unwrap(), Pooled::<Gzip>::new(2, None).unwrap());
        assert_eq!(kept(), 0);
        assert_eq!(gunzip(&a.encode(&body, true).unwrap()), body);
        assert_eq!(gunzip(&b.encode(&body, true).unwrap()), body);
        assert_eq!(kept(), 2);
        // a stream cut short (client gone) resets its state for the next response
        let mut cut = Pooled::<Gzip>::new(2, None).unwrap();
        cut.encode(&body[..1000], false).unwrap();
        drop(cut);
        let mut enc = Pooled::<Gzip>::new(2, None).unwrap();
        assert_eq!(gunzip(&enc.encode(&body, true).unwrap()), body);
    }

    #[test]
    fn zstd_frames_decode_and_reuse_their_context() {
        let pattern = b"{\"id\": 1, \"name\": \"item\"}, ";
        let body: Vec<u8> = (0..50_000).map(|i| pattern[i % pattern.len()]).collect();
        let kept = || ZSTD_STATES.with(|p| p.borrow().iter().filter(|(l, _, _)| *l == 3).count());
        for round in 0..3 {
            let mut enc = Pooled::<Zstd>::new(3, None).unwrap();
            let mut out = Vec::new();
            for (i, chunk) in body.chunks(7000).enumerate() {
                let part = enc.encode(chunk, false).unwrap();
                assert!(!part.is_empty(), "round {round}: chunk {i} was flushed");
                out.extend(part);
            }
            out.extend(enc.encode(&[], true).unwrap());
            assert_eq!(zstd::decode_all(out.as_slice()).unwrap(), body, "round {round}");
            assert_eq!((enc.bytes_in, enc.bytes_out), (body.len(), out.len()));
            let mut enc = Pooled::<Zstd>::new(3, Some(body.len() as u64)).unwrap();
            let mut out = enc.encode(&body[..20_000], false).unwrap();
            out.extend(enc.encode(&body[20_000..], true).unwrap());
            assert_eq!(zstd::decode_all(out.as_slice()).unwrap(), body);
            assert!(out.len() < body.len() / 20);
        }
        assert_eq!(kept(), 1, "one after another, the frames shared one context");
        // a context over the budget (level 19: about 90 MiB) is freed after its frame
        let mut big = Pooled::<Zstd>::new(19, None).unwrap();
        let mut out = big.encode(&body, false).unwrap();
        out.extend(big.encode(&[], true).unwrap());
        assert_eq!(zstd::decode_all(out.as_slice()).unwrap(), body);
        assert_eq!(ZSTD_STATES.with(|p| p.borrow().iter().filter(|(l, _, _)| *l == 19).count()), 0);
        // a frame cut short leaves a context that starts the next frame clean
        let mut cut = Pooled::<Zstd>::new(3, None).unwrap();
        cut.encode(&body[..1000], false).unwrap();
        drop(cut);
        let mut enc = Pooled::<Zstd>::new(3, None).unwrap();
        assert_eq!(zstd::decode_all(enc.encode(&body, true).unwrap().as_slice()).unwrap(), body);
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
