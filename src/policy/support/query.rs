//! Reading and editing a request's query string, for the policies that act on a parameter
//! (pagination caps, field selection). Values are compared as sent (percent-encoded); the
//! parameters these policies read are numbers and field lists, which need no decoding.

use http::Uri;
use std::borrow::Cow;
use pingora::http::RequestHeader;

/// The value of the last `name=` in `query`: a backend (Starlette) reads the last one too.
pub fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .rsplit('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
}

/// `%XX` escapes decoded (and `+` as a space when `plus`), as Starlette decodes query strings
/// (`parse_qsl`) and path parameters; invalid UTF-8 is replaced, a malformed escape kept as is.
pub fn decode(s: &str, plus: bool) -> Cow<'_, str> {
    if !(s.contains('%') || plus && s.contains('+')) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else if plus && b[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The value of parameter `name` as the backend reads it: names and values decoded, the last
/// occurrence winning (Starlette's `QueryParams`). A client cannot be two keys by spelling.
pub fn param_decoded<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.rsplit('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k, true) == name).then(|| decode(v, true))
    })
}

/// `query` with every `name=` removed and, when `value` is given, one `name=value` appended.
pub fn with_param(query: Option<&str>, name: &str, value: Option<&str>) -> String {
    let mut out = String::with_capacity(query.map_or(0, str::len) + name.len() + 8);
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        if kv.split_once('=').map_or(kv, |(k, _)| k) != name {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(kv);
        }
    }
    if let Some(v) = value {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Sets (or with `None` removes) parameter `name` on the request going upstream.
pub fn set_param(up: &mut RequestHeader, name: &str, value: Option<&str>) -> Result<(), http::Error> {
    let query = with_param(up.uri.query(), name, value);
    let path = up.uri.path();
    let uri = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    up.set_uri(Uri::try_from(uri)?);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn read_and_edit() {
        assert_eq!(param(Some("a=1&limit=5&limit=7"), "limit"), Some("7"));
        assert_eq!(param(Some("limits=5"), "limit"), None);
        assert_eq!(param(Some("limit"), "limit"), Some(""));
        assert_eq!(param(None, "limit"), None);
        assert_eq!(with_param(Some("a=1&limit=500&b=2"), "limit", Some("200")), "a=1&b=2&limit=200");
        assert_eq!(with_param(None, "limit", Some("50")), "limit=50");
        assert_eq!(with_param(Some("fields=id,name"), "fields", None), "");
        let mut up = RequestHeader::build("GET", b"/api/items?fields=id&x=1", None).unwrap();
        set_param(&mut up, "fields", None).unwrap();
        assert_eq!(up.uri.to_string(), "/api/items?x=1");
        set_param(&mut up, "x", None).unwrap();
        assert_eq!(up.uri.to_string(), "/api/items");
    }

    #[test]
    fn decoded_as_the_backend_reads_them() {
        for q in ["api_key=abc", "api_key=%61bc", "api_key=a%62c", "api%5Fkey=abc", "api_key=x&api_key=abc"] {
            assert_eq!(param_decoded(Some(q), "api_key").as_deref(), Some("abc"), "{q}");
        }
        assert_eq!(decode("a+b%20c", true), "a b c");
        assert_eq!(decode("a+b", false), "a+b");
        assert_eq!(decode("100%", true), "100%");
        assert_eq!(decode("%zz%4", true), "%zz%4");
        assert_eq!(decode("%C3%A9", false), "é");
        assert_eq!(decode("%FF", false), "\u{FFFD}");
    }
}
