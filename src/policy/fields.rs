//! Field selection: `?fields=id,price,owner.name` returns only those members of a JSON
//! response, in objects, in arrays of objects (each element), and nested by dots. The parameter
//! never reaches the backend, and the cache stores the whole response (the parameter is not in
//! the key), so one stored entry serves every selection.
//!
//! The body is filtered in one pass without building a tree: what is kept is copied as the
//! backend wrote it, the rest skipped (`bench/callgrind` modes `big` and `fields`).
//!
//! A response that cannot be filtered passes untouched: not JSON, not 2xx, content-coded, a
//! range, or over the route's `max_body`. The header goes out before the body is read, so
//! that is decided from the header: a response selected from loses its `Content-Length`
//! (sent chunked) and gets a weak `ETag` derived from the backend's and the selection.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::registry::{keys, query_name, Env, MaterializeError, Scope, Spec};
use super::support::query;
use super::{Cut, Directives, Exchange, Flow, Policy};
use crate::model::diag::Diagnostics;
use crate::model::json::{NotJson, Scan};
use crate::model::units::{Size, Toggle};
use serde::Deserialize;
use toml::Spanned;
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use super::support::gather::{self, Gather, Gathered};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG};
use pingora::http::{RequestHeader, ResponseHeader};

/// Longest selector accepted, and most fields in one.
const MAX_SELECTOR: usize = 2048;
const MAX_FIELDS: usize = 100;

keys! {
    /// `?fields=a,b.c` selects members of JSON responses: `"on"`, `"off"` or a table.
    #[schema(example = "on")]
    fields: Spanned<Toggle<RawFields>>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    /// The query parameter; `fields` unless given.
    #[schema(default = "fields")]
    pub param: Option<Spanned<String>>,
    /// Larger responses pass unfiltered.
    pub max_body: Option<Spanned<Size>>,
}

/// The definition and the live policy: plain values, nothing to build.
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
    /// Names (as bytes: compared with the raw key, no decoding) and what to keep of each.
    Members(Vec<(Box<[u8]>, Selector)>),
}

impl Selector {
    /// `id,price,owner.name`; `owner` and `owner.name` together keep all of `owner`.
    pub fn parse(s: &str) -> Result<Selector, String> {
        if s.len() > MAX_SELECTOR {
            return Err(format!("the selector is longer than {MAX_SELECTOR} characters"));
        }
        let decoded = s.replace("%2C", ",").replace("%2c", ",");
        let mut root = Vec::new();
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

fn insert(members: &mut Vec<(Box<[u8]>, Selector)>, parts: &[&str]) {
    let Some((first, rest)) = parts.split_first() else { return };
    let at = match members.iter().position(|(k, _)| **k == *first.as_bytes()) {
        Some(at) => at,
        None => {
            members.push((first.as_bytes().into(), Selector::Members(Vec::new())));
            members.len() - 1
        }
    };
    let entry = &mut members[at].1;
    if rest.is_empty() {
        *entry = Selector::All;
    } else if let Selector::Members(children) = entry {
        insert(children, rest);
    }
}

/// Writes what `sel` keeps of the value here to `out`.
fn select(scan: &mut Scan<'_>, sel: &Selector, out: &mut Vec<u8>) -> Result<(), NotJson> {
    scan.ws();
    let members = match (sel, scan.peek()?) {
        (Selector::Members(m), b'{') => m,
        (Selector::Members(_), b'[') => return select_array(scan, sel, out),
        // the whole value, or a scalar (no members to select): copied as it is
        _ => {
            let start = scan.i;
            scan.skip()?;
            out.extend_from_slice(&scan.b[start..scan.i]);
            return Ok(());
        }
    };
    scan.i += 1;
    out.push(b'{');
    let mut first = true;
    loop {
        scan.ws();
        match scan.peek()? {
            b'}' => break,
            b'"' => {}
            _ => return Err(NotJson),
        }
        let key_start = scan.i;
        scan.string()?;
        let key = &scan.b[key_start..scan.i];
        scan.ws();
        if scan.peek()? != b':' {
            return Err(NotJson);
        }
        scan.i += 1;
        match member(members, key) {
            Some(child) => {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(key);
                out.push(b':');
                select(scan, child, out)?;
            }
            None => {
                scan.ws();
                scan.skip()?;
            }
        }
        scan.ws();
        match scan.peek()? {
            b',' => scan.i += 1,
            b'}' => break,
            _ => return Err(NotJson),
        }
    }
    scan.i += 1;
    out.push(b'}');
    Ok(())
}

fn select_array(scan: &mut Scan<'_>, sel: &Selector, out: &mut Vec<u8>) -> Result<(), NotJson> {
    scan.i += 1;
    out.push(b'[');
    scan.ws();
    if scan.peek()? == b']' {
        scan.i += 1;
        out.push(b']');
        return Ok(());
    }
    loop {
        select(scan, sel, out)?;
        scan.ws();
        match scan.peek()? {
            b',' => {
                scan.i += 1;
                out.push(b',');
            }
            b']' => {
                scan.i += 1;
                out.push(b']');
                return Ok(());
            }
            _ => return Err(NotJson),
        }
    }
}

/// The selector for the member whose quoted key is `key`. Selector names are plain ASCII, so a
/// key with an escape is decoded before comparing (rare), any other compared as it is.
fn member<'s>(members: &'s [(Box<[u8]>, Selector)], key: &[u8]) -> Option<&'s Selector> {
    let inner = &key[1..key.len() - 1];
    let find = |k: &[u8]| members.iter().find(|(name, _)| **name == *k).map(|(_, sel)| sel);
    if !inner.contains(&b'\\') {
        return find(inner);
    }
    let decoded: String = serde_json::from_slice(key).ok()?;
    find(decoded.as_bytes())
}

/// The selection of a whole JSON document.
pub fn filter(body: &[u8], sel: &Selector) -> Result<Vec<u8>, NotJson> {
    let mut scan = Scan::new(body);
    let mut out = Vec::with_capacity(body.len() / 2);
    select(&mut scan, sel, &mut out)?;
    scan.ws();
    if scan.i != body.len() {
        return Err(NotJson);
    }
    Ok(out)
}

#[derive(Debug, Default)]
pub struct FieldsScratch {
    selector: Option<Selector>,
    /// The raw selector, for the derived `ETag`.
    raw: String,
    body: Gather,
    result: Option<&'static str>,
}

impl FieldsScratch {
    /// Whether this response's body is to be rewritten (a selector was given).
    pub fn selects(&self) -> bool {
        self.selector.is_some()
    }
}

/// FNV-1a, for a short stable tag of the selection in the derived `ETag`.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl Spec for FieldSelection {
    type Keys = Keys;
    type Def = FieldSelection;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<FieldSelection> {
        let raw = match keys.fields.as_ref()?.get_ref() {
            Toggle::Off => return None,
            Toggle::On(raw) => raw.as_ref(),
        };
        let param = query_name(cx, &raw.and_then(|r| r.param.clone()), DEFAULT_PARAM, "param")?;
        let max_body = raw.and_then(|r| r.max_body.as_ref()).map_or(DEFAULT_MAX_BODY, |s| s.get_ref().0);
        Some(FieldSelection { param, max_body })
    }

    fn materialize(def: Option<&FieldSelection>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.cloned())
    }

    fn summary(def: &FieldSelection) -> String {
        format!("fields ?{}= up to {}", def.param, bytesize::ByteSize(def.max_body).display().iec())
    }
}

impl FieldSelection {
    fn filterable(&self, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if !(200..300).contains(&status) || status == 206 || resp.headers.contains_key(CONTENT_ENCODING) {
            return false;
        }
        let json = gather::media_type(resp).is_some_and(|t| t == "application/json" || t.ends_with("+json"));
        let fits = gather::content_length(resp).is_some_and(|n| n <= self.max_body);
        json && fits
    }
}

impl Policy for FieldSelection {
    type Scratch = FieldsScratch;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut FieldsScratch, _d: &mut Directives) -> Flow {
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

    fn on_upstream_request(&self, _x: &Exchange<'_>, up: &mut RequestHeader, _st: &mut FieldsScratch) -> Result<(), GatewayError> {
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
        st: &mut FieldsScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if st.selector.is_none() {
            return Ok(());
        }
        if x.req.method == http::Method::HEAD || !self.filterable(resp) {
            st.result = Some("passed");
            return Ok(());
        }
        // the header said it fits: the limit is never crossed unless the length was wrong
        let len = gather::content_length(resp);
        st.body.start(len, usize::try_from(self.max_body).unwrap_or(usize::MAX));
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

    fn on_response_body(&self, body: &mut Option<Bytes>, eos: bool, st: &mut FieldsScratch) -> Result<(), Cut> {
        let original = match st.body.push(body, eos) {
            Gathered::Whole(b) => b,
            Gathered::Held => return Ok(()),
            // given up: longer than its Content-Length said
            Gathered::Passing => {
                if st.selector.is_some() && st.result.is_none() {
                    st.result = Some("passed");
                }
                return Ok(());
            }
        };
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

    fn on_done(&self, st: &FieldsScratch, out: &mut Outcome) {
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
        assert!(filter(br#"{"id":1"#, &Selector::parse("id").unwrap()).is_err());
        assert!(filter(br#"{"id":1} x"#, &Selector::parse("id").unwrap()).is_err());
        // whitespace, escaped keys and strings holding structure
        let spaced = " { \"a\\u0062\" : [ 1 , 2 ] , \"s\" : \"}]{[\\\"\" , \"id\" : { \"x\" : true } } ";
        assert_eq!(sel("ab,id", spaced), r#"{"a\u0062":[ 1 , 2 ],"id":{ "x" : true }}"#);
        assert_eq!(sel("s", spaced), r#"{"s":"}]{[\""}"#);
        assert_eq!(sel("id", "[]"), "[]");
        assert_eq!(sel("id.x", r#"{"id":[{"x":1,"y":2},3]}"#), r#"{"id":[{"x":1},3]}"#);
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
