//! Tag templates (`"item:{item_id}"`, `"positions:{header:X-User}"`): the tags an entry is
//! stored with and the tags a successful write purges, filled from the request; and the
//! placeholder syntax they share with invalidation patterns.

use super::cookie_value;
use http::header::{HeaderMap, HeaderName};

/// A piece of a text with `{...}` placeholders: a literal run, or a placeholder's inside.
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Hole(&'a str),
}

/// Splits `s` at its `{...}` placeholders; tag templates and invalidation patterns share it.
pub(crate) fn split_placeholders(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let close = rest[open..].find('}').ok_or_else(|| format!("unclosed `{{` in {s:?}"))? + open;
        pieces.push(Piece::Hole(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// A tag (stored with an entry, or purged after a successful write), with `{header:NAME}`,
/// `{query:NAME}`, `{cookie:NAME}` and path parameters `{NAME}` filled from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Header(HeaderName),
    Query(String),
    Cookie(String),
    Param(String),
}

impl TagTemplate {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for piece in split_placeholders(s)? {
            let inner = match piece {
                Piece::Text(t) => {
                    parts.push(TemplatePart::Text(t.to_string()));
                    continue;
                }
                Piece::Hole(inner) => inner,
            };
            parts.push(match inner.split_once(':') {
                Some(("header", n)) => TemplatePart::Header(
                    HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).map_err(|_| format!("invalid header name {n:?}"))?,
                ),
                Some(("query", n)) => TemplatePart::Query(n.trim().to_string()),
                Some(("cookie", n)) => TemplatePart::Cookie(n.trim().to_string()),
                None if !inner.trim().is_empty() => TemplatePart::Param(inner.trim().to_string()),
                _ => return Err(format!("unknown placeholder {{{inner}}}; use a path parameter {{NAME}}, {{header:NAME}}, {{query:NAME}} or {{cookie:NAME}}")),
            });
        }
        Ok(TagTemplate { parts })
    }

    /// The path parameters the template uses.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Param(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The tag for this request; `None` when a placeholder has no value.
    pub fn render<'a>(&self, headers: &HeaderMap, query: Option<&str>, param: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Header(h) => out.push_str(headers.get(h)?.to_str().ok()?),
                TemplatePart::Query(q) => out.push_str(query?.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == q).then_some(v)
                })?),
                TemplatePart::Cookie(c) => out.push_str(cookie_value(headers, c)?),
                TemplatePart::Param(n) => out.push_str(param(n)?),
            }
        }
        Some(out)
    }
}
