//! `[entities.NAME]`: the resources the backend serves, checked once: an identifier, an item
//! path whose last segment is a parameter, and what changes their lists.

use crate::config::raw::RawEntity;
use crate::model::diag::Diagnostics;
use crate::model::entity::{Entities, EntityDef, ListChange};
use crate::model::template::PathTemplate;
use std::collections::BTreeMap;
use std::sync::Arc;
use toml::Spanned;

pub fn compile(cx: &mut Diagnostics<'_>, raw: BTreeMap<String, Spanned<RawEntity>>) -> Entities {
    let mut defs = Vec::new();
    for (name, spanned) in raw {
        let span = spanned.span();
        let RawEntity { id, item, lists } = spanned.into_inner();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            cx.error::<()>(span, format!("entity name {name:?} must be letters, digits, `_` or `-`"), "name it as the backend's schema does, e.g. [entities.Article]");
            continue;
        }
        let mut items = Vec::new();
        let mut bad = false;
        for p in item.as_ref().map(|i| i.get_ref().0.as_slice()).unwrap_or_default() {
            let at = item.as_ref().map(Spanned::span).unwrap_or_default();
            match PathTemplate::parse(p) {
                Ok(t) if t.names().last().is_some_and(|last| p.trim_end_matches('/').ends_with(&format!("{{{last}}}"))) => items.push(Arc::new(t)),
                Ok(_) => {
                    cx.error::<()>(at, format!("the item path {p:?} does not end in a parameter"), "the last segment names the item, e.g. item = \"/api/articles/{slug}\"");
                    bad = true;
                }
                Err(e) => {
                    cx.error::<()>(at, format!("item path {p:?}: {e}"), "a path template such as \"/api/articles/{slug}\"");
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        let id = match (id, items.first()) {
            (Some(id), _) if !id.get_ref().trim().is_empty() => id.get_ref().trim().to_string(),
            (Some(id), _) => {
                cx.error::<()>(id.span(), "`id` is empty", "the member that identifies the entity in JSON, e.g. id = \"slug\"");
                continue;
            }
            (None, Some(t)) => t.names().last().unwrap_or_default().to_string(),
            (None, None) => {
                cx.error::<()>(span, format!("entity `{name}` has neither `id` nor `item`"), "add id = \"slug\" (the identifying member), and item = \"/api/articles/{slug}\" if the backend serves one item at a path");
                continue;
            }
        };
        let lists = match lists {
            None => ListChange::default(),
            Some(l) => match ListChange::parse(&l.get_ref().0) {
                Ok(c) => c,
                Err(e) => {
                    cx.error::<()>(l.span(), e, "\"creates\" (the default: lists change on creates and deletes, filtered lists on updates), [\"favorited\"] (the lists filtered by these change on every write to an item), \"filtered\" (every filtered list does), or \"all\"");
                    continue;
                }
            },
        };
        defs.push(EntityDef { name, id, items, lists });
    }
    Entities { defs }
}
