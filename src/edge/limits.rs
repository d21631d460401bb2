//! The `[server]` request limits, checked before anything else looks at a request: 414 for a
//! long request target, 431 for too many or too large header fields. Also the client-side
//! timeouts the proxy sets on the connection (body read, keep-alive).

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::policy::{Directives, Exchange, Flow, Policy};
use crate::problem::{GatewayError, Problem};
use http::Method;
use std::time::Duration;

/// The methods FastAPI routes serve; not TRACE (a naive backend echoes the request, cookies
/// included) nor CONNECT.
pub const DEFAULT_METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

/// Methods RFC 9110 and WebDAV define: refused with 405 (the method exists, this server does
/// not allow it); anything else is 501 (not a method this server knows).
const KNOWN_METHODS: [&str; 17] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "PROPPATCH", "MKCOL",
    "COPY", "MOVE", "LOCK", "UNLOCK", "TRACK",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_uri_length: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub client_body_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// The whole request head must arrive within this, counted from the connection's accept
    /// (first request) or from the request's first byte (later ones): 408, closed.
    pub header_timeout: Duration,
    /// Client connections open at once on the proxy listener; more are answered 503, closed.
    pub max_connections: usize,
    /// Connections open at once from one untrusted peer address (trusted proxies are exempt:
    /// every client behind them shares their address).
    pub max_connections_per_client: usize,
    pub access_log: bool,
    /// Methods any route may see; others are refused before routing.
    pub methods: Vec<Method>,
    /// `methods` as an `Allow` value.
    pub allow: String,
    pub encoded_slash: crate::model::normalize::EncodedSlash,
}

impl ServerLimits {
    pub fn allow_value(methods: &[Method]) -> String {
        methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_uri_length: 8 * 1024,
            max_header_count: 100,
            max_header_bytes: 32 * 1024,
            client_body_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_client: 256,
            access_log: true,
            methods: DEFAULT_METHODS.to_vec(),
            allow: ServerLimits::allow_value(&DEFAULT_METHODS),
            encoded_slash: Default::default(),
        }
    }
}

impl Policy for ServerLimits {
    type Scratch = ();

    async fn on_request(&self, x: &Exchange<'_>, _st: &mut (), d: &mut Directives) -> Flow {
        let req = x.req;
        let refuse = |d: &mut Directives, problem, detail: String| {
            d.close = true;
            Flow::Respond(GatewayError::new(problem, detail))
        };
        if !self.methods.contains(&req.method) {
            let m = req.method.as_str();
            // a method name is no place for data: a long one is only echoed by its length
            let shown = if m.len() > 32 { format!("a {}-byte method", m.len()) } else { format!("method {m}") };
            return if KNOWN_METHODS.contains(&m) {
                let detail = format!("{shown} is not allowed here; allowed: {}", self.allow);
                Flow::Respond(GatewayError::new(Problem::MethodNotAllowed, detail).allow(self.allow.clone()))
            } else {
                refuse(d, Problem::NotImplemented, format!("{shown} is not one this server implements"))
            };
        }
        let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > self.max_uri_length {
            let detail = format!("request target is {target_len} bytes; the limit is {}", self.max_uri_length);
            return refuse(d, Problem::UriTooLong, detail);
        }
        if req.headers.len() > self.max_header_count {
            let detail = format!("{} header fields; the limit is {}", req.headers.len(), self.max_header_count);
            return refuse(d, Problem::HeadersTooLarge, detail);
        }
        let bytes: usize = req.method.as_str().len() + req.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>();
        if bytes > self.max_header_bytes {
            let detail = format!("header fields total {bytes} bytes; the limit is {}", self.max_header_bytes);
            return refuse(d, Problem::HeadersTooLarge, detail);
        }
        Flow::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures_util::FutureExt as _;
    use super::*;
    use crate::policy::tests::exchange;

    #[test]
    fn long_target_and_many_fields_are_refused() {
        let limits = ServerLimits { max_uri_length: 8, max_header_count: 1, ..ServerLimits::default() };
        let req = pingora::http::RequestHeader::build("GET", b"/123456789", None).unwrap();
        let mut d = Directives::default();
        match limits.on_request(&exchange(&req), &mut (), &mut d).now_or_never().unwrap() {
            Flow::Respond(e) => assert_eq!(e.problem.status(), 414),
            Flow::Continue => panic!("not refused"),
        }
        assert!(d.close);
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("a", "1").unwrap();
        req.insert_header("b", "2").unwrap();
        match limits.on_request(&exchange(&req), &mut (), &mut Directives::default()).now_or_never().unwrap() {
            Flow::Respond(e) => assert_eq!(e.problem.status(), 431),
            Flow::Continue => panic!("not refused"),
        }
    }

    #[test]
    fn methods_outside_the_list_are_405_or_501() {
        let limits = ServerLimits::default();
        let status = |m: &str| {
            let req = pingora::http::RequestHeader::build(m, b"/", None).unwrap();
            match limits.on_request(&exchange(&req), &mut (), &mut Directives::default()).now_or_never().unwrap() {
                Flow::Respond(e) => (e.problem.status(), e.allow.map(|a| a.to_string())),
                Flow::Continue => (0, None),
            }
        };
        assert_eq!(status("GET").0, 0);
        assert_eq!(status("TRACE"), (405, Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into())));
        assert_eq!(status("FOO").0, 501);
        assert_eq!(status(&"X".repeat(70000)).0, 501);
    }
}
