//! How one route stands to the entities (`model::entity`): the tags its stored entries get and
//! what its writes drop. Compiled once per route; nothing here parses on the request path.
//!
//! A stored entry is tagged with:
//! - every entity its JSON body shows (`Article:x`, `Profile:alice`), read in one pass when it
//!   is stored;
//! - the entity its path names, when the route is the entity's item path (`Article:{slug}`):
//!   an answer that is not JSON (a 404) is still dropped with its entity;
//! - `list:E` when the route lists `E` (an occurrence in an array), and `filtered:E` too when
//!   its query has a parameter that is not paging (`PAGING`).
//!
//! A successful write (the `"entities"` rule) drops:
//! - each entity its path names (`/api/articles/{slug}/favorite` names `Article:{slug}`);
//! - `list:E` on a create (a write to `E`'s collection path) or a delete of an item;
//! - `filtered:E` on an update of an item (PUT/PATCH on its path): a changed field can move
//!   it into a filtered list it was not in; and on other writes to an item as `E`'s `lists`
//!   setting says (`"filtered"`, or `list:E` for `"all"`), when the write answers with the
//!   item or its route does not say what it answers (a comment, answered with itself, does
//!   not move its article between lists);
//! - the item's whole subtree on a delete (its comments, its favorites);
//! - the outermost entities of its JSON answer (`policy::cache`, at the end of the body).
//!
//! A write that names no entity falls back to the `"resource"` rule (its path subtree).

use super::invalidate::Reason;
use super::store::{Body, PurgeSelector};
use crate::model::entity::{self, Entities, ListChange, Occurrences, PAGING};
use crate::model::template::PathTemplate;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::Method;
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// An entity the route's path names, through one of its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub entity: String,
    /// The route's parameter holding the entity's identifier.
    pub param: String,
    /// The route is the entity's item path itself (not a path below it).
    pub item: bool,
    pub lists: ListChange,
    /// A write below the item may move it between lists (as `lists` says): its answer is the
    /// item (a favorite answers with the article), or the route does not say what its answers
    /// are. A write answering with something else (a comment) changed that, not the item's
    /// place in lists.
    pub moves: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityRoute {
    /// Where entities occur in the route's JSON answers.
    pub reads: Occurrences,
    /// The outermost of them: what a write's answer says it changed.
    pub written: Occurrences,
    /// Entities the route lists.
    pub lists: Vec<String>,
    pub named: Vec<Named>,
    /// Entities whose collection path the route is: a write to it creates (or deletes all).
    pub collection_of: Vec<String>,
    /// The route's template: the item identifier of a stored entry is read from its path.
    pub template: Option<Arc<PathTemplate>>,
}

impl EntityRoute {
    /// The route at `shape` (its path as a template, exact paths too), with the occurrences
    /// its `entities` key gives.
    pub fn new(shape: Option<&PathTemplate>, template: Option<Arc<PathTemplate>>, reads: Occurrences, entities: &Entities) -> Self {
        let mut named = Vec::new();
        let mut collection_of = Vec::new();
        let written = reads.written();
        let moves = |entity: &str| reads.is_empty() || written.iter().any(|(_, e, _)| e == entity);
        if let Some(shape) = shape {
            for e in &entities.defs {
                for item in &e.items {
                    if let Some((param, is_item)) = shape.under_item(item) {
                        named.push(Named { entity: e.name.clone(), param: param.to_string(), item: is_item, lists: e.lists.clone(), moves: moves(&e.name) });
                        break;
                    } else if shape.is_collection_of(item) {
                        collection_of.push(e.name.clone());
                        break;
                    }
                }
            }
        }
        let lists = reads.listed().into_iter().map(str::to_string).collect();
        EntityRoute { written, reads, lists, named, collection_of, template }
    }

    /// Whether the route has anything to do with entities.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.named.is_empty() && self.collection_of.is_empty()
    }

    /// The tags an entry stored for `path` (`url`: path and sorted query) gets from the route
    /// alone, before its body is read.
    pub fn entry_tags(&self, path: &str, url: &str, out: &mut Vec<String>) {
        if !self.lists.is_empty() {
            let filtered = filters(url).next().is_some();
            for e in &self.lists {
                out.push(entity::list_tag(e));
                if filtered {
                    out.push(entity::filtered_tag(e));
                    for name in filters(url) {
                        out.push(entity::filter_tag(e, name));
                    }
                }
            }
        }
        let items = self.named.iter().filter(|n| n.item);
        if let Some(t) = &self.template
            && self.named.iter().any(|n| n.item)
            && let Some(spans) = t.matches(path)
        {
            for n in items {
                let value = t.names().position(|p| p == n.param).and_then(|i| spans.get(i)).and_then(|r| path.get(r.start as usize..r.end as usize));
                if let Some(v) = value {
                    out.push(entity::tag(&n.entity, v));
                }
            }
        }
    }

    /// The entities a stored JSON body shows, appended to `out`.
    pub fn body_tags(&self, header: &ResponseHeader, body: &Body, out: &mut Vec<String>) {
        if self.reads.is_empty() || !is_json(header) {
            return;
        }
        let bytes = body.contiguous();
        // not JSON after all: the entry keeps its route tags, and a path write still drops it
        let _ = self.reads.collect(&bytes, out);
    }

    /// What the `"entities"` rule drops after a successful `method` on `path`; false when the
    /// route names no entity (the caller falls back to `"resource"`).
    pub fn write_selectors<'a>(&self, method: &Method, path: &str, param: impl Fn(&str) -> Option<&'a str>, out: &mut Vec<(Reason, PurgeSelector)>) -> bool {
        let mut named = false;
        for n in &self.named {
            let Some(id) = param(&n.param) else { continue };
            named = true;
            out.push((Reason::Entity, PurgeSelector::Tag(entity::tag(&n.entity, id))));
            let membership = match (n.item, method) {
                (true, &Method::DELETE) => {
                    // its subresources (comments, favorites) go with it
                    out.push((Reason::Entity, PurgeSelector::PathPrefix(path.to_string())));
                    vec![entity::list_tag(&n.entity)]
                }
                (true, &Method::PUT | &Method::PATCH) if n.lists == ListChange::All => vec![entity::list_tag(&n.entity)],
                (true, &Method::PUT | &Method::PATCH) => vec![entity::filtered_tag(&n.entity)],
                (_, _) if !n.moves => Vec::new(),
                (_, _) => match &n.lists {
                    ListChange::Creates => Vec::new(),
                    ListChange::Filters(params) => params.iter().map(|p| entity::filter_tag(&n.entity, p)).collect(),
                    ListChange::Filtered => vec![entity::filtered_tag(&n.entity)],
                    ListChange::All => vec![entity::list_tag(&n.entity)],
                },
            };
            for tag in membership {
                out.push((Reason::List, PurgeSelector::Tag(tag)));
            }
        }
        for e in &self.collection_of {
            named = true;
            out.push((Reason::List, PurgeSelector::Tag(entity::list_tag(e))));
        }
        // a route whose answers say what a write changed names it there (at the body's end)
        named || !self.written.is_empty()
    }

    /// Whether a write's answer is read for the entities it changed.
    pub fn reads_written(&self, resp: &ResponseHeader) -> bool {
        !self.written.is_empty() && resp.status.is_success() && is_json(resp)
    }
}

/// The filter parameters of a URL's query: every one but paging, each once.
fn filters(url: &str) -> impl Iterator<Item = &str> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut seen: Vec<&str> = Vec::new();
    query.split('&').filter_map(move |kv| {
        let name = kv.split_once('=').map_or(kv, |(n, _)| n);
        if name.is_empty() || PAGING.contains(&name) || seen.contains(&name) {
            return None;
        }
        seen.push(name);
        Some(name)
    })
}

/// A JSON body as the backend wrote it (no content coding).
fn is_json(header: &ResponseHeader) -> bool {
    if header.headers.contains_key(CONTENT_ENCODING) {
        return false;
    }
    let Some(ct) = header.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let media = ct.split(';').next().unwrap_or(ct).trim();
    media.eq_ignore_ascii_case("application/json") || media.to_ascii_lowercase().ends_with("+json")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::entity::{parse_path, EntityDef};

    fn entities() -> Entities {
        let def = |name: &str, id: &str, item: &str, lists| EntityDef { name: name.into(), id: id.into(), items: vec![Arc::new(PathTemplate::parse(item).unwrap())], lists };
        Entities {
            defs: vec![
                def("Article", "slug", "/api/articles/{slug}", ListChange::Filtered),
                def("Profile", "username", "/api/profiles/{username}", ListChange::Filters(vec!["followed".into()])),
                def("Comment", "id", "/api/articles/{slug}/comments/{id}", ListChange::Creates),
            ],
        }
    }

    fn route(path: &str, occ: &[(&str, &str, &str)]) -> EntityRoute {
        let t = Arc::new(PathTemplate::parse(path).unwrap());
        let mut reads = Occurrences::default();
        for (p, e, id) in occ {
            reads.add(&parse_path(p).unwrap(), e, id);
        }
        EntityRoute::new(Some(&t), Some(t.clone()), reads, &entities())
    }

    fn writes(r: &EntityRoute, method: Method, path: &str, params: &[(&str, &str)]) -> Vec<String> {
        let mut out = Vec::new();
        let named = r.write_selectors(&method, path, |n| params.iter().find(|(k, _)| *k == n).map(|(_, v)| *v), &mut out);
        let mut v: Vec<String> = out.into_iter().map(|(_, s)| format!("{s:?}")).collect();
        if !named {
            v.push("fallback".into());
        }
        v
    }

    #[test]
    fn entries_are_tagged_by_their_lists_and_item() {
        let list = route("/api/articles", &[("/articles/*", "Article", "slug"), ("/articles/*/author", "Profile", "username")]);
        let mut tags = Vec::new();
        list.entry_tags("/api/articles", "/api/articles?limit=20&offset=40", &mut tags);
        assert_eq!(tags, ["list:Article", "list:Profile"]);
        tags.clear();
        list.entry_tags("/api/articles", "/api/articles?limit=20&tag=rust", &mut tags);
        assert_eq!(tags, ["list:Article", "filtered:Article", "filtered:Article:tag", "list:Profile", "filtered:Profile", "filtered:Profile:tag"]);
        let item = route("/api/articles/{slug}", &[("/article", "Article", "slug")]);
        tags.clear();
        item.entry_tags("/api/articles/hello", "/api/articles/hello", &mut tags);
        assert_eq!(tags, ["Article:hello"]);
        // a path below an item is not tagged with it: a favorite does not change the comments
        let below = route("/api/articles/{slug}/comments", &[]);
        tags.clear();
        below.entry_tags("/api/articles/hello/comments", "/api/articles/hello/comments", &mut tags);
        assert!(tags.is_empty());
    }

    #[test]
    fn writes_drop_what_they_name() {
        let fav = route("/api/articles/{s}/favorite", &[]);
        assert_eq!(writes(&fav, Method::POST, "/api/articles/x/favorite", &[("s", "x")]), ["Tag(\"Article:x\")", "Tag(\"filtered:Article\")"]);
        let follow = route("/api/profiles/{username}/follow", &[]);
        assert_eq!(writes(&follow, Method::POST, "/api/profiles/al/follow", &[("username", "al")]), ["Tag(\"Profile:al\")", "Tag(\"filtered:Profile:followed\")"]);
        let item = route("/api/articles/{slug}", &[]);
        assert_eq!(writes(&item, Method::PUT, "/api/articles/x", &[("slug", "x")]), ["Tag(\"Article:x\")", "Tag(\"filtered:Article\")"]);
        assert_eq!(
            writes(&item, Method::DELETE, "/api/articles/x", &[("slug", "x")]),
            ["Tag(\"Article:x\")", "PathPrefix(\"/api/articles/x\")", "Tag(\"list:Article\")"]
        );
        let t = Arc::new(PathTemplate::parse("/api/articles").unwrap());
        let create = EntityRoute::new(Some(&t), None, Occurrences::default(), &entities());
        assert_eq!(writes(&create, Method::POST, "/api/articles", &[]), ["Tag(\"list:Article\")"]);
        // a route that does not say what it answers: the write may move the article
        let comments = route("/api/articles/{slug}/comments", &[]);
        assert_eq!(
            writes(&comments, Method::POST, "/api/articles/x/comments", &[("slug", "x")]),
            ["Tag(\"Article:x\")", "Tag(\"filtered:Article\")", "Tag(\"list:Comment\")"]
        );
        // one that answers with a comment: the article changes in place, not in lists
        let said = route("/api/articles/{slug}/comments", &[("/comment/author", "Profile", "username")]);
        assert_eq!(writes(&said, Method::POST, "/api/articles/x/comments", &[("slug", "x")]), ["Tag(\"Article:x\")", "Tag(\"list:Comment\")"]);
        let fav_said = route("/api/articles/{s}/favorite", &[("/article", "Article", "slug")]);
        assert_eq!(writes(&fav_said, Method::POST, "/api/articles/x/favorite", &[("s", "x")]), ["Tag(\"Article:x\")", "Tag(\"filtered:Article\")"]);
        let other = route("/api/tags", &[]);
        assert_eq!(writes(&other, Method::POST, "/api/tags", &[]), ["fallback"]);
    }
}
