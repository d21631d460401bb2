//! Path normalization, so that a request cannot dodge a route's policy by spelling its path
//! differently: `/api/./market`, `/api//market`, `/api/%6Darket` and `/x/../api/market` all
//! match (and are forwarded as) `/api/market`.
//!
//! Steps, in order: percent-decode unreserved characters (RFC 3986 2.3) and upper-case the hex
//! of the escapes kept; fold runs of `/`; remove dot segments (RFC 3986 5.2.4). Reserved escapes
//! such as `%2F` stay encoded: decoding them would change which segments the backend sees.

use std::borrow::Cow;

/// Why a path cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (`/...`): e.g. `*` or an absolute URI.
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` under `encoded_slash = "reject"`.
    EncodedSlash,
    /// Escaped bytes that are not UTF-8: an overlong form (`%C0%AE` for `.`, `%C0%AF` for
    /// `/`), a surrogate or a stray continuation byte. A backend that decodes them leniently
    /// would see another path than the one routed; no client has a reason to send them.
    BadUtf8,
}

/// What an encoded `/` (`%2F`) or `\` (`%5C`) in a path does (`[server] encoded_slash`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EncodedSlash {
    /// 400: a backend or middleware that decodes it before resolving dot segments would reach
    /// another path than the one routed (`/api/..%2fadmin`).
    #[default]
    Reject,
    /// Decoded to `/` before dot segments are resolved: routed as the backend will see it.
    Decode,
    /// Kept encoded (upper-cased), as an opaque part of its segment.
    Keep,
}

/// The normalized form of `path` (without query). Borrows when nothing changes, which is the
/// common case, so the hot path does not allocate.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_with(path, EncodedSlash::Keep)
}

/// `normalize` with a choice for encoded slashes: what the proxy routes requests with.
pub fn normalize_with(path: &str, slash: EncodedSlash) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, slash)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn is_normal(path: &str) -> bool {
    !path.contains('%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..")
}

/// Decodes unreserved escapes and checks that each run of escaped non-ASCII bytes
/// (`%E2%82%AC`) is UTF-8 (those stay escaped).
fn decode_unreserved(path: &str, slash: EncodedSlash) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // the current run of escaped bytes >= 0x80, checked when it ends
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hi = (hex[0] as char).to_digit(16).ok_or(PathError::BadEscape)?;
            let lo = (hex[1] as char).to_digit(16).ok_or(PathError::BadEscape)?;
            let byte = (hi * 16 + lo) as u8;
            if byte >= 0x80 {
                run.push(byte);
            } else {
                end_run(&mut run)?;
            }
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                out.push(byte as char);
            } else if matches!(byte, b'/' | b'\\') && slash == EncodedSlash::Reject {
                return Err(PathError::EncodedSlash);
            } else if matches!(byte, b'/' | b'\\') && slash == EncodedSlash::Decode {
                out.push('/');
            } else {
                out.push('%');
                out.push(hex[0].to_ascii_uppercase() as char);
                out.push(hex[1].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            end_run(&mut run)?;
            // path is &str, so copying whole UTF-8 sequences byte by byte stays valid
            let ch_len = utf8_len(b[i]);
            out.push_str(&path[i..i + ch_len]);
            i += ch_len;
        }
    }
    end_run(&mut run)?;
    Ok(out)
}

/// An overlong form (`%C0%AE` for `.`), a surrogate or a stray continuation byte: a lenient
/// decoder in the backend would see another path than the one routed.
fn end_run(run: &mut Vec<u8>) -> Result<(), PathError> {
    if !run.is_empty() {
        std::str::from_utf8(run).map_err(|_| PathError::BadUtf8)?;
        run.clear();
    }
    Ok(())
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// RFC 3986 5.2.4 over segments, with empty segments folded. A trailing slash is kept.
fn remove_dot_segments(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "" => trailing_slash = last,
            "." => trailing_slash = last,
            ".." => {
                stack.pop();
                trailing_slash = last;
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in ["/", "/api/market", "/api/market/", "/a.b/c..d/.e"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn escaped_bytes_must_be_utf8() {
        assert_eq!(n("/caf%C3%A9/%E2%82%AC"), "/caf%C3%A9/%E2%82%AC");
        for bad in ["/a/%C0%AE%C0%AE/admin", "/a%C0%AFadmin", "/%ED%A0%80", "/%80", "/%E2%82"] {
            assert_eq!(normalize(bad), Err(PathError::BadUtf8), "{bad}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/api/../admin"), "/admin");
        assert_eq!(n("/api/./market"), "/api/market");
        assert_eq!(n("/api//market"), "/api/market");
        assert_eq!(n("//api///market//"), "/api/market/");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn percent_decoding_of_unreserved_only() {
        assert_eq!(n("/api/%6darket"), "/api/market");
        assert_eq!(n("/api/%2e%2e/admin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/caf%C3%A9"), "/caf%C3%A9");
        assert_eq!(n("/héllo//x"), "/héllo/x");
        assert_eq!(normalize("/bad%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/bad%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("*"), Err(PathError::NotOriginForm));
    }

    #[test]
    fn encoded_slashes_rejected_decoded_or_kept() {
        let with = |p, s| normalize_with(p, s).map(Cow::into_owned);
        assert_eq!(with("/api/..%2fadmin", EncodedSlash::Reject), Err(PathError::EncodedSlash));
        assert_eq!(with("/api/..%5Cadmin", EncodedSlash::Reject), Err(PathError::EncodedSlash));
        // decoded before dot segments: routed as a decoding backend resolves it
        assert_eq!(with("/api/..%2fadmin", EncodedSlash::Decode).unwrap(), "/admin");
        assert_eq!(with("/a%5cb", EncodedSlash::Decode).unwrap(), "/a/b");
        assert_eq!(with("/api/..%2fadmin", EncodedSlash::Keep).unwrap(), "/api/..%2Fadmin");
        assert_eq!(with("/api/%6darket", EncodedSlash::Reject).unwrap(), "/api/market");
    }
}
