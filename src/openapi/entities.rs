//! Entities read from the document (`fastgate init`, `fastgate check --openapi`):
//! - a GET item route (`/api/articles/{slug}`) whose answer holds a schema with a property
//!   named like its last parameter (`ArticleOut.slug`) makes that schema an entity, named
//!   after it (`Article`) and identified by that property;
//! - other schemas with the same identifying property are the same entity (a `User` with its
//!   `username` is the `Profile` of `/api/profiles/{username}`), unless the property is a bare
//!   `id`, which says nothing of what it identifies;
//! - a route's answers show an entity wherever its schema occurs in them (`/articles/*`);
//! - the entity's lists change on every write to an item (`lists = "filtered"`) when the list
//!   GET filters by something that is not a plain field of the item (`?favorited=alice`).

use super::{ref_name, Document, Operation};
use crate::model::entity::{ListChange, Step, PAGING};
use crate::model::template::PathTemplate;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

#[derive(Debug, Clone)]
pub struct Inferred {
    pub name: String,
    pub id: String,
    /// Its item paths: more than one when a router is included twice.
    pub items: Vec<String>,
    /// The schemas that are this entity.
    pub schemas: BTreeSet<String>,
    /// Why it is one: the item route and its schema.
    pub why: String,
    pub lists: ListChange,
    pub lists_why: Option<String>,
}

/// Suffixes FastAPI apps give the schemas of one resource (`ItemPublic`, `ArticleOut`).
const SUFFIXES: [&str; 8] = ["Response", "Public", "Schema", "Detail", "Model", "Read", "Out", "DB"];

fn entity_name(schema: &str) -> String {
    SUFFIXES.iter().find_map(|s| schema.strip_suffix(s).filter(|n| !n.is_empty())).unwrap_or(schema).to_string()
}

impl Document {
    /// The object schema `schema` stands for, `$ref` resolved; `anyOf` (nullable) to its
    /// non-null branch.
    fn object<'a>(&'a self, schema: &'a Value) -> Option<(&'a serde_json::Map<String, Value>, Option<&'a str>)> {
        let name = ref_name(schema);
        let s = self.resolve(schema)?;
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            return Some((props, name));
        }
        None
    }

    /// The first named schema under `schema` (breadth first, a few levels) with a property
    /// `id`, and whose name starts with `stem` (any case) when one is given.
    fn find_with(&self, schema: &Value, id: &str, stem: Option<&str>) -> Option<String> {
        let mut level = vec![schema];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in level {
                let name = ref_name(s);
                let Some(r) = self.resolve(s) else { continue };
                let props = r.get("properties").and_then(Value::as_object);
                if let Some(n) = name
                    && props.is_some_and(|p| p.contains_key(id))
                    && stem.is_none_or(|st| n.to_ascii_lowercase().starts_with(&st.to_ascii_lowercase()))
                {
                    return Some(n.to_string());
                }
                next.extend(props.into_iter().flat_map(|p| p.values()));
                for k in ["anyOf", "oneOf", "allOf"] {
                    next.extend(r.get(k).and_then(Value::as_array).into_iter().flatten());
                }
                next.extend(r.get("items"));
            }
            level = next;
        }
        None
    }

    /// The schema at `steps` in `schema`: members through properties, `*` through items;
    /// nullable unions are looked through.
    pub fn schema_at<'a>(&'a self, schema: &'a Value, steps: &[Step]) -> Option<&'a Value> {
        let s = self.resolve(schema)?;
        let s = match s.get("anyOf").and_then(Value::as_array) {
            Some(branches) => branches.iter().find(|b| b.get("type").and_then(Value::as_str) != Some("null")).and_then(|b| self.resolve(b))?,
            None => s,
        };
        let Some((first, rest)) = steps.split_first() else { return Some(s) };
        let next = match first {
            Step::Each => s.get("items")?,
            Step::Member(m) => s.get("properties")?.get(m)?,
        };
        self.schema_at(next, rest)
    }

    /// Whether the object schema `schema` has a property `name`.
    pub fn has_property(&self, schema: &Value, name: &str) -> bool {
        self.schema_at(schema, &[]).and_then(|s| s.get("properties")).is_some_and(|p| p.get(name).is_some())
    }

    fn schemas(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.root.pointer("/components/schemas").and_then(Value::as_object).into_iter().flatten()
    }

    /// The scalar type of a schema (`string`, `integer`...), nullable unions included.
    fn scalar_type<'a>(&'a self, schema: &'a Value) -> Option<&'a str> {
        let s = self.resolve(schema)?;
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            return matches!(t, "string" | "integer" | "number" | "boolean").then_some(t);
        }
        s.get("anyOf")?.as_array()?.iter().filter_map(|b| self.scalar_type(b)).next()
    }
}

/// The entities of `doc`.
pub fn infer(doc: &Document) -> Vec<Inferred> {
    let mut out: Vec<Inferred> = Vec::new();
    for op in doc.operations.iter().filter(|o| o.method == "GET") {
        let Ok(t) = PathTemplate::parse(&op.path) else { continue };
        let Some(param) = t.names().last() else { continue };
        if !op.path.trim_end_matches('/').ends_with(&format!("{{{param}}}")) {
            continue;
        }
        let Some(response) = op.response.as_ref() else { continue };
        // the member named like the parameter; or `id` in the schema the parameter's stem
        // names (`{item_id}`: `ItemOut.id`)
        let (schema, id) = match doc.find_with(response, param, None) {
            Some(s) => (s, param.to_string()),
            None => {
                let Some(stem) = param.strip_suffix("_id").or_else(|| param.strip_suffix("Id")).filter(|s| !s.is_empty()) else { continue };
                let Some(s) = doc.find_with(response, "id", Some(stem)) else { continue };
                (s, "id".to_string())
            }
        };
        if let Some(e) = out.iter_mut().find(|e| e.schemas.contains(&schema)) {
            // the same schema at another item path: a router included twice
            if e.id == id && !e.items.contains(&op.path) {
                e.items.push(op.path.clone());
                let _ = write!(e.why, ", and so does GET {}", op.path);
            }
            continue;
        }
        let mut name = entity_name(&schema);
        if out.iter().any(|e| e.name == name) {
            name = schema.clone();
        }
        let why = if id == param { format!("GET {} answers {schema}, whose `{id}` is the path parameter", op.path) } else { format!("GET {} answers {schema}, whose `id` the path parameter `{param}` names", op.path) };
        out.push(Inferred { why, name, id, items: vec![op.path.clone()], schemas: BTreeSet::from([schema]), lists: ListChange::Creates, lists_why: None });
    }
    // other schemas with a telling identifier are the same entity
    let ids: Vec<String> = out.iter().map(|e| e.id.clone()).collect();
    for e in &mut out {
        if e.id == "id" || ids.iter().filter(|i| **i == e.id).count() > 1 {
            continue;
        }
        for (name, s) in doc.schemas() {
            if s.get("properties").and_then(|p| p.get(&e.id)).is_some() && !e.schemas.contains(name) {
                e.schemas.insert(name.clone());
            }
        }
    }
    answered_entities(doc, &mut out);
    for e in &mut out {
        list_change(doc, e);
    }
    out
}

/// A schema with an `id` that a write answers with (bare, or one member deep: `{"user": ...}`)
/// and that GET answers show is an entity too, without an item path: writes name it by their
/// answer (renaming a user answers with the `Owner` every item embeds).
fn answered_entities(doc: &Document, out: &mut Vec<Inferred>) {
    let shown: BTreeSet<String> = doc.operations.iter().filter(|o| o.method == "GET").filter_map(|o| o.response.as_ref()).flat_map(|r| doc.contained(r)).collect();
    for op in doc.operations.iter().filter(|o| o.is_write()) {
        let Some(response) = op.response.as_ref() else { continue };
        // the answer itself when it has an `id`; else an envelope's members (`{"user": ...}`)
        let bare = ref_name(response).filter(|n| doc.has_property(&serde_json::json!({ "$ref": format!("#/components/schemas/{n}") }), "id"));
        let candidates: Vec<String> = match bare {
            Some(n) => vec![n.to_string()],
            None => doc.object(response).map(|(props, _)| props.values().filter_map(|v| ref_name(v).map(str::to_string)).collect()).unwrap_or_default(),
        };
        for schema in candidates {
            let known = out.iter().any(|e| e.schemas.contains(&schema));
            let with_id = doc.has_property(&serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") }), "id");
            if known || !with_id || !shown.contains(&schema) {
                continue;
            }
            let mut name = entity_name(&schema);
            if out.iter().any(|e| e.name == name) {
                name = schema.clone();
            }
            out.push(Inferred {
                why: format!("{} {} answers {schema}, which has an `id` and which GET answers show; no GET item route serves one, so writes name it by their answer", op.method, op.path),
                name,
                id: "id".into(),
                items: Vec::new(),
                schemas: BTreeSet::from([schema]),
                lists: ListChange::Creates,
                lists_why: None,
            });
        }
    }
}

/// `lists = ["p", ...]`: the collection's list GET filters by `p`, which is no part of what the
/// item carries, so a write below an item (a favorite) can move it into such a list. A filter
/// is carried when the item has a member of that name with the same scalar type, or an object
/// of that name (`author`: its embedded profile), or a list whose name starts with it (`tag`:
/// `tagList`); those lists change only when the item does (an update).
fn list_change(doc: &Document, e: &mut Inferred) {
    let collections: Vec<&str> = e.items.iter().map(|i| i.trim_end_matches('/').rsplit_once('/').map_or("", |(c, _)| c)).collect();
    let Some(list) = doc.operations.iter().find(|o| o.method == "GET" && collections.contains(&o.path.trim_end_matches('/'))) else { return };
    let Some(schema) = e.schemas.first().and_then(|n| doc.root.pointer(&format!("/components/schemas/{n}"))) else { return };
    let props = schema.get("properties").and_then(Value::as_object);
    let carried = |name: &str, kind: Option<&str>| -> bool {
        let Some(props) = props else { return false };
        if let Some(field) = props.get(name) {
            let object = doc.resolve(field).is_some_and(|f| f.get("properties").is_some() || ref_name(field).is_some());
            return object || (doc.scalar_type(field).is_some() && doc.scalar_type(field) == kind);
        }
        props.iter().any(|(k, v)| k.starts_with(name) && doc.resolve(v).is_some_and(|f| f.get("type").and_then(Value::as_str) == Some("array")))
    };
    let relational: Vec<String> = list
        .query
        .iter()
        .filter(|p| !PAGING.contains(&p.name.as_str()) && !carried(&p.name, p.kind.as_deref()))
        .map(|p| p.name.clone())
        .collect();
    if !relational.is_empty() {
        let names: Vec<String> = relational.iter().map(|p| format!("`{p}`")).collect();
        e.lists_why = Some(format!(
            "GET {} filters by {}, which {} no part of {}: a write to one item (a favorite) can add it to such a list; its other filters change only when the item does",
            list.path,
            names.join(", "),
            if relational.len() == 1 { "is" } else { "are" },
            e.schemas.first().map_or("", String::as_str)
        ));
        e.lists = ListChange::Filters(relational);
    }
}

/// Where the entities occur in `schema` (an answer): JSON paths (`/articles/*/author`) and
/// entity names, outermost first.
pub fn occurrences(doc: &Document, entities: &[Inferred], schema: &Value) -> Vec<(String, String)> {
    let by_schema: BTreeMap<&str, &str> = entities.iter().flat_map(|e| e.schemas.iter().map(|s| (s.as_str(), e.name.as_str()))).collect();
    let mut out = Vec::new();
    walk(doc, &by_schema, schema, String::new(), &mut Vec::new(), &mut out);
    out
}

fn walk<'d>(doc: &'d Document, by_schema: &BTreeMap<&str, &str>, schema: &'d Value, path: String, stack: &mut Vec<&'d str>, out: &mut Vec<(String, String)>) {
    if stack.len() > 8 {
        return;
    }
    let name = ref_name(schema);
    if let Some(n) = name {
        if stack.contains(&n) {
            return;
        }
        if let Some(e) = by_schema.get(n) {
            let p = if path.is_empty() { "/".to_string() } else { path.clone() };
            if !out.iter().any(|(q, f)| *q == p && f == e) {
                out.push((p, (*e).to_string()));
            }
        }
        stack.push(n);
    }
    if let Some(s) = doc.resolve(schema) {
        for k in ["anyOf", "oneOf", "allOf"] {
            for branch in s.get(k).and_then(Value::as_array).into_iter().flatten() {
                walk(doc, by_schema, branch, path.clone(), stack, out);
            }
        }
        if let Some(items) = s.get("items") {
            walk(doc, by_schema, items, format!("{path}/*"), stack, out);
        }
        if let Some((props, _)) = doc.object(schema) {
            for (k, v) in props {
                walk(doc, by_schema, v, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), stack, out);
            }
        }
    }
    if name.is_some() {
        stack.pop();
    }
}

/// The occurrences of every answer of `ops` (a route's operations), in order, once each.
pub fn route_occurrences(doc: &Document, entities: &[Inferred], ops: &[&Operation]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for op in ops {
        for o in op.response.as_ref().map(|r| occurrences(doc, entities, r)).unwrap_or_default() {
            if !out.contains(&o) {
                out.push(o);
            }
        }
    }
    out
}
