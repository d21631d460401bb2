//! The routes file's JSON Schema, built from the config's own types: each table's struct
//! derives [`Schema`] (`fastgate_derive`), each value type says here what it accepts. What
//! `fastgate schema` prints, what editors (taplo, Even Better TOML) validate and complete, and
//! what the book's key reference is generated from.

use super::units::{Dur, EnvString, OneOrList, Size, Toggle, Ttl};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use toml::Spanned;

/// A config type's JSON Schema (draft 07), inline: no `$ref`s, so a key's description travels
/// with it wherever the type is used. Value types that are strings or numbers to a validator
/// but one thing to a reader (a duration, a size) say so in `x-kind`, a keyword validators
/// ignore, for the generated key reference.
pub trait Schema {
    fn schema() -> Value;
}

/// A literal from `#[schema(default = ..., example = ...)]`.
pub fn lit(v: impl Into<Value>) -> Value {
    v.into()
}

/// An example written as a TOML value (a table, a list), as JSON; `null` if it does not
/// parse, which the schema test reports.
pub fn toml_lit(v: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null)
}

/// A table: its properties, which of them are required; unknown keys are refused (as the
/// parser's `deny_unknown_fields` does).
pub struct Object {
    doc: &'static str,
    properties: Map<String, Value>,
    required: Vec<String>,
}

impl Object {
    pub fn new(doc: &'static str) -> Object {
        Object { doc, properties: Map::new(), required: Vec::new() }
    }

    pub fn property(&mut self, key: &str, doc: &str, mut schema: Value, required: bool, default: Option<Value>, examples: Vec<Value>) {
        if let Value::Object(m) = &mut schema {
            // the key's own words first; a value type's description (a duration, a size) after
            // them; a table's own description only where the key has none
            let table = m.contains_key("properties");
            let own = match m.get("description").and_then(Value::as_str) {
                Some(_) if table && !doc.is_empty() => doc.to_string(),
                Some(ty) if !doc.is_empty() => format!("{doc}\n\n{ty}"),
                Some(ty) => ty.to_string(),
                None => doc.to_string(),
            };
            if !own.is_empty() {
                m.insert("description".into(), Value::String(own));
            }
            if let Some(d) = default {
                m.insert("default".into(), d);
            }
            if !examples.is_empty() {
                m.insert("examples".into(), Value::Array(examples));
            }
        }
        self.properties.insert(key.to_string(), schema);
        if required {
            self.required.push(key.to_string());
        }
    }

    /// Merges another table's properties into this one (a route's policy keys).
    pub fn flatten(&mut self, other: Value) {
        if let Value::Object(mut m) = other {
            if let Some(Value::Object(props)) = m.remove("properties") {
                self.properties.extend(props);
            }
            if let Some(Value::Array(req)) = m.remove("required") {
                self.required.extend(req.into_iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
        }
    }

    pub fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!("object"));
        if !self.doc.is_empty() {
            m.insert("description".into(), json!(self.doc));
        }
        m.insert("properties".into(), Value::Object(self.properties));
        if !self.required.is_empty() {
            m.insert("required".into(), json!(self.required));
        }
        m.insert("additionalProperties".into(), json!(false));
        Value::Object(m)
    }
}

impl<T: Schema> Schema for Spanned<T> {
    fn schema() -> Value {
        T::schema()
    }
}

impl<T: Schema> Schema for Option<T> {
    fn schema() -> Value {
        T::schema()
    }
}

impl<T: Schema> Schema for Vec<T> {
    fn schema() -> Value {
        json!({ "type": "array", "items": T::schema() })
    }
}

impl<T: Schema> Schema for BTreeMap<String, T> {
    fn schema() -> Value {
        json!({ "type": "object", "additionalProperties": T::schema() })
    }
}

impl Schema for String {
    fn schema() -> Value {
        json!({ "type": "string" })
    }
}

impl Schema for bool {
    fn schema() -> Value {
        json!({ "type": "boolean" })
    }
}

impl Schema for f64 {
    fn schema() -> Value {
        json!({ "type": "number" })
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Schema for $t {
            fn schema() -> Value {
                json!({ "type": "integer", "minimum": 0, "maximum": <$t>::MAX })
            }
        }
    )*};
}
unsigned!(u16, u32, u64, usize);

impl Schema for EnvString {
    fn schema() -> Value {
        json!({ "type": "string" })
    }
}

impl Schema for OneOrList {
    fn schema() -> Value {
        json!({ "anyOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }] })
    }
}

/// What a duration looks like (humantime), or an environment reference expanded at load.
const DURATION: &str = r"^\s*(\$\{[^}]+\}|([0-9]+\s*[a-zA-Zµ]+\s*)+)\s*$";

impl Schema for Dur {
    fn schema() -> Value {
        json!({ "type": "string", "pattern": DURATION, "x-kind": "duration", "description": "A duration: \"250ms\", \"5s\", \"1m30s\", \"2h\".", "examples": ["250ms", "5s", "1m30s"] })
    }
}

impl Schema for Ttl {
    fn schema() -> Value {
        json!({
            "type": "string",
            "anyOf": [{ "const": "origin" }, { "pattern": DURATION }],
            "x-kind": "duration or `\"origin\"`",
            "description": "A duration (\"30s\", \"5m\"), or \"origin\": only what the backend's headers allow."
        })
    }
}

impl Schema for Size {
    fn schema() -> Value {
        json!({
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": r"^\s*(\$\{[^}]+\}|[0-9.]+\s*([KMGTP]i?B?|[kmgtp]i?b?|B|b)?)\s*$" }
            ],
            "description": "A size: a number of bytes, or \"64KiB\", \"1MiB\", \"10MB\".",
            "examples": ["64KiB", "1MiB", 4096],
            "x-kind": "size"
        })
    }
}

impl<T: Schema> Schema for Toggle<T> {
    fn schema() -> Value {
        json!({ "anyOf": [{ "enum": ["on", "off"] }, { "type": "boolean" }, T::schema()] })
    }
}
