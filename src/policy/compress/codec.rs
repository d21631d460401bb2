//! The gateway's own encoders of response bodies: brotli (pingora 0.9.1's stream is never
//! finished, cloudflare/pingora#1013), and gzip and zstd on compressor states kept per thread
//! and reused between responses (pingora's module allocates and initializes one per response).

use pingora::protocols::http::compression::Algorithm;

/// brotli's window: 256 KiB (lgwin 18) rather than the format's 4 MiB default, so an encoder
/// costs under a megabyte per response in flight; API bodies gain next to nothing from more.
const BROTLI_WINDOW_BITS: u32 = 18;

/// A brotli stream over one response body: each chunk is flushed as it comes (a streamed
/// response must not wait for the next), the last one finishes the stream.
pub(super) struct BrotliStream {
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

/// One of the encoders.
enum Inner {
    /// Boxed: a brotli encoder is about 5.6 KiB.
    Brotli(Box<BrotliStream>),
    Gzip(Pooled<Gzip>),
    Zstd(Pooled<Zstd>),
}

/// The gateway's own encoder of one response body.
pub(super) struct Stream(Inner);

impl Stream {
    /// An encoder for `alg` at `level` over a body of `size` bytes (when known); `None` for an
    /// algorithm it does not make, or when no state could be had (out of memory): that
    /// response goes out as it is.
    pub(super) fn new(alg: Algorithm, level: u32, size: Option<u64>) -> Option<Stream> {
        match alg {
            Algorithm::Brotli => Some(Stream(Inner::Brotli(Box::new(BrotliStream::new(level, size))))),
            Algorithm::Gzip => Pooled::new(level, size).map(|p| Stream(Inner::Gzip(p))),
            Algorithm::Zstd => Pooled::new(level, size).map(|p| Stream(Inner::Zstd(p))),
            _ => None,
        }
    }

    pub(super) fn encode(&mut self, data: &[u8], end: bool) -> Result<Vec<u8>, &'static str> {
        match &mut self.0 {
            Inner::Brotli(b) => b.encode(data, end).map_err(|_| "the brotli encoder failed"),
            Inner::Gzip(g) => g.encode(data, end),
            Inner::Zstd(z) => z.encode(data, end),
        }
    }

    pub(super) fn sizes(&self) -> (usize, usize) {
        match &self.0 {
            Inner::Brotli(b) => (b.bytes_in, b.bytes_out),
            Inner::Gzip(g) => (g.bytes_in, g.bytes_out),
            Inner::Zstd(z) => (z.bytes_in, z.bytes_out),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
}
