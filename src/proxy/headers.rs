//! Header rules for forwarding: hop-by-hop removal (RFC 9110 7.6.1), `X-Forwarded-*`, and
//! request ids.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};
use std::cell::RefCell;
use std::net::IpAddr;

/// Hop-by-hop headers that never cross the gateway (`Connection` and `Upgrade` are handled
/// separately, for upgrades).
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
];

/// Names listed in `Connection` plus the fixed hop-by-hop set, to remove from a response before
/// it is forwarded. On an upgrade, `Connection: upgrade` and `Upgrade` are kept so the handshake
/// can pass. (Requests need none of this here: pingora's standard upstream request policy strips
/// the same set, `Connection`-nominated fields included, before `upstream_request_filter`.)
///
/// One pass over the names present, comparing against prebuilt names: this runs for every
/// response, and the usual answer is "only `Connection`".
pub fn hop_by_hop(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if *name == CONNECTION {
            if !upgrade {
                names.push(CONNECTION);
            }
            for value in headers.get_all(CONNECTION) {
                let Ok(v) = value.to_str() else { continue };
                for token in v.split(',').map(str::trim) {
                    if token.is_empty() || token.eq_ignore_ascii_case("upgrade") || token.eq_ignore_ascii_case("close") {
                        continue;
                    }
                    // `from_bytes` lowercases; only names actually present need removing
                    if let Ok(n) = HeaderName::from_bytes(token.as_bytes())
                        && headers.contains_key(&n)
                        && !HOP_BY_HOP.contains(&n)
                    {
                        names.push(n);
                    }
                }
            }
        } else if *name == UPGRADE {
            if !upgrade {
                names.push(UPGRADE);
            }
        } else if HOP_BY_HOP.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

thread_local! {
    /// The last client address rendered for `X-Forwarded-For`: keep-alive connections send
    /// many requests from one address, and rendering an address is most of the header's cost.
    static LAST_CLIENT: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// `ip` as a header value, reusing the previous rendering when the address repeats.
pub fn client_ip_value(ip: IpAddr) -> HeaderValue {
    LAST_CLIENT.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// An incoming request id is kept when it is short and made of safe characters; otherwise the
/// gateway makes its own (log injection and header smuggling stop here).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

pub fn new_request_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf).to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, X-Secret, X-Absent".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        let mut names: Vec<String> = hop_by_hop(&h, false).iter().map(|n| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["connection", "keep-alive", "te", "x-secret"]);
    }

    #[test]
    fn client_ip_values_follow_the_address() {
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert_eq!(client_ip_value(a), "10.1.2.3");
        assert_eq!(client_ip_value(a), "10.1.2.3");
        assert_eq!(client_ip_value(b), "::1");
        assert_eq!(client_ip_value(a), "10.1.2.3");
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
