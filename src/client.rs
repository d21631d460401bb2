//! A bare blocking HTTP/1.1 GET over a plain socket, for the command line (`probe`, `init
//! --from-openapi`): the runtime image needs no curl, and the CLI no HTTP client stack.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("only http:// URLs are supported, not {0:?}")]
    Scheme(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not an HTTP response")]
    NotHttp(String),
}

/// `http://host:port/path` split into the address and the request target.
pub fn split_url(url: &str) -> Result<(&str, &str), GetError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| GetError::Scheme(url.to_string()))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// GETs `url`; the status and the body (de-chunked). `Connection: close`: the body ends with
/// the connection.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), GetError> {
    let (authority, path) = split_url(url)?;
    let io = |e: std::io::Error| GetError::Io(url.to_string(), e);
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let not_http = || GetError::NotHttp(url.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(not_http)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| not_http())?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(not_http)?;
    let body = &raw[end + 4..];
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    Ok((status, if chunked { dechunk(body).ok_or_else(not_http)? } else { body.to_vec() }))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_chunks() {
        assert_eq!(split_url("http://127.0.0.1:8000/openapi.json").unwrap(), ("127.0.0.1:8000", "/openapi.json"));
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/"));
        assert!(split_url("https://h/").is_err());
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"5\r\nab").is_none());
    }
}
