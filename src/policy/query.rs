//! Reading and editing a request's query string, for the policies that act on a parameter
//! (pagination caps, field selection). Values are compared as sent (percent-encoded); the
//! parameters these policies read are numbers and field lists, which need no decoding.

use http::Uri;
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
}
