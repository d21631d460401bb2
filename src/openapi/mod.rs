//! The backend's own description of itself: a FastAPI app's OpenAPI document, read from its URL
//! or a file, reduced to what the gateway's tools need (operations, their parameters and
//! schemas, which are secured) plus walks over the schema graph.

pub mod audit;
pub mod entities;
pub mod health;
pub mod init;

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("{0}")]
    Get(#[from] crate::client::GetError),
    #[error("{from}: answered {status}")]
    Status { from: String, status: u16 },
    #[error("{from}: {err}")]
    Read { from: String, err: std::io::Error },
    #[error("{from}: not JSON: {err}")]
    Json { from: String, err: serde_json::Error },
    #[error("{from}: not an OpenAPI 3 document (no `openapi` version and `paths`)")]
    NotOpenApi { from: String },
}

/// A query parameter of an operation, with the bounds its schema gives.
#[derive(Debug, Clone)]
pub struct QueryParam {
    pub name: String,
    pub maximum: Option<u64>,
    pub default: Option<u64>,
    /// The schema's type (`string`, `integer`), nullable unions included.
    pub kind: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Operation {
    /// Upper case.
    pub method: String,
    /// FastAPI's template syntax: `/api/items/{item_id}`.
    pub path: String,
    pub operation_id: Option<String>,
    pub tags: Vec<String>,
    /// A security requirement applies (its own or the document's).
    pub secured: bool,
    pub query: Vec<QueryParam>,
    /// The JSON request body's schema.
    pub request: Option<Value>,
    /// The JSON schema of the first 2xx response.
    pub response: Option<Value>,
    /// A 2xx response is `text/event-stream`.
    pub event_stream: bool,
    /// A parameter must be given (any path parameter, or one marked `required`).
    pub required_params: bool,
    /// Header parameters (a dependency's `Header()` included), lower case.
    pub headers: Vec<String>,
}

impl Operation {
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

pub struct Document {
    pub title: String,
    pub version: String,
    /// In the document's order.
    pub operations: Vec<Operation>,
    /// The path the document was fetched from (`/api/v1/openapi.json`), when it came from a URL.
    pub url_path: Option<String>,
    root: Value,
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

impl Document {
    /// Reads a document from an `http://` URL or a file.
    pub fn load(source: &str) -> Result<Document, OpenApiError> {
        if source.starts_with("http://") || source.starts_with("https://") {
            let (status, body) = crate::client::get(source, Duration::from_secs(10))?;
            if status != 200 {
                return Err(OpenApiError::Status { from: source.into(), status });
            }
            let mut doc = Document::parse(&body, source)?;
            let path = crate::client::split_url(source).map_or("/", |(_, p)| p);
            doc.url_path = Some(path.split(['?', '#']).next().unwrap_or(path).to_string());
            return Ok(doc);
        }
        let text = std::fs::read(source).map_err(|err| OpenApiError::Read { from: source.into(), err })?;
        Document::parse(&text, source)
    }

    pub fn parse(text: &[u8], source: &str) -> Result<Document, OpenApiError> {
        let root: Value = serde_json::from_slice(text).map_err(|err| OpenApiError::Json { from: source.into(), err })?;
        let (Some(_), Some(paths)) = (root.get("openapi"), root.get("paths").and_then(Value::as_object)) else {
            return Err(OpenApiError::NotOpenApi { from: source.into() });
        };
        let global_security = root.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
        let mut operations = Vec::new();
        for (path, item) in paths {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                operations.push(operation(method, path, op, global_security));
            }
        }
        let info = |k: &str| root.pointer(&format!("/info/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(Document {
            title: info("title"),
            version: info("version"),
            operations,
            url_path: None,
            root,
        })
    }

    /// A `$ref` resolved within the document.
    fn resolve<'a>(&'a self, schema: &'a Value) -> Option<&'a Value> {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self.root.pointer(r.strip_prefix('#')?),
            None => Some(schema),
        }
    }

    /// Every named schema `schema` contains, at any depth (itself included).
    pub fn contained(&self, schema: &Value) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        self.walk(schema, &mut seen);
        seen
    }

    fn walk(&self, schema: &Value, seen: &mut BTreeSet<String>) {
        if let Some(name) = ref_name(schema) {
            if !seen.insert(name.to_string()) {
                return;
            }
            if let Some(target) = self.resolve(schema) {
                self.walk(target, seen);
            }
            return;
        }
        match schema {
            Value::Object(map) => map.values().for_each(|v| self.walk(v, seen)),
            Value::Array(items) => items.iter().for_each(|v| self.walk(v, seen)),
            _ => {}
        }
    }

    /// The most bytes a JSON value of `schema` can take, when every string, array and
    /// property in it is bounded; `None` when anything is unbounded. Strings count six bytes
    /// a character (a `\uXXXX` escape), numbers 32.
    pub fn max_json_size(&self, schema: &Value) -> Option<u64> {
        self.max_size(schema, 0)
    }

    fn max_size(&self, schema: &Value, depth: usize) -> Option<u64> {
        if depth > 16 {
            return None;
        }
        let s = self.resolve(schema)?;
        let all = |key: &str| -> Option<Vec<u64>> {
            s.get(key)?.as_array()?.iter().map(|b| self.max_size(b, depth + 1)).collect()
        };
        if let Some(sizes) = all("anyOf").or_else(|| all("oneOf")) {
            return sizes.into_iter().max();
        }
        if let Some(sizes) = all("allOf") {
            return Some(sizes.into_iter().sum());
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array) {
            return values.iter().map(|v| Some(v.to_string().len() as u64 * 6)).max().flatten();
        }
        match s.get("type").and_then(Value::as_str)? {
            "string" => s.get("maxLength").and_then(Value::as_u64).map(|n| n * 6 + 2),
            "integer" | "number" => Some(32),
            "boolean" | "null" => Some(5),
            "array" => {
                let n = s.get("maxItems").and_then(Value::as_u64)?;
                let item = self.max_size(s.get("items")?, depth + 1)?;
                Some(n * (item + 1) + 2)
            }
            "object" => {
                let props = s.get("properties")?.as_object()?;
                let mut total = 2;
                for (k, v) in props {
                    total += k.len() as u64 + 4 + self.max_size(v, depth + 1)?;
                }
                Some(total)
            }
            _ => None,
        }
    }
}

/// `Name` of a `{"$ref": "#/components/schemas/Name"}`.
pub fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.rsplit('/').next()
}

/// The schema names a body is declared as: the `$ref` itself, or of a list's items, or of
/// each `anyOf` branch (`Item | None`).
pub fn top_names(schema: &Value) -> Vec<String> {
    if let Some(n) = ref_name(schema) {
        return vec![n.to_string()];
    }
    let mut out = Vec::new();
    if let Some(items) = schema.get("items") {
        out.extend(top_names(items));
    }
    for key in ["anyOf", "oneOf"] {
        for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(top_names(branch));
        }
    }
    out
}

fn operation(method: &str, path: &str, op: &Value, global_security: bool) -> Operation {
    let secured = match op.get("security").and_then(Value::as_array) {
        Some(list) => !list.is_empty(),
        None => global_security,
    };
    let parameters = op.get("parameters").and_then(Value::as_array).into_iter().flatten();
    let headers = parameters
        .clone()
        .filter(|p| p.get("in").and_then(Value::as_str) == Some("header"))
        .filter_map(|p| Some(p.get("name")?.as_str()?.to_ascii_lowercase()))
        .collect();
    let required_params = parameters
        .clone()
        .any(|p| p.get("in").and_then(Value::as_str) == Some("path") || p.get("required").and_then(Value::as_bool) == Some(true));
    let query = parameters
        .filter(|p| p.get("in").and_then(Value::as_str) == Some("query"))
        .filter_map(|p| {
            let schema = p.get("schema");
            let num = |k: &str| schema.and_then(|s| s.get(k)).and_then(Value::as_f64).filter(|n| *n >= 0.0).map(|n| n as u64);
            let kind = schema.and_then(|s| {
                let t = |v: &Value| v.get("type").and_then(Value::as_str).filter(|t| *t != "null").map(str::to_string);
                t(s).or_else(|| s.get("anyOf")?.as_array()?.iter().find_map(t))
            });
            Some(QueryParam {
                name: p.get("name")?.as_str()?.to_string(),
                maximum: num("maximum"),
                default: num("default"),
                kind,
            })
        })
        .collect();
    let json = |content: Option<&Value>| content.and_then(|c| c.get("application/json")).and_then(|j| j.get("schema")).cloned();
    let request = json(op.pointer("/requestBody/content"));
    let responses = op.get("responses").and_then(Value::as_object);
    let success = responses.and_then(|r| r.iter().find(|(code, _)| code.starts_with('2'))).map(|(_, r)| r);
    let content = success.and_then(|r| r.get("content"));
    Operation {
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        operation_id: op.get("operationId").and_then(Value::as_str).map(str::to_string),
        tags: op
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        secured,
        query,
        request,
        response: json(content).filter(|s| s.as_object().is_some_and(|o| !o.is_empty())),
        event_stream: content.is_some_and(|c| c.get("text/event-stream").is_some()),
        required_params,
        headers,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Document {
        let d = json!({
            "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "paths": {
                "/items": {"get": {"operationId": "list_items_items_get",
                    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100, "default": 20}}],
                    "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}}}}},
                    "post": {"security": [{"HTTPBearer": []}],
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/In"}}}},
                    "responses": {"201": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}}}}
            },
            "components": {"schemas": {
                "Page": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
                "Item": {"type": "object", "properties": {"owner": {"$ref": "#/components/schemas/Owner"}}},
                "Owner": {"type": "object", "properties": {"name": {"type": "string"}}},
                "In": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "n": {"type": "integer"},
                       "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 5}}}}
            }}
        });
        Document::parse(d.to_string().as_bytes(), "test").unwrap()
    }

    #[test]
    fn operations_schemas_and_sizes() {
        let d = doc();
        assert_eq!(d.operations.len(), 2);
        let (get, post) = (&d.operations[0], &d.operations[1]);
        assert_eq!((get.method.as_str(), get.secured, post.secured), ("GET", false, true));
        assert_eq!((get.query[0].maximum, get.query[0].default), (Some(100), Some(20)));
        let contained = d.contained(get.response.as_ref().unwrap());
        assert_eq!(contained.into_iter().collect::<Vec<_>>(), ["Item", "Owner", "Page"]);
        assert_eq!(top_names(post.response.as_ref().unwrap()), ["Item"]);
        // name 10*6+2 + "name" 4+4, n 32 + 1+4, tags 3*(32+1)+2 + 4+4, braces 2
        assert_eq!(d.max_json_size(post.request.as_ref().unwrap()), Some(62 + 8 + 32 + 5 + 101 + 8 + 2));
        assert_eq!(d.max_json_size(get.response.as_ref().unwrap()), None);
        assert!(Document::parse(b"{}", "x").is_err());
    }
}
