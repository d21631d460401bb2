//! What a successful write invalidates, with no help from the backend.
//!
//! A write (an unsafe method answered 2xx/3xx) always drops every cached variant of its own
//! path and of its `Location`/`Content-Location` targets (RFC 9111 4.4). A route's
//! `invalidate` list adds, by default `["entities", "viewer"]`:
//! - `"entities"`: what the write names of the `[entities]` (`cache::entities`); where it
//!   names none, `"resource"`;
//! - `"resource"`: the resource's collection and everything under it, every variant. On a
//!   path template route the collection is the literal part before the first parameter
//!   (`/api/items` for a write to `/api/items/{item_id}/reviews`); on a prefix route it is
//!   the written path's parent while that is below the route's prefix, else the written path;
//!   on an exact route, the written path;
//! - `"viewer"`: every entry cached under the writer's own credentials (entries keyed by
//!   `Authorization` or a cookie), since per-viewer fields change with the viewer's writes;
//! - a path pattern with the write's path parameters filled in: `"/api/users/{user_id}"`
//!   drops every variant of that path, `"/api/feed/**"` that path and everything under it.

use super::entities::EntityRoute;
use super::store::PurgeSelector;
use super::tags::{split_placeholders, Piece};
use crate::model::template::PathTemplate;
use crate::model::matcher::PathMatch;
use http::header::{HeaderMap, AUTHORIZATION, COOKIE};
use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidateRule {
    Entities,
    Resource,
    Viewer,
    /// A path, `{name}` filled from the write's path parameters; `subtree` when it ended in `/**`.
    Path { parts: Vec<PatternPart>, subtree: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Text(String),
    Param(String),
}

/// Why each entry went, for `fastgate_cache_invalidations_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The written path itself and its `Location` / `Content-Location`.
    Target,
    Resource,
    Viewer,
    Path,
    Tag,
    /// An entity the write named or answered with.
    Entity,
    /// A collection's lists whose membership the write changed.
    List,
}

impl Reason {
    pub const ALL: [Reason; 7] = [Reason::Target, Reason::Resource, Reason::Viewer, Reason::Path, Reason::Tag, Reason::Entity, Reason::List];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Target => "target",
            Reason::Resource => "resource",
            Reason::Viewer => "viewer",
            Reason::Path => "path",
            Reason::Tag => "tag",
            Reason::Entity => "entity",
            Reason::List => "list",
        }
    }
}

/// The rules of a route that says nothing.
pub fn default_rules() -> Vec<InvalidateRule> {
    vec![InvalidateRule::Entities, InvalidateRule::Viewer]
}

impl InvalidateRule {
    /// `"resource"`, `"viewer"`, or a path pattern; `params` lists the placeholders used, for
    /// the compiler to check against the route's template.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "entities" => return Ok(InvalidateRule::Entities),
            "resource" => return Ok(InvalidateRule::Resource),
            "viewer" => return Ok(InvalidateRule::Viewer),
            _ => {}
        }
        let s = s.trim();
        if !s.starts_with('/') {
            return Err(format!("{s:?} is neither \"entities\", \"resource\", \"viewer\" nor a path starting with `/`"));
        }
        let (body, subtree) = match s.strip_suffix("/**") {
            Some(b) => (if b.is_empty() { "/" } else { b }, true),
            None => (s, false),
        };
        if body.contains("**") {
            return Err(format!("`**` may only end a pattern, as in \"/api/items/**\"; found {s:?}"));
        }
        let mut parts = Vec::new();
        for piece in split_placeholders(body)? {
            parts.push(match piece {
                Piece::Text(t) => PatternPart::Text(t.to_string()),
                Piece::Hole(name) => {
                    let name = name.trim();
                    if name.is_empty() || name.contains(':') {
                        return Err(format!("placeholder `{{{name}}}` in {s:?} must name a path parameter of the route"));
                    }
                    PatternPart::Param(name.to_string())
                }
            });
        }
        Ok(InvalidateRule::Path { parts, subtree })
    }

    /// The path parameters the rule uses.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        let parts: &[PatternPart] = match self {
            InvalidateRule::Path { parts, .. } => parts,
            _ => &[],
        };
        parts.iter().filter_map(|p| match p {
            PatternPart::Param(n) => Some(n.as_str()),
            PatternPart::Text(_) => None,
        })
    }
}

/// The collection a write to `path` on a route matching `matcher` belongs to.
pub fn resource_root(matcher: &PathMatch, path: &str) -> String {
    let parent = || path.rsplit_once('/').map_or("", |(p, _)| p).to_string();
    let root = match matcher {
        PathMatch::Template(t) => t.literal_root(),
        // the parent only while it is still below the route's prefix: a create (`POST
        // /api/items` on the `/api` route) drops its collection, not the whole prefix
        PathMatch::Prefix(prefix) => {
            let p = parent();
            if p.len() > prefix.len() { p } else { path.to_string() }
        }
        PathMatch::Exact(_) => path.to_string(),
    };
    // a root of `/` would drop the whole cache for one write: keep to the written path then
    if root.is_empty() { path.to_string() } else { root }
}

/// The selectors of `rules` for a write to `path` with parameter lookup `param`.
pub fn rule_selectors<'a>(
    rules: &[InvalidateRule],
    (matcher, entities): (&PathMatch, &EntityRoute),
    (method, path): (&Method, &str),
    param: impl Fn(&str) -> Option<&'a str> + Copy,
    headers: &HeaderMap,
    out: &mut Vec<(Reason, PurgeSelector)>,
) {
    for rule in rules {
        match rule {
            InvalidateRule::Entities => {
                if !entities.write_selectors(method, path, param, out) {
                    out.push((Reason::Resource, PurgeSelector::PathPrefix(resource_root(matcher, path))));
                }
            }
            InvalidateRule::Resource => out.push((Reason::Resource, PurgeSelector::PathPrefix(resource_root(matcher, path)))),
            InvalidateRule::Viewer => {
                for tag in writer_tags(headers) {
                    out.push((Reason::Viewer, PurgeSelector::Tag(tag)));
                }
            }
            InvalidateRule::Path { parts, subtree } => {
                let mut p = String::new();
                let complete = parts.iter().all(|part| match part {
                    PatternPart::Text(t) => {
                        p.push_str(t);
                        true
                    }
                    PatternPart::Param(n) => param(n).map(|v| p.push_str(v)).is_some(),
                });
                if !complete {
                    continue;
                }
                out.push((Reason::Path, if *subtree { PurgeSelector::PathPrefix(p) } else { PurgeSelector::Path(p) }));
            }
        }
    }
}

/// A short, stable digest of a credential: entries are tagged with it, never with the secret.
fn digest(bytes: &[u8]) -> String {
    // FNV-1a, 64 bits: stable across processes and versions, so replicas sharing a store agree.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("viewer:{h:016x}")
}

/// The viewer tags of an entry cached under `key_headers`/`key_cookies` of this request:
/// one for `Authorization` if it is in the key, one per keyed cookie.
pub fn entry_viewer_tags(auth_keyed: bool, key_cookies: &[String], headers: &HeaderMap, out: &mut Vec<String>) {
    if auth_keyed && let Some(v) = headers.get(AUTHORIZATION) {
        out.push(digest(v.as_bytes()));
    }
    for name in key_cookies {
        if let Some(v) = super::cookie_value(headers, name) {
            out.push(digest(format!("{name}={v}").as_bytes()));
        }
    }
}

/// Every viewer tag the writer's credentials could have given an entry.
pub fn writer_tags(headers: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    if let Some(v) = headers.get(AUTHORIZATION) {
        tags.push(digest(v.as_bytes()));
    }
    for v in headers.get_all(COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';').map(str::trim).filter(|p| p.contains('=')) {
            tags.push(digest(pair.as_bytes()));
        }
    }
    tags
}

/// Whether `t` fits `rules`' placeholders; the first unknown parameter otherwise.
pub fn unknown_param<'r>(rules: impl IntoIterator<Item = &'r str>, template: Option<&PathTemplate>) -> Option<&'r str> {
    rules.into_iter().find(|n| !template.is_some_and(|t| t.has_param(n)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn parse_rules() {
        assert_eq!(InvalidateRule::parse("resource").unwrap(), InvalidateRule::Resource);
        let r = InvalidateRule::parse("/api/users/{user_id}/profile").unwrap();
        assert_eq!(r.params().collect::<Vec<_>>(), vec!["user_id"]);
        assert!(matches!(InvalidateRule::parse("/api/**").unwrap(), InvalidateRule::Path { subtree: true, .. }));
        assert!(InvalidateRule::parse("api").is_err());
        assert!(InvalidateRule::parse("/a/**/b").is_err());
        assert!(InvalidateRule::parse("/a/{header:x}").is_err());
    }

    #[test]
    fn resource_roots() {
        let t = PathMatch::Template(Arc::new(PathTemplate::parse("/api/items/{item_id}/reviews").unwrap()));
        assert_eq!(resource_root(&t, "/api/items/5/reviews"), "/api/items");
        let p = PathMatch::Prefix("/api".into());
        assert_eq!(resource_root(&p, "/api/items/5"), "/api/items");
        assert_eq!(resource_root(&p, "/api/items"), "/api/items");
        assert_eq!(resource_root(&p, "/api"), "/api");
        let all = PathMatch::Prefix(String::new());
        assert_eq!(resource_root(&all, "/x"), "/x");
    }

    #[test]
    fn writer_and_entry_tags_agree() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer user-1".parse().unwrap());
        h.insert(COOKIE, "session=abc; theme=dark".parse().unwrap());
        let mut entry = Vec::new();
        entry_viewer_tags(true, &["session".into()], &h, &mut entry);
        let writer = writer_tags(&h);
        assert_eq!(entry.len(), 2);
        assert!(entry.iter().all(|t| writer.contains(t)));
        assert!(!entry[0].contains("user-1"));
    }
}
