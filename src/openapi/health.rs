//! Which path an upstream's active health check should GET, chosen from the backend's own
//! document. A check on a path the app does not serve takes a healthy app off the air (the
//! gateway refuses every request once the check fails), so `init` writes a path only after
//! the app answered it with 200, the one status the check accepts; and `check --openapi`
//! reports a configured path the document does not know.
//!
//! The rules, in order:
//! 1. a GET operation without required parameters or security whose path, function name or
//!    tag says health (`health`, `healthz`, `health-check`, `livez`, `readyz`, `ping`,
//!    `status`...);
//! 2. the path the document itself was fetched from (FastAPI serves it without credentials;
//!    `openapi_url` may put it under a prefix, `/api/v1/openapi.json`);
//! 3. no active check.

use super::init::function_name;
use super::{Document, Operation};
use crate::model::template::PathTemplate;

/// Words that mark a health endpoint, best first. A word starting with `health` counts as
/// `health` (`healthz`, `healthcheck`).
const WORDS: [&str; 7] = ["health", "livez", "liveness", "readyz", "readiness", "ping", "status"];

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase)
}

/// The rank of the best health word in `text` (lower is better).
fn rank(text: &str) -> Option<usize> {
    words(text).filter_map(|w| if w.starts_with("health") { Some(0) } else { WORDS.iter().position(|k| *k == w) }).min()
}

/// How strongly `op` says it is a health endpoint: the word's rank, then where it was found
/// (path, function name, tag), then the shorter path. `None` when it is not one or cannot be
/// checked (parameters, credentials, not a GET).
fn score(op: &Operation) -> Option<(usize, usize, usize)> {
    if op.method != "GET" || op.secured || op.required_params || op.path.contains('{') {
        return None;
    }
    let by_path = rank(&op.path).map(|r| (r, 0));
    let by_name = rank(&function_name(op)).map(|r| (r, 1));
    let by_tag = op.tags.iter().filter_map(|t| rank(t)).min().map(|r| (r, 2));
    let (r, place) = [by_path, by_name, by_tag].into_iter().flatten().min()?;
    Some((r, place, op.path.len()))
}

/// The document's health operations, best first.
pub fn candidates(doc: &Document) -> Vec<&Operation> {
    let mut found: Vec<(_, &Operation)> = doc.operations.iter().filter_map(|o| Some((score(o)?, o))).collect();
    found.sort_by_key(|(s, _)| *s);
    found.into_iter().map(|(_, o)| o).collect()
}

/// The check `init` writes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Rule 1: the app's own health operation (its function name).
    Operation { path: String, name: String },
    /// Rule 2: the path the document was fetched from.
    Document { path: String, passed_over: Vec<String> },
    /// Rule 3: no active check. `unprobed` is a health operation that could not be tried.
    None { why: String, unprobed: Option<String> },
}

/// Chooses the check: each candidate is `probe`d (`Ok(status)`, or why the app could not be
/// asked) and taken only on 200. `probe` is `None` where the app cannot be reached.
pub fn choose(doc: &Document, probe: &dyn Fn(&str) -> Result<u16, String>) -> Choice {
    let mut passed_over = Vec::new();
    let mut unreachable: Option<(String, String)> = None;
    let found = candidates(doc);
    for op in &found {
        match probe(&op.path) {
            Ok(200) => return Choice::Operation { path: op.path.clone(), name: function_name(op) },
            Ok(status) => passed_over.push(format!("{} answered {status}", op.path)),
            Err(e) => {
                unreachable.get_or_insert((op.path.clone(), e));
            }
        }
    }
    if let Some(path) = &doc.url_path {
        match probe(path) {
            Ok(200) => return Choice::Document { path: path.clone(), passed_over },
            Ok(status) => passed_over.push(format!("{path} answered {status}")),
            Err(e) => {
                unreachable.get_or_insert((path.clone(), e));
            }
        }
    }
    let mut why = Vec::new();
    if found.is_empty() {
        why.push("no GET operation without parameters or credentials says health".to_string());
    }
    why.extend(passed_over);
    if doc.url_path.is_none() {
        why.push("the document was read from a file, so there is no document path to check".into());
    }
    let unprobed = match unreachable {
        Some((path, e)) => {
            why.push(format!("the app could not be asked ({e})"));
            Some(path)
        }
        None => None,
    };
    Choice::None { why: why.join("; "), unprobed }
}

/// What the document says of a configured check path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// A GET operation without security, or the document's own path.
    Open,
    /// A GET operation that requires credentials, which the check never sends.
    Secured,
    /// Neither an operation nor the document's path: likely a 404.
    Unknown,
}

pub fn known(doc: &Document, path: &str) -> Known {
    let path = path.split('?').next().unwrap_or(path);
    if doc.url_path.as_deref() == Some(path) {
        return Known::Open;
    }
    let served = |op: &&Operation| {
        op.method == "GET"
            && (op.path == path || PathTemplate::parse(&op.path).ok().is_some_and(|t| t.matches(path).is_some()))
    };
    // an exact template wins over a parameterized one (`/users/me` before `/users/{id}`)
    let exact = doc.operations.iter().find(|o| o.method == "GET" && o.path == path);
    match exact.or_else(|| doc.operations.iter().find(served)) {
        Some(op) if op.secured => Known::Secured,
        Some(_) => Known::Open,
        None => Known::Unknown,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(paths: serde_json::Value, url: Option<&str>) -> Document {
        let d = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths});
        let mut doc = Document::parse(d.to_string().as_bytes(), "test").unwrap();
        doc.url_path = url.map(str::to_string);
        doc
    }

    fn get(id: &str) -> serde_json::Value {
        json!({"get": {"operationId": id, "responses": {"200": {}}}})
    }

    #[test]
    fn candidates_rank_words_places_and_exclude_what_cannot_be_checked() {
        let d = doc(
            json!({
                "/api/v1/utils/health-check/": get("health_check_api_v1_utils_health_check__get"),
                "/api/v1/status": get("status_api_v1_status_get"),
                "/api/v1/ping": get("ping_api_v1_ping_get"),
                "/api/v1/items/{id}/status": get("item_status_api_v1_items__id__status_get"),
                "/me/health": {"get": {"security": [{"b": []}], "responses": {"200": {}}}},
                "/probe": {"get": {"operationId": "probe_probe_get", "tags": ["liveness"], "responses": {"200": {}}}},
                "/search": {"get": {"parameters": [{"name": "q", "in": "query", "required": true}], "tags": ["health"], "responses": {}}},
                "/authors": get("list_authors_authors_get"),
            }),
            None,
        );
        let paths: Vec<&str> = candidates(&d).iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, ["/api/v1/utils/health-check/", "/probe", "/api/v1/ping", "/api/v1/status"]);
    }

    #[test]
    fn choose_probes_and_falls_back() {
        let d = doc(json!({"/api/v1/utils/health-check/": get("h"), "/items": get("items")}), Some("/api/v1/openapi.json"));
        let ok = |_: &str| Ok(200);
        assert_eq!(
            choose(&d, &ok),
            Choice::Operation { path: "/api/v1/utils/health-check/".into(), name: "h".into() }
        );
        // the operation answers 404: the document's path
        let only_doc = |p: &str| Ok(if p.ends_with("openapi.json") { 200 } else { 404 });
        assert_eq!(
            choose(&d, &only_doc),
            Choice::Document { path: "/api/v1/openapi.json".into(), passed_over: vec!["/api/v1/utils/health-check/ answered 404".into()] }
        );
        // nothing answers 200: no check, and every reason
        let none = |_: &str| Ok(503);
        let Choice::None { why, unprobed } = choose(&d, &none) else { panic!() };
        assert!(why.contains("health-check/ answered 503") && why.contains("openapi.json answered 503"), "{why}");
        assert_eq!(unprobed, None);
        // a file, the app down: the candidate is named but not written as a check
        let mut file = d;
        file.url_path = None;
        let down = |_: &str| Err("connection refused".to_string());
        let Choice::None { why, unprobed } = choose(&file, &down) else { panic!() };
        assert!(why.contains("read from a file") && why.contains("connection refused"), "{why}");
        assert_eq!(unprobed.as_deref(), Some("/api/v1/utils/health-check/"));
        let bare = doc(json!({"/items": get("items")}), None);
        let Choice::None { why, .. } = choose(&bare, &ok) else { panic!() };
        assert!(why.starts_with("no GET operation without parameters or credentials says health"), "{why}");
    }

    #[test]
    fn known_paths() {
        let d = doc(
            json!({"/healthz": get("h"), "/users/me": {"get": {"security": [{"b": []}], "responses": {}}}, "/users/{id}": get("u")}),
            Some("/api/openapi.json"),
        );
        assert_eq!(known(&d, "/healthz"), Known::Open);
        assert_eq!(known(&d, "/api/openapi.json"), Known::Open);
        assert_eq!(known(&d, "/users/me"), Known::Secured);
        assert_eq!(known(&d, "/users/7"), Known::Open);
        assert_eq!(known(&d, "/openapi.json"), Known::Unknown);
    }
}
