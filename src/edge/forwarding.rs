//! Request ids and forwarding headers (a server-level policy: every route): the request id
//! (kept when safe, else a new UUIDv7), `X-Forwarded-For/-Proto/-Host` (a trusted proxy's
//! values are extended, anyone else's replaced), the real client address behind trusted
//! proxies, and hop-by-hop removal from responses (RFC 9110 7.6.1).

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::policy::{Exchange, Policy};
use crate::problem::{GatewayError, Problem, REQUEST_ID_HEADER};
use ipnet::IpNet;
use pingora::http::RequestHeader;
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

// Inserted by `&str`: pingora stores a `HeaderName` it is given with a title-cased copy of the
// name (an allocation per insert); a static `&str` is kept as written. Looked up by
// `HeaderName`: a `&str` would be parsed on every lookup.
/// Every forwarding field the gateway sets or removes.
const FORWARDING_NAMES: [&str; 5] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_REAL_IP, FORWARDED];
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_REAL_IP: &str = "x-real-ip";
const FORWARDED: &str = "forwarded";
static X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
static REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Which forwarding fields the gateway sets (`[server] forwarded`). A field it does not set
/// passes from a trusted proxy and is removed from anyone else, so a client can never make the
/// backend believe another address, scheme or host.
///
/// The default is what uvicorn's `--proxy-headers` reads, `X-Forwarded-For` and `-Proto`:
/// every field set costs two header-map inserts, with their allocations, on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedFields {
    pub x_forwarded_for: bool,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    pub x_real_ip: bool,
    /// RFC 7239 `Forwarded`.
    pub forwarded: bool,
}

impl Default for ForwardedFields {
    fn default() -> Self {
        ForwardedFields { x_forwarded_for: true, x_forwarded_proto: true, x_forwarded_host: false, x_real_ip: false, forwarded: false }
    }
}

impl ForwardedFields {
    const NONE: ForwardedFields =
        ForwardedFields { x_forwarded_for: false, x_forwarded_proto: false, x_forwarded_host: false, x_real_ip: false, forwarded: false };

    /// Field names and shorthands (`x-forwarded`: the three `X-Forwarded-*`; `rfc7239`:
    /// `Forwarded`; `both`: all four), case-insensitive; the first unknown name is the error.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut f = Self::NONE;
        for name in names {
            let name_lc = name.trim().to_ascii_lowercase();
            match name_lc.as_str() {
                "x-forwarded-for" => f.x_forwarded_for = true,
                "x-forwarded-proto" => f.x_forwarded_proto = true,
                "x-forwarded-host" => f.x_forwarded_host = true,
                "x-real-ip" => f.x_real_ip = true,
                "forwarded" | "rfc7239" => f.forwarded = true,
                "x-forwarded" | "both" => {
                    (f.x_forwarded_for, f.x_forwarded_proto, f.x_forwarded_host) = (true, true, true);
                    f.forwarded |= name_lc == "both";
                }
                _ => return Err(name.clone()),
            }
        }
        Ok(f)
    }
}

/// `[server] trusted_proxies`: whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    pub trusted_proxies: Vec<IpNet>,
    /// Fields no request keeps: they change what a framework serves without being part of
    /// the target, so a cached answer to one could be served for another.
    pub remove_request_headers: Vec<http::HeaderName>,
    pub forwarded: ForwardedFields,
}

/// One RFC 7239 element for this hop: `for` the peer (IPv6 bracketed and quoted), `proto`,
/// `host` quoted (it may carry a port).
fn forwarded_element(peer: IpAddr, tls: bool, host: Option<&[u8]>) -> String {
    let proto = if tls { "https" } else { "http" };
    let mut e = match peer {
        IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    };
    // a host with a quote or a backslash is not a valid host: left out rather than escaped
    if let Some(h) = host.and_then(|h| std::str::from_utf8(h).ok()).filter(|h| !h.contains(['"', '\\'])) {
        e.push_str(";host=\"");
        e.push_str(h);
        e.push('"');
    }
    e
}

/// Fields that make common frameworks and middleware serve another target than the URL
/// (IIS/Symfony/Zend `X-Original-URL`, `X-Rewrite-URL`; nginx-style `X-Original-URI`).
pub const TARGET_REWRITING: &[&str] = &["x-original-url", "x-rewrite-url", "x-original-uri"];

impl Forwarding {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client behind the peer: see [`real_client_ip`].
    pub fn client_ip(&self, peer: Option<IpAddr>, req: &RequestHeader) -> Option<IpAddr> {
        match peer {
            Some(ip) if self.is_trusted(ip) => real_client_ip(peer, req.headers.get(&X_FORWARDED_FOR_NAME), &self.trusted_proxies),
            _ => peer,
        }
    }

    /// The request id of a request: the client's when it is safe, else a new one.
    pub fn request_id(req: &RequestHeader) -> String {
        match req.headers.get(&REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            _ => new_request_id(),
        }
    }
}

impl Policy for Forwarding {
    type Scratch = ();

    fn on_upstream_request(&self, x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut ()) -> Result<(), GatewayError> {
        let fail = |e: pingora::BError| GatewayError::new(Problem::Internal, format!("forwarding headers: {e}"));
        up.insert_header(REQUEST_ID_HEADER, x.request_id).map_err(fail)?;
        // Hop-by-hop fields are already gone: pingora's standard upstream request policy strips
        // them (and `Connection`-nominated ones) before this runs.
        let trusted = x.trusted_peer;
        let f = self.forwarded;
        // what the gateway does not set, only a trusted proxy may say; one pass over the
        // request's fields first, as most requests carry none of them (three removals by name
        // cost about 1k instructions, bench/callgrind)
        if !trusted && up.headers.keys().any(|n| FORWARDING_NAMES.contains(&n.as_str())) {
            for (name, set) in [
                (X_FORWARDED_FOR, f.x_forwarded_for),
                (X_FORWARDED_PROTO, f.x_forwarded_proto),
                (X_FORWARDED_HOST, f.x_forwarded_host),
                (X_REAL_IP, f.x_real_ip),
                (FORWARDED, false),
            ] {
                if !set {
                    up.remove_header(name);
                }
            }
        }
        if f.x_forwarded_for
            && let Some(ip) = x.peer_ip
        {
            let appended = match up.headers.get(&X_FORWARDED_FOR_NAME).and_then(|v| v.to_str().ok()) {
                Some(chain) if trusted && !chain.trim().is_empty() => Some(format!("{chain}, {ip}")),
                _ => None,
            };
            match appended {
                Some(xff) => up.insert_header(X_FORWARDED_FOR, xff).map_err(fail)?,
                None => up.insert_header(X_FORWARDED_FOR, client_ip_value(ip)).map_err(fail)?,
            }
        }
        if f.x_forwarded_proto && !(trusted && up.headers.contains_key(X_FORWARDED_PROTO)) {
            let proto = if x.tls { "https" } else { "http" };
            up.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(proto)).map_err(fail)?;
        }
        if f.x_forwarded_host && !(trusted && up.headers.contains_key(X_FORWARDED_HOST)) {
            match up.headers.get(http::header::HOST).cloned() {
                Some(host) => up.insert_header(X_FORWARDED_HOST, host).map_err(fail)?,
                None => {
                    up.remove_header(X_FORWARDED_HOST);
                }
            }
        }
        // `X-Real-IP` is the client as the gateway established it, whoever sent one
        if f.x_real_ip {
            match x.client_ip {
                Some(ip) => up.insert_header(X_REAL_IP, client_ip_value(ip)).map_err(fail)?,
                None => {
                    up.remove_header(X_REAL_IP);
                }
            }
        }
        // `Forwarded`: a trusted proxy's is extended with this hop's element
        if f.forwarded
            && let Some(ip) = x.peer_ip
        {
            let earlier = up.headers.get(FORWARDED).and_then(|v| v.to_str().ok()).filter(|e| !e.trim().is_empty());
            let own = forwarded_element(ip, x.tls, up.headers.get(http::header::HOST).map(|h| h.as_bytes()));
            let value = match earlier {
                Some(e) => format!("{e}, {own}"),
                None => own,
            };
            up.insert_header(FORWARDED, value).map_err(fail)?;
        }
        Ok(())
    }
}

/// The client address: the peer, or through trusted proxies the right-most `X-Forwarded-For`
/// entry that is not itself a trusted proxy.
pub fn real_client_ip(peer: Option<IpAddr>, xff: Option<&HeaderValue>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let chain = xff.and_then(|v| v.to_str().ok()).unwrap_or("");
    for hop in chain.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(peer)
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
    fn real_client_ip_walks_trusted_hops() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = Some("10.0.0.1".parse().unwrap());
        let xff = HeaderValue::from_static("203.0.113.9, 198.51.100.2, 10.0.0.7");
        assert_eq!(real_client_ip(peer, Some(&xff), &trusted), Some("198.51.100.2".parse().unwrap()));
        let untrusted = Some("192.0.2.1".parse().unwrap());
        assert_eq!(real_client_ip(untrusted, Some(&xff), &trusted), untrusted);
    }

    #[test]
    fn untrusted_peers_get_their_forwarding_headers_replaced() {
        let f = Forwarding { trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()], remove_request_headers: Vec::new(), forwarded: ForwardedFields::default() };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        req.insert_header("x-forwarded-host", "evil.example").unwrap();
        req.insert_header("x-real-ip", "1.2.3.4").unwrap();
        req.insert_header("forwarded", "for=1.2.3.4").unwrap();
        req.insert_header("host", "api.example").unwrap();
        let mut x = crate::policy::tests::exchange(&req);
        x.peer_ip = Some("192.0.2.7".parse().unwrap());
        x.client_ip = x.peer_ip;
        x.request_id = "rid";
        let mut up = req.clone();
        f.on_upstream_request(&x, &mut up, &mut ()).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(up.headers["x-forwarded-proto"], "http");
        assert_eq!(up.headers["x-request-id"], "rid");
        // not set by default: the client's copies are gone
        for gone in ["x-forwarded-host", "x-real-ip", "forwarded"] {
            assert!(!up.headers.contains_key(gone), "{gone}");
        }
        // every field set: each is the gateway's own
        let all = Forwarding { forwarded: ForwardedFields::parse(&["both".into(), "X-Real-IP".into()]).unwrap(), ..f };
        let mut up = req.clone();
        all.on_upstream_request(&x, &mut up, &mut ()).unwrap();
        assert_eq!(up.headers["x-forwarded-host"], "api.example");
        assert_eq!(up.headers["x-real-ip"], "192.0.2.7");
        assert_eq!(up.headers["forwarded"], "for=192.0.2.7;proto=http;host=\"api.example\"");
    }

    #[test]
    fn forwarded_fields_parse_names_and_shorthands() {
        let p = |v: &[&str]| ForwardedFields::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&[]).unwrap(), ForwardedFields::NONE);
        let xf = p(&["x-forwarded"]).unwrap();
        assert!(xf.x_forwarded_for && xf.x_forwarded_proto && xf.x_forwarded_host && !xf.x_real_ip && !xf.forwarded);
        let both = p(&["both"]).unwrap();
        assert!(both.x_forwarded_host && both.forwarded && !both.x_real_ip);
        assert_eq!(p(&["rfc7239"]).unwrap(), ForwardedFields { forwarded: true, ..ForwardedFields::NONE });
        assert_eq!(p(&["X-Forwarded-For", "x-forwarded-proto"]).unwrap(), ForwardedFields::default());
        assert_eq!(p(&["x-forwarded-for", "x-forwarded-port"]), Err("x-forwarded-port".to_string()));
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
