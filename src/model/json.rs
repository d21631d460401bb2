//! A JSON text read once, front to back, without building a tree: what field selection
//! copies and what the cache reads entity identifiers from. Not a validator: a structure that
//! does not hold (unbalanced, truncated) is `NotJson`, and the caller leaves the body alone.

const fn table(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// The bytes a skip over a container stops at, and those that end a number or literal.
static STRUCTURAL: [bool; 256] = table(b"\"{}[]");
static DELIMITER: [bool; 256] = table(b",}] \t\n\r");

/// A JSON text read once, front to back: what is kept is copied as the backend wrote it, the
/// rest skipped without decoding. Not a validator: the backend said JSON; a structure that
/// does not hold (unbalanced, truncated) is an error and the body passes as it came.
pub struct Scan<'a> {
    pub b: &'a [u8],
    pub i: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub struct NotJson;

impl Scan<'_> {
    pub fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    pub fn peek(&self) -> Result<u8, NotJson> {
        self.b.get(self.i).copied().ok_or(NotJson)
    }

    /// At a `"`: moves past the closing one.
    pub fn string(&mut self) -> Result<(), NotJson> {
        self.i += 1;
        // most strings (member names, identifiers) are short: a plain look at the first bytes
        // costs less than setting up the vector search
        let end = self.b.len().min(self.i + 24);
        while self.i < end {
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => break,
                _ => self.i += 1,
            }
        }
        loop {
            let at = memchr::memchr2(b'"', b'\\', self.b.get(self.i..).ok_or(NotJson)?).ok_or(NotJson)?;
            self.i += at;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(());
            }
            self.i += 2;
        }
    }

    /// Moves past one value of any kind.
    pub fn skip(&mut self) -> Result<(), NotJson> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    // to the next byte that matters: a quote or a bracket
                    let rest = self.b.get(self.i..).ok_or(NotJson)?;
                    self.i += rest.iter().position(|c| STRUCTURAL[usize::from(*c)]).ok_or(NotJson)?;
                    match self.b[self.i] {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        _ => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                    }
                    self.i += 1;
                }
            }
            _ => {
                // a number or a literal: up to the next delimiter
                let rest = &self.b[self.i..];
                let n = rest.iter().position(|c| DELIMITER[usize::from(*c)]).unwrap_or(rest.len());
                self.i += n;
                if n == 0 { Err(NotJson) } else { Ok(()) }
            }
        }
    }
}

impl<'a> Scan<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Scan { b, i: 0 }
    }

    /// At a `"`: the member name, unquoted; decoded only when it holds an escape (rare).
    pub fn key(&mut self) -> Result<std::borrow::Cow<'a, [u8]>, NotJson> {
        let start = self.i;
        self.string()?;
        let b: &'a [u8] = self.b;
        let quoted = &b[start..self.i];
        let inner = &quoted[1..quoted.len() - 1];
        if !inner.contains(&b'\\') {
            return Ok(std::borrow::Cow::Borrowed(inner));
        }
        let decoded: String = serde_json::from_slice(quoted).map_err(|_| NotJson)?;
        Ok(std::borrow::Cow::Owned(decoded.into_bytes()))
    }

    /// A string's text or a number's digits; `None` for anything else (skipped).
    pub fn scalar(&mut self) -> Result<Option<std::borrow::Cow<'a, str>>, NotJson> {
        use std::borrow::Cow;
        self.ws();
        let start = self.i;
        let first = self.peek()?;
        self.skip()?;
        let b: &'a [u8] = self.b;
        let raw = &b[start..self.i];
        Ok(match first {
            b'"' if !raw.contains(&b'\\') => std::str::from_utf8(&raw[1..raw.len() - 1]).ok().map(Cow::Borrowed),
            b'"' => serde_json::from_slice::<String>(raw).ok().map(Cow::Owned),
            b'-' | b'0'..=b'9' => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
            _ => None,
        })
    }
}
