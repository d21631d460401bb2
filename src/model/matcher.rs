//! What a route matches: a path (exact, prefix or FastAPI template), methods and a host, with
//! the precedence that orders matchers by specificity (see `routing` for the rules). Plain
//! definitions: compiled into the plan, compared across reloads, looked up by the route table.

use super::template::{Params, PathTemplate};
use http::Method;
use std::borrow::Cow;
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

/// A Host value without its port (an IPv6 literal keeps its brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// What a table of routes needs of each: its matcher, and whether it denies.
pub trait Routed {
    fn matcher(&self) -> &Matcher;
    fn denies(&self) -> bool;
}

/// Routes in precedence order, looked up as a request is: the live route table
/// (`routing::RouteTable`) and `fastgate check --test` (over the plan's routes) are this one.
#[derive(Debug)]
pub struct Table<T> {
    routes: Vec<T>,
    /// Some route denies: other spellings of a path are checked against the deny routes.
    has_deny: bool,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { routes: Vec::new(), has_deny: false }
    }
}

impl<T: Routed> Table<T> {
    pub fn new(mut routes: Vec<T>) -> Self {
        // stable: equal ranks keep file order
        routes.sort_by_key(|r| Reverse(r.matcher().rank()));
        let has_deny = routes.iter().any(Routed::denies);
        Table { routes, has_deny }
    }

    /// The route for a request and its path parameters. `path` must already be normalized.
    ///
    /// When the table denies some paths, the path is also looked up in its folded spelling
    /// (lower case, `;` parameters cut from segments), and a deny route found that way wins:
    /// `/ADMIN` and `/admin;x=1` are denied with `/admin` whatever the backend makes of them.
    pub fn lookup(&self, method: &Method, host: Option<&str>, path: &str) -> Option<(&T, Params)> {
        let found = self.find(method, host, path);
        if !self.has_deny || found.as_ref().is_some_and(|(r, _)| r.denies()) {
            return found;
        }
        if let Cow::Owned(folded) = fold(path)
            && let Some((r, _)) = self.find(method, host, &folded)
            && r.denies()
        {
            // the parameters would index the folded path; a denied request uses none
            return Some((r, Params::default()));
        }
        found
    }

    /// For a request no route took: the methods the routes serving its path and host take
    /// (RFC 9110 15.5.6: 405 with `Allow`), in a fixed order; `None` when no route serves the
    /// path at all (404). Deny routes are left out: their methods are not advertised.
    pub fn allowed(&self, host: Option<&str>, path: &str) -> Option<String> {
        let mut methods: Vec<&Method> = Vec::new();
        for r in self.routes.iter().filter(|r| !r.denies()) {
            let Some(list) = &r.matcher().methods else { continue };
            let Some(any) = list.first() else { continue };
            if r.matcher().matches(any, host, path).is_some() {
                methods.extend(list.iter().filter(|m| !methods.contains(m)).collect::<Vec<_>>());
            }
        }
        if methods.is_empty() {
            return None;
        }
        const ORDER: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];
        methods.sort_by_key(|m| (ORDER.iter().position(|o| *o == m.as_str()).unwrap_or(ORDER.len()), m.as_str().to_string()));
        Some(methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "))
    }

    fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<(&T, Params)> {
        self.routes.iter().find_map(|r| Some((r, r.matcher().matches(method, host, path)?)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// `path` lower-cased with `;` parameters cut from its segments; borrowed when that changes
/// nothing.
fn fold(path: &str) -> Cow<'_, str> {
    if !path.bytes().any(|b| b.is_ascii_uppercase() || b == b';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut in_params = false;
    for c in path.chars() {
        match c {
            '/' => {
                in_params = false;
                out.push('/');
            }
            ';' => in_params = true,
            c if !in_params => out.push(c.to_ascii_lowercase()),
            _ => {}
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn folding_lowers_and_cuts_segment_parameters() {
        assert_eq!(fold("/A;b/C;d=e/f"), "/a/c/f");
        assert!(matches!(fold("/plain/path"), Cow::Borrowed(_)));
    }
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
