//! Every response the gateway produces itself comes from this one table: status, stable
//! machine `code`, title, and an RFC 9457 `application/problem+json` body carrying the request
//! id. Policies say *what* failed; this module alone says how that looks on the wire.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use serde::Serialize;
use std::borrow::Cow;

/// What went wrong, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    BadRequest,
    Unauthorized,
    NoRoute,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    RateLimited,
    HeadersTooLarge,
    /// A rate limit is keyed by something the request lacks; 400 or 401 as configured.
    KeyMissing,
    KeyRequired,
    Internal,
    UpstreamFailed,
    UpstreamUnreachable,
    ResponseTooLarge,
    NoHealthyUpstream,
    Overloaded,
    UpstreamTimeout,
    /// An admin reload was refused: the file has errors; the config in force stays.
    ConfigInvalid,
    /// The client asked `Cache-Control: only-if-cached` and nothing stored can answer.
    NotCached,
    /// A page size or offset over the route's `pagination` bounds.
    PaginationLimit,
    /// A malformed `fields` selector.
    BadFieldSelector,
    /// A method the gateway does not know (or takes for a mistake): RFC 9110 15.6.2.
    NotImplemented,
    /// A route with `action = "deny"` (403 form; the 404 form answers `NotFound`).
    Forbidden,
    /// `server.max_connections` or `max_connections_per_client` reached.
    TooManyConnections,
    /// Shared state (Redis) unreachable on a route with `on_state_error = "deny"`.
    StateUnavailable,
}

impl Problem {
    pub const fn status(self) -> u16 {
        match self {
            Problem::BadRequest | Problem::KeyMissing | Problem::PaginationLimit | Problem::BadFieldSelector => 400,
            Problem::Unauthorized | Problem::KeyRequired => 401,
            Problem::Forbidden => 403,
            Problem::NoRoute | Problem::NotFound => 404,
            Problem::MethodNotAllowed => 405,
            Problem::RequestTimeout => 408,
            Problem::ConfigInvalid => 422,
            Problem::PayloadTooLarge => 413,
            Problem::UriTooLong => 414,
            Problem::RateLimited => 429,
            Problem::HeadersTooLarge => 431,
            Problem::Internal => 500,
            Problem::NotImplemented => 501,
            Problem::UpstreamFailed | Problem::UpstreamUnreachable | Problem::ResponseTooLarge => 502,
            Problem::NoHealthyUpstream | Problem::Overloaded | Problem::TooManyConnections | Problem::StateUnavailable => 503,
            Problem::UpstreamTimeout | Problem::NotCached => 504,
        }
    }

    /// Stable, documented, for machines: clients and dashboards key on it.
    pub const fn code(self) -> &'static str {
        match self {
            Problem::BadRequest => "bad_request",
            Problem::Unauthorized => "unauthorized",
            Problem::NoRoute => "no_route",
            Problem::NotFound => "not_found",
            Problem::MethodNotAllowed => "method_not_allowed",
            Problem::RequestTimeout => "request_timeout",
            Problem::PayloadTooLarge => "payload_too_large",
            Problem::UriTooLong => "uri_too_long",
            Problem::RateLimited => "rate_limited",
            Problem::HeadersTooLarge => "headers_too_large",
            Problem::KeyMissing | Problem::KeyRequired => "rate_limit_key_missing",
            Problem::Internal => "internal_error",
            Problem::ResponseTooLarge => "response_too_large",
            Problem::Overloaded => "overloaded",
            Problem::UpstreamFailed => "upstream_failed",
            Problem::UpstreamUnreachable => "upstream_unreachable",
            Problem::NoHealthyUpstream => "no_healthy_upstream",
            Problem::UpstreamTimeout => "upstream_timeout",
            Problem::ConfigInvalid => "config_invalid",
            Problem::NotCached => "not_cached",
            Problem::PaginationLimit => "pagination_limit",
            Problem::BadFieldSelector => "bad_field_selector",
            Problem::NotImplemented => "not_implemented",
            Problem::Forbidden => "forbidden",
            Problem::TooManyConnections => "too_many_connections",
            Problem::StateUnavailable => "state_unavailable",
        }
    }

    /// Every problem, for the generated reference (`fastgate reference problems`); a new variant
    /// goes here as well as in the matches above and below, which the compiler enforces.
    pub const ALL: &'static [Problem] = &[
        Problem::BadRequest,
        Problem::Unauthorized,
        Problem::Forbidden,
        Problem::NoRoute,
        Problem::NotFound,
        Problem::MethodNotAllowed,
        Problem::RequestTimeout,
        Problem::PayloadTooLarge,
        Problem::UriTooLong,
        Problem::ConfigInvalid,
        Problem::RateLimited,
        Problem::KeyMissing,
        Problem::KeyRequired,
        Problem::HeadersTooLarge,
        Problem::PaginationLimit,
        Problem::BadFieldSelector,
        Problem::Internal,
        Problem::NotImplemented,
        Problem::UpstreamUnreachable,
        Problem::ResponseTooLarge,
        Problem::UpstreamFailed,
        Problem::NoHealthyUpstream,
        Problem::Overloaded,
        Problem::TooManyConnections,
        Problem::StateUnavailable,
        Problem::UpstreamTimeout,
        Problem::NotCached,
    ];

    /// When the gateway answers with it, for operators (the generated reference's last column).
    pub const fn when(self) -> &'static str {
        match self {
            Problem::BadRequest => "A request head that does not parse (an invalid character in the request line or a field, a space in the target, not HTTP/1.x), two `Host` fields, an invalid or ambiguous `Content-Length`, `Transfer-Encoding` in HTTP/1.0 or not ending in `chunked` (the connection is closed); an unroutable path (a bad `%` escape, `OPTIONS *`).",
            Problem::Unauthorized => "The admin API without its token.",
            Problem::Forbidden => "A route with `action = \"deny\"` and `deny_status = 403`; the admin API from another host when no token is set.",
            Problem::NoRoute => "No route matches (add a `path_prefix = \"/\"` route as a catch-all).",
            Problem::NotFound => "A route with `action = \"deny\"` (the default 404 form).",
            Problem::MethodNotAllowed => "A path that routes serve, with other `methods`: `Allow` lists the methods of the routes that serve it, as FastAPI answers. A method outside `server.methods` that exists (TRACE, WebDAV's), and `CONNECT` always.",
            Problem::RequestTimeout => "The request head did not arrive within `server.header_timeout`, or the body stalled past `client_body_timeout`; the connection is closed.",
            Problem::PayloadTooLarge => "A body over the route's `max_body`: from `Content-Length` before the backend is contacted, or counted while a chunked body streams (the backend never gets more than the cap).",
            Problem::UriTooLong => "A request target over `server.max_uri_length`.",
            Problem::ConfigInvalid => "`POST /admin/reload` of a file with errors: the config in force stays; the body carries `reloaded: false` and `errors`.",
            Problem::RateLimited => "A rate limit refused the request; `Retry-After` and `RateLimit-*` fields say when to come back.",
            Problem::KeyMissing => "A rate limit keys on something the request lacks, with `on_missing = \"reject\"` (400 form).",
            Problem::KeyRequired => "A rate limit keys on something the request lacks, with `on_missing = \"reject\"` and `status = 401`.",
            Problem::HeadersTooLarge => "More request fields than `server.max_header_count`, or more bytes than `max_header_bytes`.",
            Problem::PaginationLimit => "A page size over the route's `pagination.max` with `on_excess = \"reject\"`, or an offset over `max_offset`.",
            Problem::BadFieldSelector => "A malformed `fields` selector: empty names, stray dots, characters other than letters, digits, `_`, `-`; over 100 fields or 2,048 characters.",
            Problem::Internal => "A fault of the gateway's own; logged with the request id.",
            Problem::NotImplemented => "A method this server does not know (`BREW`, a 4 KiB name); the connection is closed.",
            Problem::UpstreamUnreachable => "Connecting to the upstream failed.",
            Problem::ResponseTooLarge => "The upstream's declared response is over `max_response_body`.",
            Problem::UpstreamFailed => "The upstream broke the exchange.",
            Problem::NoHealthyUpstream => "Every server of the upstream fails its health check; `Retry-After` is the check interval.",
            Problem::Overloaded => "A concurrency limit is full, and its queue too or the wait timed out; `Retry-After: 1`.",
            Problem::TooManyConnections => "`server.max_connections` or `max_connections_per_client` reached; `Retry-After: 1`, the connection is closed.",
            Problem::StateUnavailable => "Shared state (Redis) unreachable on a route with `on_state_error = \"deny\"`, or an admin purge that could not reach it.",
            Problem::UpstreamTimeout => "A connect, read or total timeout before the response started. After it started, the connection is closed and the event logged.",
            Problem::NotCached => "The client sent `Cache-Control: only-if-cached` and nothing stored can answer.",
        }
    }

    /// The reference table of every problem (`fastgate reference problems`, the book's page).
    pub fn reference() -> String {
        let mut out = String::from(
            "# Problem codes\n\n<!-- generated by `fastgate reference problems`; a test keeps it equal -->\n\n\
             Every response the gateway makes itself is `application/problem+json` (RFC 9457) with the request's \
             `x-request-id`, `Cache-Control: no-store`, and a stable `code` that clients and dashboards may key on:\n\n\
             ```json\n{\"type\":\"urn:fastgate:problem:upstream_timeout\",\"title\":\"Upstream timed out\",\"status\":504,\n \
             \"detail\":\"upstream did not answer in time\",\"code\":\"upstream_timeout\",\"request_id\":\"01a2...\"}\n```\n\n\
             | status | `code` | title | when |\n| --- | --- | --- | --- |\n",
        );
        for p in Problem::ALL {
            out.push_str(&format!("| {} | `{}` | {} | {} |\n", p.status(), p.code(), p.title(), p.when()));
        }
        out
    }

    pub const fn title(self) -> &'static str {
        match self {
            Problem::BadRequest => "Bad Request",
            Problem::Unauthorized => "Unauthorized",
            Problem::NoRoute => "No route matches this request",
            Problem::NotFound => "Not Found",
            Problem::MethodNotAllowed => "Method Not Allowed",
            Problem::RequestTimeout => "Request Timeout",
            Problem::PayloadTooLarge => "Request body too large",
            Problem::UriTooLong => "Request target too long",
            Problem::RateLimited => "Too many requests",
            Problem::HeadersTooLarge => "Request header fields too large",
            Problem::KeyMissing | Problem::KeyRequired => "Rate limit key missing",
            Problem::Internal => "Internal gateway error",
            Problem::ResponseTooLarge => "Upstream response too large",
            Problem::Overloaded => "Overloaded",
            Problem::UpstreamFailed => "Upstream failed",
            Problem::UpstreamUnreachable => "Upstream unreachable",
            Problem::NoHealthyUpstream => "No healthy upstream",
            Problem::UpstreamTimeout => "Upstream timed out",
            Problem::ConfigInvalid => "Config not loaded",
            Problem::NotCached => "Not in cache",
            Problem::PaginationLimit => "Page outside this route's limits",
            Problem::BadFieldSelector => "Malformed field selector",
            Problem::NotImplemented => "Method not implemented",
            Problem::Forbidden => "Forbidden",
            Problem::TooManyConnections => "Too many connections",
            Problem::StateUnavailable => "Shared state unavailable",
        }
    }
}

/// A problem with its details, ready to render.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub problem: Problem,
    pub detail: Cow<'static, str>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    /// The methods allowed, for the `Allow` field of a 405.
    pub allow: Option<Cow<'static, str>>,
}

impl GatewayError {
    pub fn new(problem: Problem, detail: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            problem,
            detail: detail.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn allow(mut self, methods: impl Into<Cow<'static, str>>) -> Self {
        self.allow = Some(methods.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The pingora error to return from a phase so the proxy stops; `fail_to_proxy` renders
    /// the `GatewayError` kept in the request context.
    pub fn to_pingora(&self) -> Box<Error> {
        Error::explain(ErrorType::HTTPStatus(self.problem.status()), self.detail.to_string())
    }

    /// Maps an error raised inside pingora (connect, read, protocol) to what the client sees.
    /// `None`: the client is gone; nothing can be sent.
    pub fn from_pingora(e: &Error) -> Option<Self> {
        use ErrorType::*;
        let (problem, detail): (Problem, &'static str) = match (e.esource(), e.etype()) {
            (_, HTTPStatus(413)) => (Problem::PayloadTooLarge, "request body exceeds this route's limit"),
            (_, HTTPStatus(400)) => (Problem::BadRequest, "malformed request"),
            (_, HTTPStatus(503)) => (Problem::NoHealthyUpstream, "no healthy upstream server"),
            (_, HTTPStatus(504)) => (Problem::UpstreamTimeout, "upstream did not answer in time"),
            (_, HTTPStatus(_)) => (Problem::UpstreamFailed, "upstream request failed"),
            (ErrorSource::Upstream, ConnectTimedout) => {
                (Problem::UpstreamTimeout, "connecting to the upstream timed out")
            }
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => {
                (Problem::UpstreamTimeout, "upstream did not answer in time")
            }
            (ErrorSource::Upstream, ConnectRefused | ConnectNoRoute | ConnectError | SocketError) => {
                (Problem::UpstreamUnreachable, "could not connect to the upstream")
            }
            (ErrorSource::Upstream, _) => (Problem::UpstreamFailed, "upstream connection failed"),
            (ErrorSource::Downstream, ReadTimedout) => {
                (Problem::RequestTimeout, "client did not send the request in time")
            }
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed | WriteTimedout) => {
                return None;
            }
            (ErrorSource::Downstream, _) => (Problem::BadRequest, "malformed request"),
            (ErrorSource::Internal | ErrorSource::Unset, _) => (Problem::Internal, "internal gateway error"),
        };
        Some(GatewayError::new(problem, detail))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    request_id: &'a str,
    /// RFC 9457 extension members (the errors of a refused reload).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extensions: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

pub const CONTENT_TYPE: &str = "application/problem+json";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The response header and body for `err`.
pub fn render(err: &GatewayError, request_id: &str) -> (ResponseHeader, Bytes) {
    render_with(err, request_id, None)
}

/// `render` for the admin listener, whose server wants an `http::Response`; `extensions` are
/// extra members of the problem object.
pub fn http_response(
    err: &GatewayError,
    request_id: &str,
    extensions: Option<&serde_json::Map<String, serde_json::Value>>,
) -> http::Response<Vec<u8>> {
    let (header, body) = render_with(err, request_id, extensions);
    let mut resp = http::Response::new(body.to_vec());
    *resp.status_mut() = header.status;
    for (k, v) in header.headers.iter() {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// `err` as a whole HTTP/1.1 message that closes the connection, for answers written to a
/// socket before any HTTP session exists (a connection refused, a head that never completed).
pub fn http1_bytes(err: &GatewayError, request_id: &str) -> Vec<u8> {
    let (header, body) = render_with(err, request_id, None);
    let status = header.status;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in header.headers.iter() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// The plain listener's answer under `redirect_to_https`: 308 (the method and body are kept
/// on the way to HTTPS), then close.
pub fn redirect_http1_bytes(location: &str, request_id: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\n{REQUEST_ID_HEADER}: {request_id}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn render_with(
    err: &GatewayError,
    request_id: &str,
    extensions: Option<&serde_json::Map<String, serde_json::Value>>,
) -> (ResponseHeader, Bytes) {
    let p = err.problem;
    let body = Body {
        kind: format!("urn:fastgate:problem:{}", p.code()),
        title: p.title(),
        status: p.status(),
        detail: &err.detail,
        code: p.code(),
        request_id,
        extensions,
    };
    // Serializing plain strings and integers cannot fail; fall back to an empty object anyway.
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()));
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(p.status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut header = ResponseHeader::from(parts);
    // Header names and values here are static or validated: insertion cannot fail.
    let _ = header.insert_header(http::header::CONTENT_TYPE, CONTENT_TYPE);
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
    let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
    let _ = header.insert_header(REQUEST_ID_HEADER, request_id);
    if let Some(secs) = err.retry_after {
        let _ = header.insert_header(http::header::RETRY_AFTER, secs);
    }
    if let Some(allow) = &err.allow {
        let _ = header.insert_header(http::header::ALLOW, allow.as_ref());
    }
    (header, body)
}

/// The stable code of a backend error status, for normalized bodies and their metric.
pub fn backend_code(status: u16, validation: bool) -> &'static str {
    match status {
        422 if validation => "validation_failed",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        410 => "gone",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        429 => "rate_limited",
        500 => "internal_error",
        501 => "not_implemented",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "gateway_timeout",
        402..=499 => "client_error",
        _ => "server_error",
    }
}

/// A FastAPI error body (`{"detail": ...}`, the only member) rewritten as the gateway's own
/// problem shape, with its code; `None` for any other body, which is left as it is.
///
/// `detail` as a string is kept; a validation list becomes `errors`, each item as FastAPI
/// wrote it but with `loc` as a JSON pointer (`["body", "price"]` -> `"/body/price"`).
pub fn from_fastapi(status: u16, body: &[u8], request_id: &str) -> Option<(Bytes, &'static str)> {
    use serde_json::Value;
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else { return None };
    if obj.len() != 1 {
        return None;
    }
    let detail = obj.remove("detail")?;
    let mut extensions = serde_json::Map::new();
    let (detail, validation) = match detail {
        Value::String(s) => (s, false),
        Value::Array(items) if items.iter().all(|i| i.get("loc").is_some() && i.get("msg").is_some()) => {
            let n = items.len();
            let errors: Vec<Value> = items.into_iter().map(pointer_loc).collect();
            extensions.insert("errors".into(), Value::Array(errors));
            let plural = if n == 1 { "" } else { "s" };
            (format!("{n} invalid field{plural} in the request"), true)
        }
        // any other detail (an object, a number) is kept whole as an extension member
        other => {
            extensions.insert("detail_value".into(), other);
            (String::new(), false)
        }
    };
    let code = backend_code(status, validation);
    let title = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let problem = Body {
        kind: format!("urn:fastgate:problem:{code}"),
        title,
        status,
        detail: &detail,
        code,
        request_id,
        extensions: (!extensions.is_empty()).then_some(&extensions),
    };
    let bytes = serde_json::to_vec(&problem).ok()?;
    Some((Bytes::from(bytes), code))
}

/// A validation item with `loc` (a list of keys and indexes) as a JSON pointer (RFC 6901).
fn pointer_loc(mut item: serde_json::Value) -> serde_json::Value {
    if let Some(loc) = item.get_mut("loc")
        && let Some(parts) = loc.as_array()
    {
        let mut pointer = String::new();
        for p in parts {
            let part = match p {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            pointer.push('/');
            pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
        }
        *loc = serde_json::Value::String(pointer);
    }
    item
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {

    #[test]
    fn the_books_problem_page_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/reference/problems.md");
        let page = std::fs::read_to_string(path).unwrap_or_default();
        assert!(page == Problem::reference(), "run `fastgate reference problems > docs/src/reference/problems.md`");
        let mut codes: Vec<_> = Problem::ALL.iter().map(|p| p.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Problem::ALL.len() - 1, "KeyMissing and KeyRequired share a code; nothing else repeats");
    }
    use super::*;

    #[test]
    fn fastapi_bodies_become_problems_and_others_do_not() {
        let body = br#"{"detail":[{"type":"missing","loc":["body","price"],"msg":"Field required","input":{"name":"x"}},{"type":"int_parsing","loc":["query","limit"],"msg":"bad","input":"a"}]}"#;
        let (out, code) = from_fastapi(422, body, "r1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(code, "validation_failed");
        assert_eq!(v["status"], 422);
        assert_eq!(v["code"], "validation_failed");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["errors"][0]["loc"], "/body/price");
        assert_eq!(v["errors"][0]["input"]["name"], "x");
        assert_eq!(v["errors"][1]["loc"], "/query/limit");
        let (out, code) = from_fastapi(404, br#"{"detail":"Item not found"}"#, "r2").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((code, v["detail"].as_str().unwrap(), v["title"].as_str().unwrap()), ("not_found", "Item not found", "Not Found"));
        assert!(from_fastapi(400, br#"{"detail":"x","other":1}"#, "r").is_none());
        assert!(from_fastapi(400, br#"{"error":"x"}"#, "r").is_none());
        assert!(from_fastapi(400, b"not json", "r").is_none());
        assert!(from_fastapi(400, br#"["detail"]"#, "r").is_none());
        assert_eq!(pointer_loc(serde_json::json!({"loc": ["body", 0, "a/b"]}))["loc"], "/body/0/a~1b");
    }

    #[test]
    fn renders_rfc9457_body() {
        let err = GatewayError::new(Problem::UpstreamTimeout, "took too long").retry_after(3);
        let (h, body) = render(&err, "req-1");
        assert_eq!(h.status.as_u16(), 504);
        assert_eq!(h.headers["content-type"], CONTENT_TYPE);
        assert_eq!(h.headers["retry-after"], "3");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "upstream_timeout");
        assert_eq!(v["status"], 504);
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["type"], "urn:fastgate:problem:upstream_timeout");
        assert_eq!(v["detail"], "took too long");
    }

    #[test]
    fn client_gone_renders_nothing() {
        let e = Error::new_down(ErrorType::ConnectionClosed);
        assert!(GatewayError::from_pingora(&e).is_none());
        let e = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(GatewayError::from_pingora(&e).map(|g| g.problem), Some(Problem::UpstreamUnreachable));
    }
}
