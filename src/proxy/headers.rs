//! Header rules for forwarding: hop-by-hop removal (RFC 9110 7.6.1), `X-Forwarded-*`, and
//! request ids.

use http::header::{HeaderMap, HeaderName, CONNECTION};

/// Hop-by-hop headers that never cross the gateway (`Upgrade` is handled separately).
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

/// Names listed in `Connection` plus the fixed hop-by-hop set, to remove before forwarding.
/// On an upgrade, `Connection: upgrade` and `Upgrade` are kept so the handshake can pass.
pub fn hop_by_hop(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(CONNECTION) {
        let Ok(v) = value.to_str() else { continue };
        for token in v.split(',') {
            let token = token.trim();
            if token.is_empty() || (upgrade && token.eq_ignore_ascii_case("upgrade")) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                names.push(name);
            }
        }
    }
    for h in HOP_BY_HOP {
        if headers.contains_key(*h) {
            names.push(HeaderName::from_static(h));
        }
    }
    if !upgrade {
        if headers.contains_key(http::header::UPGRADE) {
            names.push(http::header::UPGRADE);
        }
        if headers.contains_key(CONNECTION) {
            names.push(CONNECTION);
        }
    }
    names
}

/// An incoming request id is kept when it is short and made of safe characters; otherwise the
/// gateway makes its own (log injection and header smuggling stop here).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        let names = hop_by_hop(&h, false);
        for n in ["x-secret", "keep-alive", "te", "connection"] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
    }

    #[test]
    fn upgrade_survives_on_upgrade_requests() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "Upgrade".parse().unwrap());
        h.insert(http::header::UPGRADE, "websocket".parse().unwrap());
        assert!(hop_by_hop(&h, true).is_empty());
        let plain = hop_by_hop(&h, false);
        assert!(plain.contains(&http::header::UPGRADE) && plain.contains(&CONNECTION));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert_eq!(new_request_id().len(), 36);
    }
}
