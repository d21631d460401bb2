//! `fastgate check --openapi`: the routes file against the backend's own description. Each
//! operation is routed as a request would be (a sample path, its method, the table's
//! precedence), which tells which route serves it, which routes serve nothing, and which
//! never win.

use super::health::Known;
use super::init::function_name;
use super::{Document, Operation};
use crate::model::entity::Step;
use crate::config::plan::{Plan, RouteDef, RouteTarget};
use crate::model::matcher::{in_precedence_order, PathMatch};
use http::Method;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable, for CI: `no_operation`, `uncovered`, `shadowed`, `duplicate_operation`,
    /// `cache_on_writes_only`, `looser_than_schema`, `unknown_health_check`,
    /// `secured_health_check`, `entity_without_identifier`, `entity_not_declared`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    pub message: String,
}

fn finding(severity: Severity, kind: &'static str, route: Option<&str>, op: Option<&Operation>, message: String) -> Finding {
    Finding {
        severity,
        kind,
        route: route.map(str::to_string),
        operation: op.map(|o| format!("{} {}", o.method, o.path)),
        message,
    }
}

/// A path the operation's template matches: each parameter as `1` (every convertor but
/// `uuid` takes it).
fn sample(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') && s.ends_with('}') { "1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn catch_all(r: &RouteDef) -> bool {
    matches!(&r.matcher.path, PathMatch::Prefix(p) if p.is_empty() || p == "/")
}

pub fn audit(doc: &Document, plan: &Plan) -> Vec<Finding> {
    use Severity::{Error, Warning};
    let mut out = Vec::new();
    let ordered = in_precedence_order(&plan.routes, |r| &r.matcher);
    // which route each operation reaches, and every route that would match it
    let mut wins: BTreeMap<&str, usize> = BTreeMap::new();
    let mut matched: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    let mut won: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &doc.operations {
        let path = sample(&op.path);
        let Ok(method) = Method::from_bytes(op.method.as_bytes()) else { continue };
        let candidates: Vec<&&RouteDef> = ordered.iter().filter(|r| r.matcher.matches(&method, None, &path).is_some()).collect();
        for r in &candidates {
            matched.entry(r.name.as_str()).or_default().push(op);
        }
        match candidates.first() {
            Some(winner) if !catch_all(winner) => {
                *wins.entry(winner.name.as_str()).or_default() += 1;
                won.entry(winner.name.as_str()).or_default().push(op);
            }
            Some(winner) => out.push(finding(
                Warning,
                "uncovered",
                Some(&winner.name),
                Some(op),
                format!("only the catch-all route `{}` serves it: it gets no policy of its own", winner.name),
            )),
            None => out.push(finding(Error, "uncovered", None, Some(op), "no route serves it: the gateway answers 404".into())),
        }
        if let Some(r) = candidates.first().filter(|r| !catch_all(r)) {
            limits(&mut out, doc, r, op);
        }
    }
    for r in &plan.routes {
        if catch_all(r) {
            continue;
        }
        match matched.get(r.name.as_str()) {
            None => out.push(finding(
                Error,
                "no_operation",
                Some(&r.name),
                None,
                format!("`{}` matches no operation of the backend: a typo, or a route the app no longer has", r.matcher),
            )),
            Some(ops) if !wins.contains_key(r.name.as_str()) => {
                let op = ops[0];
                let path = sample(&op.path);
                let method = Method::from_bytes(op.method.as_bytes()).unwrap_or(Method::GET);
                let winner = ordered.iter().find(|w| w.matcher.matches(&method, None, &path).is_some()).map_or("?", |w| w.name.as_str());
                out.push(finding(
                    Error,
                    "shadowed",
                    Some(&r.name),
                    Some(op),
                    format!("every operation it matches is served by a more specific route (`{winner}` here): it never applies"),
                ));
            }
            Some(ops) => {
                let cached = r.policy.cache.as_ref().is_some_and(|c| c.policy.is_some());
                if cached && let Some(served) = won.get(r.name.as_str()) {
                    entities(&mut out, doc, r, served);
                }
                if cached && !ops.iter().any(|o| o.method == "GET" || o.method == "HEAD") {
                    out.push(finding(
                        Warning,
                        "cache_on_writes_only",
                        Some(&r.name),
                        Some(ops[0]),
                        "caching is on, but every operation here is a write: nothing is ever stored (writes are never cached)".into(),
                    ));
                }
            }
        }
    }
    duplicates(&mut out, doc);
    health_checks(&mut out, doc, plan, &matched);
    out
}

/// A cached route's entities against its answer's schema: each occurrence the route gives
/// must find its identifier there (else no tag is read, and writes never drop the entry by it);
/// a schema with an `id` that is no entity is said once, since writes to it drop this route's
/// entries only by path or TTL.
fn entities(out: &mut Vec<Finding>, doc: &Document, r: &RouteDef, served: &[&Operation]) {
    let Some(get) = served.iter().find(|o| o.method == "GET") else { return };
    let Some(schema) = get.response.as_ref() else { return };
    let Some(def) = r.policy.cache.as_ref() else { return };
    let answers: Vec<&serde_json::Value> = served.iter().filter_map(|o| o.response.as_ref()).collect();
    for (steps, entity, id) in def.entities.reads.iter() {
        let found: Vec<&serde_json::Value> = answers.iter().filter_map(|a| doc.schema_at(a, steps)).collect();
        let at = found.first();
        if !found.iter().any(|s| doc.has_property(s, id)) {
            let path = if steps.is_empty() { "/".to_string() } else { steps.iter().map(|s| match s { Step::Each => "/*".to_string(), Step::Member(m) => format!("/{m}") }).collect() };
            let why = if at.is_none() { "no answer's schema has anything there" } else { "the schema there has no such member" };
            out.push(finding(
                Severity::Error,
                "entity_without_identifier",
                Some(&r.name),
                Some(get),
                format!("`{entity}` at {path} is identified by `{id}`, but {why}: no tag is read, so writes to it never drop this route's entries"),
            ));
        }
    }
    let inferred = super::entities::infer(doc);
    let declared: BTreeSet<&str> = def.entities.reads.iter().map(|(_, e, _)| e).collect();
    for name in doc.contained(schema) {
        let known = inferred.iter().any(|e| e.schemas.contains(&name) && declared.contains(e.name.as_str()));
        let has_id = doc.has_property(&serde_json::json!({ "$ref": format!("#/components/schemas/{name}") }), "id");
        if has_id && !known && !inferred.iter().any(|e| e.schemas.contains(&name)) {
            out.push(finding(
                Severity::Warning,
                "entity_without_identifier",
                Some(&r.name),
                Some(get),
                format!("the answer holds `{name}`, which has an `id` but is no entity (no GET item route answers it): a write that changes one drops this route's entries only by its path rules, or they live out their TTL"),
            ));
        } else if !known && let Some(e) = inferred.iter().find(|e| e.schemas.contains(&name)) {
            out.push(finding(
                Severity::Warning,
                "entity_not_declared",
                Some(&r.name),
                Some(get),
                format!("the answer holds `{name}` (the entity `{}`), but the route's `entities` does not say where: writes to one do not drop this route's entries", e.name),
            ));
        }
    }
}

/// Each upstream that serves the document's operations must check a path the app serves
/// without credentials: a path it answers 404 (or 401) marks a healthy app down, and the
/// gateway then refuses every request.
fn health_checks(out: &mut Vec<Finding>, doc: &Document, plan: &Plan, matched: &BTreeMap<&str, Vec<&Operation>>) {
    let serving: BTreeSet<&str> = plan
        .routes
        .iter()
        .filter(|r| matched.contains_key(r.name.as_str()))
        .filter_map(|r| match &r.target {
            RouteTarget::Upstream(u) => Some(u.as_str()),
            RouteTarget::Deny(_) => None,
        })
        .collect();
    for name in serving {
        let Some(hc) = plan.upstreams.get(name).and_then(|u| u.health_check.as_ref()) else { continue };
        match super::health::known(doc, &hc.path) {
            Known::Unknown => out.push(finding(
                Severity::Error,
                "unknown_health_check",
                None,
                None,
                format!(
                    "upstream `{name}` checks `{}`, which is neither a GET operation of the document nor the document's own path: if the app answers it with anything but 200, the upstream goes down and every request is refused (503)",
                    hc.path
                ),
            )),
            Known::Secured => out.push(finding(
                Severity::Warning,
                "secured_health_check",
                None,
                None,
                format!("upstream `{name}` checks `{}`, which requires credentials: the check sends none, so a 401 or 403 marks the app down", hc.path),
            )),
            Known::Open => {}
        }
    }
}

/// The same endpoint function and method under two paths that differ only in their prefix:
/// a router included twice.
fn duplicates(out: &mut Vec<Finding>, doc: &Document) {
    let mut by_fn: BTreeMap<(String, &str), Vec<&Operation>> = BTreeMap::new();
    for op in &doc.operations {
        by_fn.entry((function_name(op), op.method.as_str())).or_default().push(op);
    }
    for ((name, _), ops) in by_fn {
        if ops.len() < 2 || !ops.iter().all(|o| super::init::twin(&o.path, &ops[0].path)) {
            continue;
        }
        let paths: Vec<&str> = ops.iter().map(|o| o.path.as_str()).collect();
        out.push(finding(
            Severity::Warning,
            "duplicate_operation",
            None,
            Some(ops[0]),
            format!("`{name}` is reachable under {}: a router included twice?", paths.join(" and ")),
        ));
    }
}

/// Limits in the route looser than the operation's schema.
fn limits(out: &mut Vec<Finding>, doc: &Document, r: &RouteDef, op: &Operation) {
    if let Some(bound) = op.request.as_ref().and_then(|s| doc.max_json_size(s)) {
        // `init` writes twice the bound (whitespace and key order are the client's)
        let cap = (bound * 2).max(1024);
        let max_body = r.policy.body.as_ref().map_or(crate::policy::body::MAX_BODY, |b| b.max_body);
        if max_body > cap * 4 {
            out.push(finding(
                Severity::Warning,
                "looser_than_schema",
                Some(&r.name),
                Some(op),
                format!(
                    "`max_body` is {} bytes but the request schema allows at most {bound} bytes of JSON: a cap near {cap} refuses oversized bodies before the backend reads them",
                    max_body
                ),
            ));
        }
    }
    if op.method != "GET" {
        return;
    }
    let Some(p) = &r.policy.pagination else { return };
    if let Some(max) = op.query.iter().find(|q| q.name == p.param).and_then(|q| q.maximum)
        && p.max > max
    {
        out.push(finding(
            Severity::Warning,
            "looser_than_schema",
            Some(&r.name),
            Some(op),
            format!("`pagination.max` is {} but the schema's `{}` maximum is {max}: pages between are refused by the backend (422)", p.max, p.param),
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn samples() {
        assert_eq!(sample("/api/items/{item_id}/reviews"), "/api/items/1/reviews");
        assert_eq!(sample("/"), "/");
    }
}
