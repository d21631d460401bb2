//! What the body-rewriting policies (field selection, error normalization) share: the
//! response's media type and length from its header, and a body gathered whole while the
//! stream is held back, to be rewritten at its end.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use pingora::http::ResponseHeader;

/// The media type, lower case, without parameters (`application/json`).
pub fn media_type(resp: &ResponseHeader) -> Option<String> {
    let v = resp.headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
}

pub fn content_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// A body being gathered: nothing goes to the client until the end, or until it grows past
/// `limit` (then what was gathered and the rest go as they came).
#[derive(Debug, Default)]
pub struct Gather {
    on: bool,
    buf: BytesMut,
    /// The header's `Content-Length`: the buffer is allocated once.
    expected: usize,
    limit: usize,
}

/// What `Gather::push` did with a chunk.
pub enum Gathered {
    /// Not gathering (never started, or given up): the chunk went on untouched.
    Passing,
    /// Held back; more to come.
    Held,
    /// The whole body, at its end: the caller sets what goes out.
    Whole(Bytes),
}

impl Gather {
    pub fn start(&mut self, expected: Option<u64>, limit: usize) {
        self.on = true;
        self.expected = expected.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)).min(limit);
        self.limit = limit;
    }

    /// Takes `body`'s chunk into the buffer (leaving `None` in the stream) while gathering.
    pub fn push(&mut self, body: &mut Option<Bytes>, eos: bool) -> Gathered {
        if !self.on {
            return Gathered::Passing;
        }
        if let Some(chunk) = body.take() {
            if self.buf.capacity() == 0 {
                self.buf.reserve(self.expected.max(chunk.len()));
            }
            self.buf.extend_from_slice(&chunk);
        }
        if self.buf.len() > self.limit {
            // longer than its header said, or it said nothing: the rest passes as it comes
            self.on = false;
            *body = Some(std::mem::take(&mut self.buf).freeze());
            return Gathered::Passing;
        }
        if !eos {
            return Gathered::Held;
        }
        self.on = false;
        Gathered::Whole(std::mem::take(&mut self.buf).freeze())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_the_end_and_gives_up_past_the_limit() {
        let mut g = Gather::default();
        let mut chunk = Some(Bytes::from_static(b"abc"));
        assert!(matches!(g.push(&mut chunk, false), Gathered::Passing) && chunk.is_some(), "not started");
        g.start(Some(6), 8);
        assert!(matches!(g.push(&mut chunk, false), Gathered::Held) && chunk.is_none());
        let mut last = Some(Bytes::from_static(b"def"));
        assert!(matches!(g.push(&mut last, true), Gathered::Whole(b) if b == "abcdef"));
        let mut g = Gather::default();
        g.start(None, 4);
        let mut big = Some(Bytes::from_static(b"abcdef"));
        assert!(matches!(g.push(&mut big, false), Gathered::Passing));
        assert_eq!(big.unwrap(), "abcdef", "what was held goes on");
        let mut rest = Some(Bytes::from_static(b"g"));
        assert!(matches!(g.push(&mut rest, true), Gathered::Passing) && rest.unwrap() == "g");
    }
}
