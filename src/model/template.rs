//! Path templates in FastAPI's own syntax: `/api/items/{item_id}/reviews` matches one segment
//! per `{name}`; a last `{name:path}` matches the rest of the path (possibly empty), as
//! Starlette's `path` convertor does. A parameter is a whole segment.
//!
//! Matching yields the parameters as byte ranges into the (normalized) path, so a match
//! allocates only when the template has parameters.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Param(String),
}

/// A compiled path template.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    source: String,
    segs: Vec<Seg>,
    /// The name of a trailing `{name:path}`.
    rest: Option<String>,
}

/// Why a template was refused; the compiler turns it into a diagnostic with a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a path template must start with `/`")]
    NoSlash,
    #[error("`{{{0}` is not closed")]
    Unclosed(String),
    #[error("parameter `{0}` is not a whole path segment")]
    PartialSegment(String),
    #[error("`{{{0}:path}}` must be the last segment")]
    RestNotLast(String),
    #[error("parameter name `{0}` is not an identifier")]
    BadName(String),
    #[error("parameter `{0}` appears twice")]
    Duplicate(String),
    #[error("unknown convertor `{0}`; FastAPI's `path` is the one that changes matching")]
    Convertor(String),
    #[error("the segment `{0}` is `.`, `..` or empty")]
    NotNormalized(String),
}

impl PathTemplate {
    /// Whether `s` is written as a template (has a `{`).
    pub fn is_template(s: &str) -> bool {
        s.contains('{')
    }

    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let body = s.strip_prefix('/').ok_or(TemplateError::NoSlash)?;
        let mut segs = Vec::new();
        let mut rest = None;
        let mut names: Vec<&str> = Vec::new();
        let parts: Vec<&str> = if body.is_empty() { Vec::new() } else { body.split('/').collect() };
        for (i, part) in parts.iter().enumerate() {
            if rest.is_some() {
                return Err(TemplateError::RestNotLast(rest.unwrap_or_default()));
            }
            if !part.contains(['{', '}']) {
                // a trailing empty segment is a trailing slash, which FastAPI keeps distinct
                if matches!(*part, "." | "..") || (part.is_empty() && i + 1 < parts.len()) {
                    return Err(TemplateError::NotNormalized((*part).to_string()));
                }
                segs.push(Seg::Lit((*part).to_string()));
                continue;
            }
            let inner = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) if !inner.contains(['{', '}']) => inner,
                _ if !part.contains('}') => return Err(TemplateError::Unclosed(part.trim_start_matches('{').to_string())),
                _ => return Err(TemplateError::PartialSegment((*part).to_string())),
            };
            let (name, convertor) = match inner.split_once(':') {
                Some((n, c)) => (n.trim(), Some(c.trim())),
                None => (inner.trim(), None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(TemplateError::BadName(name.to_string()));
            }
            if names.contains(&name) {
                return Err(TemplateError::Duplicate(name.to_string()));
            }
            names.push(name);
            match convertor {
                None | Some("str" | "int" | "float" | "uuid") => segs.push(Seg::Param(name.to_string())),
                Some("path") => rest = Some(name.to_string()),
                Some(other) => return Err(TemplateError::Convertor(other.to_string())),
            }
        }
        Ok(PathTemplate { source: s.to_string(), segs, rest })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Parameter names, in order (a trailing `{name:path}` last).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segs
            .iter()
            .filter_map(|s| match s {
                Seg::Param(n) => Some(n.as_str()),
                Seg::Lit(_) => None,
            })
            .chain(self.rest.as_deref())
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// The literal path before the first parameter: the collection a write under this
    /// template belongs to (`/api/items` for `/api/items/{id}/reviews`).
    pub fn literal_root(&self) -> String {
        let mut root = String::new();
        for s in &self.segs {
            match s {
                Seg::Lit(l) => {
                    root.push('/');
                    root.push_str(l);
                }
                Seg::Param(_) => break,
            }
        }
        root
    }

    /// How this template stands to an entity's item template (`/api/articles/{slug}`): the
    /// name this template gives the item's identifying (last) parameter, when this template is
    /// the item or below it (`/api/articles/{s}/favorite` gives `s`), and whether it is the
    /// item itself. Literal segments must be equal; parameters match by position.
    pub fn under_item(&self, item: &PathTemplate) -> Option<(&str, bool)> {
        let Some(Seg::Param(_)) = item.segs.last() else { return None };
        if item.rest.is_some() || self.segs.len() < item.segs.len() || !self.starts_like(&item.segs) {
            return None;
        }
        let Seg::Param(name) = &self.segs[item.segs.len() - 1] else { return None };
        Some((name.as_str(), self.segs.len() == item.segs.len() && self.rest.is_none()))
    }

    /// Whether this template is the collection of an entity's item template: the item path
    /// without its identifying segment (`/api/articles` for `/api/articles/{slug}`).
    pub fn is_collection_of(&self, item: &PathTemplate) -> bool {
        let Some((Seg::Param(_), parent)) = item.segs.split_last() else { return false };
        item.rest.is_none() && self.rest.is_none() && self.segs.len() == parent.len() && self.starts_like(parent)
    }

    fn starts_like(&self, segs: &[Seg]) -> bool {
        self.segs.iter().zip(segs).all(|(a, b)| match (a, b) {
            (Seg::Lit(x), Seg::Lit(y)) => x == y,
            (Seg::Param(_), Seg::Param(_)) => true,
            _ => false,
        })
    }

    /// The parameters' byte ranges in `path`, or `None` when it does not match.
    pub fn matches(&self, path: &str) -> Option<Vec<Range<u32>>> {
        let mut spans = Vec::new();
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return None;
        }
        let mut pos = 1; // just after a '/'
        for (i, seg) in self.segs.iter().enumerate() {
            let end = path[pos..].find('/').map_or(path.len(), |e| pos + e);
            let part = &path[pos..end];
            match seg {
                Seg::Lit(l) if l == part => {}
                Seg::Lit(_) => return None,
                Seg::Param(_) if part.is_empty() => return None,
                Seg::Param(_) => spans.push(pos as u32..end as u32),
            }
            let last = i + 1 == self.segs.len();
            if end == path.len() {
                if !last {
                    return None;
                }
                // the whole path is used; a `{rest:path}` needs the '/' before it
                return self.rest.is_none().then_some(spans);
            }
            pos = end + 1;
        }
        match &self.rest {
            Some(_) => {
                spans.push(pos as u32..path.len() as u32);
                Some(spans)
            }
            // only `/` itself matches a template without segments
            None if self.segs.is_empty() => (path == "/").then_some(spans),
            None => None,
        }
    }

    /// Precedence weights per segment (higher is more specific): literal 3, parameter 2, then
    /// 4 for the end of an exact template or 1 for a rest that matches anything.
    pub(super) fn specificity(&self) -> Vec<u8> {
        let mut w: Vec<u8> = self.segs.iter().map(|s| if matches!(s, Seg::Lit(_)) { 3 } else { 2 }).collect();
        w.push(if self.rest.is_some() { 1 } else { 4 });
        w
    }

    /// Same shape: the same requests match (parameter names aside).
    pub(super) fn same_shape(&self, other: &PathTemplate) -> bool {
        self.rest.is_some() == other.rest.is_some()
            && self.segs.len() == other.segs.len()
            && self.segs.iter().zip(&other.segs).all(|(a, b)| match (a, b) {
                (Seg::Lit(x), Seg::Lit(y)) => x == y,
                (Seg::Param(_), Seg::Param(_)) => true,
                _ => false,
            })
    }
}

impl PartialEq for PathTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.same_shape(other)
    }
}

impl Eq for PathTemplate {}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The path parameters of a routed request: its template and the values' ranges in the path.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub template: Option<Arc<PathTemplate>>,
    pub spans: Vec<Range<u32>>,
}

impl Params {
    /// The value of parameter `name` in `path` (the normalized path the request was matched on).
    pub fn get<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let t = self.template.as_ref()?;
        let i = t.names().position(|n| n == name)?;
        let r = self.spans.get(i)?;
        path.get(r.start as usize..r.end as usize)
    }

    /// `name=value` pairs, for the access line.
    pub fn render(&self, path: &str) -> Option<String> {
        let t = self.template.as_ref()?;
        let mut out = String::new();
        for (name, r) in t.names().zip(&self.spans) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
            out.push('=');
            out.push_str(path.get(r.start as usize..r.end as usize).unwrap_or(""));
        }
        Some(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vals(t: &str, path: &str) -> Option<Vec<String>> {
        let t = PathTemplate::parse(t).unwrap();
        t.matches(path).map(|spans| spans.iter().map(|r| path[r.start as usize..r.end as usize].to_string()).collect())
    }

    #[test]
    fn one_segment_per_parameter() {
        assert_eq!(vals("/items/{id}", "/items/5"), Some(vec!["5".into()]));
        assert_eq!(vals("/items/{id}", "/items/"), None);
        assert_eq!(vals("/items/{id}", "/items"), None);
        assert_eq!(vals("/items/{id}", "/items/5/reviews"), None);
        assert_eq!(vals("/items/{id}/reviews", "/items/5/reviews"), Some(vec!["5".into()]));
        assert_eq!(vals("/a/{x}/b/{y}", "/a/1/b/2"), Some(vec!["1".into(), "2".into()]));
        assert_eq!(vals("/a/{x}/b/{y}", "/a/1/c/2"), None);
        assert_eq!(vals("/", "/"), Some(vec![]));
        assert_eq!(vals("/", "/x"), None);
    }

    #[test]
    fn path_convertor_takes_the_rest() {
        assert_eq!(vals("/files/{p:path}", "/files/a/b.txt"), Some(vec!["a/b.txt".into()]));
        assert_eq!(vals("/files/{p:path}", "/files/"), Some(vec!["".into()]));
        assert_eq!(vals("/files/{p:path}", "/files"), None);
        assert_eq!(vals("/files/{p:path}", "/filesx/a"), None);
    }

    #[test]
    fn refusals() {
        assert_eq!(PathTemplate::parse("items/{id}").unwrap_err(), TemplateError::NoSlash);
        assert!(matches!(PathTemplate::parse("/items/{id").unwrap_err(), TemplateError::Unclosed(_)));
        assert!(matches!(PathTemplate::parse("/items/x{id}").unwrap_err(), TemplateError::PartialSegment(_)));
        assert!(matches!(PathTemplate::parse("/f/{p:path}/x").unwrap_err(), TemplateError::RestNotLast(_)));
        assert!(matches!(PathTemplate::parse("/a/{x}/{x}").unwrap_err(), TemplateError::Duplicate(_)));
        assert!(matches!(PathTemplate::parse("/a/{x:regex}").unwrap_err(), TemplateError::Convertor(_)));
        assert!(matches!(PathTemplate::parse("/a/{1x}").unwrap_err(), TemplateError::BadName(_)));
        assert!(matches!(PathTemplate::parse("/a/../{x}").unwrap_err(), TemplateError::NotNormalized(_)));
    }

    #[test]
    fn params_by_name_and_root() {
        let t = Arc::new(PathTemplate::parse("/api/items/{item_id}/reviews/{rid}").unwrap());
        let path = "/api/items/7/reviews/3";
        let p = Params { spans: t.matches(path).unwrap(), template: Some(t.clone()) };
        assert_eq!(p.get(path, "item_id"), Some("7"));
        assert_eq!(p.get(path, "rid"), Some("3"));
        assert_eq!(p.get(path, "nope"), None);
        assert_eq!(p.render(path).as_deref(), Some("item_id=7 rid=3"));
        assert_eq!(t.literal_root(), "/api/items");
    }
}
