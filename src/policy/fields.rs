//! Field selection: `?fields=id,price,owner.name` returns only those members of a JSON
//! response, in objects, in arrays of objects (each element), and nested by dots. The parameter
//! never reaches the backend, and the cache stores the whole response (the parameter is not in
//! the key), so one stored entry serves every selection.
//!
//! The body is filtered without building a tree: each object is read as (key, raw value)
//! pairs, and what is kept is copied as the backend wrote it; only the members a nested
//! selector goes into are parsed further.
//!
//! A response that cannot be filtered passes untouched: not JSON, not 2xx, content-coded, a
//! range, or over the route's `max_body`. The header goes out before the body is read, so
//! that is decided from the header: a response selected from loses its `Content-Length`
//! (sent chunked) and gets a weak `ETag` derived from the backend's and the selection.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{query, Cut, Directives, Exchange, Flow, Policy};
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

/// Longest selector accepted, and most fields in one.
const MAX_SELECTOR: usize = 2048;
const MAX_FIELDS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSelection {
    /// The query parameter (`fields`).
    pub param: String,
    /// Bodies longer than this pass untouched.
    pub max_body: u64,
}

pub const DEFAULT_PARAM: &str = "fields";
pub const DEFAULT_MAX_BODY: u64 = 8 * 1024 * 1024;

/// What to keep of a value: all of it, or these members (each with what to keep of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Members(BTreeMap<String, Selector>),
}

impl Selector {
    /// `id,price,owner.name`; `owner` and `owner.name` together keep all of `owner`.
    pub fn parse(s: &str) -> Result<Selector, String> {
        if s.len() > MAX_SELECTOR {
            return Err(format!("the selector is longer than {MAX_SELECTOR} characters"));
        }
        let decoded = s.replace("%2C", ",").replace("%2c", ",");
        let mut root = BTreeMap::new();
        let mut count = 0;
        for field in decoded.split(',') {
            let field = field.trim();
            count += 1;
            if count > MAX_FIELDS {
                return Err(format!("more than {MAX_FIELDS} fields"));
            }
            let parts: Vec<&str> = field.split('.').collect();
            if let Some(bad) = parts.iter().find(|p| !valid_name(p)) {
                return Err(if field.is_empty() {
                    "an empty field name (two commas in a row, or one at an end)".to_string()
                } else if bad.is_empty() {
                    format!("`{field}` has an empty part (dots must separate names)")
                } else {
                    format!("`{field}`: names are letters, digits, `_` and `-`")
                });
            }
            insert(&mut root, &parts);
        }
        Ok(Selector::Members(root))
    }
}

fn valid_name(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn insert(map: &mut BTreeMap<String, Selector>, parts: &[&str]) {
    let Some((first, rest)) = parts.split_first() else { return };
    if rest.is_empty() {
        map.insert(first.to_string(), Selector::All);
        return;
    }
    let entry = map.entry(first.to_string()).or_insert_with(|| Selector::Members(BTreeMap::new()));
    if let Selector::Members(children) = entry {
        insert(children, rest);
    }
}

/// An object's members in order, values unparsed.
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some((k, v)) = m.next_entry::<std::borrow::Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Writes what `sel` keeps of `raw` to `out`.
fn select(raw: &RawValue, sel: &Selector, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let text = raw.get();
    let members = match sel {
        Selector::All => {
            out.extend_from_slice(text.as_bytes());
            return Ok(());
        }
        Selector::Members(m) => m,
    };
    match text.as_bytes().first() {
        Some(b'{') => {
            let Members(pairs) = serde_json::from_str(text)?;
            out.push(b'{');
            let mut first = true;
            for (k, v) in &pairs {
                let Some(child) = members.get(k.as_ref()) else { continue };
                if !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut *out, k.as_ref())?;
                out.push(b':');
                select(v, child, out)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                select(item, sel, out)?;
            }
            out.push(b']');
        }
        // a scalar has no members to select: kept as it is
        _ => out.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

/// The selection of a whole JSON document.
pub fn filter(body: &[u8], sel: &Selector) -> Result<Vec<u8>, serde_json::Error> {
    let raw: &RawValue = serde_json::from_slice(body)?;
    let mut out = Vec::with_capacity(body.len() / 2);
    select(raw, sel, &mut out)?;
    Ok(out)
}

#[derive(Debug, Default)]
pub struct FieldsState {
    selector: Option<Selector>,
    /// The raw selector, for the derived `ETag`.
    raw: String,
    gathering: bool,
    body: BytesMut,
    result: Option<&'static str>,
}

/// FNV-1a, for a short stable tag of the selection in the derived `ETag`.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl FieldSelection {
    fn filterable(&self, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if !(200..300).contains(&status) || status == 206 || resp.headers.contains_key(CONTENT_ENCODING) {
            return false;
        }
        let json = resp
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
        let fits = resp
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .is_some_and(|n| n <= self.max_body);
        json && fits
    }
}

impl Policy for FieldSelection {
    type State = FieldsState;

    fn on_request(&self, x: &Exchange<'_>, st: &mut FieldsState, _d: &mut Directives) -> Flow {
        let Some(raw) = query::param(x.req.uri.query(), &self.param) else { return Flow::Continue };
        match Selector::parse(raw) {
            Ok(sel) => {
                st.selector = Some(sel);
                st.raw = raw.to_string();
                Flow::Continue
            }
            Err(e) => {
                let detail = format!("`{}`: {e}; write names separated by commas, nested ones with dots: `id,owner.name`", self.param);
                Flow::Respond(GatewayError::new(Problem::BadFieldSelector, detail))
            }
        }
    }

    fn on_upstream_request(&self, _x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut FieldsState) -> Result<(), GatewayError> {
        if query::param(up.uri.query(), &self.param).is_none() {
            return Ok(());
        }
        query::set_param(up, &self.param, None)
            .map_err(|e| GatewayError::new(Problem::Internal, format!("removing `{}`: {e}", self.param)))
    }

    async fn on_response(
        &self,
        x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut FieldsState,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if st.selector.is_none() {
            return Ok(());
        }
        if x.req.method == http::Method::HEAD || !self.filterable(resp) {
            st.result = Some("passed");
            return Ok(());
        }
        st.gathering = true;
        resp.remove_header(&CONTENT_LENGTH);
        let tag = fnv(&st.raw);
        let etag = resp.headers.get(ETAG).and_then(|v| v.to_str().ok()).map(|e| {
            let opaque = e.trim_start_matches("W/").trim_matches('"');
            format!("W/\"{opaque}-f{tag:08x}\"")
        });
        match etag {
            Some(e) => {
                let _ = resp.insert_header(ETAG, e);
            }
            None => {
                resp.remove_header(&ETAG);
            }
        }
        Ok(())
    }

    fn on_response_body(&self, body: &mut Option<Bytes>, eos: bool, st: &mut FieldsState) -> Result<(), Cut> {
        if !st.gathering {
            return Ok(());
        }
        if let Some(chunk) = body.take() {
            st.body.extend_from_slice(&chunk);
        }
        if !eos {
            return Ok(());
        }
        st.gathering = false;
        let original = std::mem::take(&mut st.body).freeze();
        let Some(sel) = &st.selector else { return Ok(()) };
        *body = Some(match filter(&original, sel) {
            Ok(selected) => {
                st.result = Some("selected");
                Bytes::from(selected)
            }
            // the header said JSON, the body is not: it goes as it came
            Err(_) => {
                st.result = Some("passed");
                original
            }
        });
        Ok(())
    }

    fn on_done(&self, st: &FieldsState, out: &mut Outcome) {
        out.fields = st.result;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sel(s: &str, body: &str) -> String {
        String::from_utf8(filter(body.as_bytes(), &Selector::parse(s).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn selects_members_nested_and_in_arrays() {
        let doc = r#"{"id":1,"name":"a \"b\"","price":2.5,"owner":{"name":"x","email":"e"},"tags":["t"]}"#;
        assert_eq!(sel("id,price", doc), r#"{"id":1,"price":2.5}"#);
        assert_eq!(sel("owner.name", doc), r#"{"owner":{"name":"x"}}"#);
        assert_eq!(sel("owner,owner.name", doc), r#"{"owner":{"name":"x","email":"e"}}"#);
        assert_eq!(sel("name,tags", doc), r#"{"name":"a \"b\"","tags":["t"]}"#);
        assert_eq!(sel("missing", doc), "{}");
        let list = r#"[{"id":1,"o":{"n":1,"m":2}},{"id":2,"o":null},{"id":3}]"#;
        assert_eq!(sel("id,o.n", list), r#"[{"id":1,"o":{"n":1}},{"id":2,"o":null},{"id":3}]"#);
        let page = r#"{"items":[{"id":1,"x":2}],"total":1}"#;
        assert_eq!(sel("items.id,total", page), r#"{"items":[{"id":1}],"total":1}"#);
        assert_eq!(sel("id", "\"just a string\""), "\"just a string\"");
        assert!(filter(b"{not json", &Selector::parse("id").unwrap()).is_err());
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in ["", "a,,b", "a.", ".a", "a..b", "a b", "a,b,", "a;b"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Selector::parse(&"a,".repeat(101)).is_err());
        assert!(Selector::parse("id, price").is_ok());
        assert!(Selector::parse("id%2Cprice").is_ok());
    }
}
