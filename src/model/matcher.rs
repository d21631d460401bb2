//! What a route matches: a path (exact, prefix or FastAPI template), methods and a host, with
//! the precedence that orders matchers by specificity (see `routing` for the rules). Plain
//! definitions: compiled into the plan, compared across reloads, looked up by the route table.

use super::template::{Params, PathTemplate};
use http::Method;
use std::cmp::Reverse;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Stored without a trailing slash; `"/"` is stored as `""` and matches everything.
    Prefix(String),
    /// FastAPI's syntax: `/api/items/{item_id}`, `/files/{rest:path}`.
    Template(Arc<PathTemplate>),
}

/// Segment weights of a literal path (see `PathTemplate::specificity`).
fn literal_weights(p: &str, end: u8) -> Vec<u8> {
    let mut w: Vec<u8> = p.split('/').skip(1).map(|_| 3).collect();
    w.push(end);
    w
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub path: PathMatch,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    /// Lower-case host name without port; `None`: every host.
    pub host: Option<String>,
}

impl Matcher {
    /// The path parameters when the request matches, `None` when it does not.
    pub fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> Option<Params> {
        if !(self.methods.as_ref().is_none_or(|m| m.contains(method))
            && self
                .host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|req| req.eq_ignore_ascii_case(h))))
        {
            return None;
        }
        match &self.path {
            PathMatch::Exact(p) => (path == p).then(Params::default),
            PathMatch::Prefix(p) => (path.starts_with(p.as_str())
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            .then(Params::default),
            PathMatch::Template(t) => t.matches(path).map(|spans| Params { template: Some(t.clone()), spans }),
        }
    }

    /// The route's path template, if it has one.
    pub fn template(&self) -> Option<&Arc<PathTemplate>> {
        match &self.path {
            PathMatch::Template(t) => Some(t),
            _ => None,
        }
    }

    /// Higher sorts first.
    pub fn rank(&self) -> (bool, Vec<u8>, bool) {
        let weights = match &self.path {
            PathMatch::Exact(p) if p == "/" => vec![4],
            PathMatch::Exact(p) => literal_weights(p, 4),
            PathMatch::Prefix(p) if p.is_empty() => vec![1],
            PathMatch::Prefix(p) => literal_weights(p, 1),
            PathMatch::Template(t) => t.specificity(),
        };
        (self.host.is_some(), weights, self.methods.is_some())
    }

    /// Whether some request could match both (same rank, so precedence would be file order).
    pub fn overlaps(&self, other: &Matcher) -> bool {
        self.path == other.path
            && self.host == other.host
            && match (&self.methods, &other.methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => self.methods.is_none() && other.methods.is_none(),
            }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(methods) = &self.methods {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            write!(f, "{} ", names.join(","))?;
        } else {
            f.write_str("* ")?;
        }
        if let Some(host) = &self.host {
            f.write_str(host)?;
        }
        match &self.path {
            PathMatch::Exact(p) => write!(f, "{p}"),
            PathMatch::Prefix(p) => write!(f, "{p}/**"),
            PathMatch::Template(t) => write!(f, "{t}"),
        }
    }
}

/// `items` sorted by their matchers' precedence; equal ranks keep file order (a stable sort).
pub fn in_precedence_order<T>(items: &[T], matcher: impl Fn(&T) -> &Matcher) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|t| Reverse(matcher(t).rank()));
    sorted
}

/// The host a request was sent to, lower-cased by the caller's comparison, without port.
pub fn request_host(req: &pingora::http::RequestHeader) -> Option<&str> {
    let raw = req
        .uri
        .host()
        .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok())?;
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
