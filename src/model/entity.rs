//! The entities a backend serves (`[entities.Article]`: identified by `slug`, item path
//! `/api/articles/{slug}`), and where they occur in a route's JSON responses (`/articles/*`
//! is an `Article`, `/articles/*/author` a `Profile`). A stored response is tagged with the
//! entities it shows (`Article:how-to-train`), read in one pass over its body; a write drops
//! the entries that show what it changed. `policy::cache` says which writes change what.

use super::json::{NotJson, Scan};
use super::template::PathTemplate;
use std::sync::Arc;

/// One named kind of resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityDef {
    pub name: String,
    /// The member of its JSON objects that identifies it (`slug`).
    pub id: String,
    /// The item paths (`/api/articles/{slug}`; more than one when a router is included twice):
    /// the last parameter carries the identifier, and the path without it is the collection
    /// creates go to.
    pub items: Vec<Arc<PathTemplate>>,
    pub lists: ListChange,
}

/// Which writes change the membership or order of a collection's lists, besides creates and
/// deletes (which always do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ListChange {
    /// Lists are ordered by creation and filtered on what the item carries: an update of an
    /// item (PUT/PATCH on its path) drops the filtered lists, since a changed field can move the
    /// item into one it was not in; other writes to an item change only the item.
    #[default]
    Creates,
    /// Besides, every write to an item drops the lists filtered by these query parameters
    /// (`["favorited"]`: a favorite adds the article to the writer's list).
    Filters(Vec<String>),
    /// Besides, every write to an item drops every filtered list.
    Filtered,
    /// Every write to an item drops every list (lists ordered by counts or popularity).
    All,
}

impl ListChange {
    /// `"creates"`, `"filtered"`, `"all"`, or a list of query parameters.
    pub fn parse(values: &[String]) -> Result<Self, String> {
        match values {
            [one] if one == "creates" => Ok(ListChange::Creates),
            [one] if one == "filtered" => Ok(ListChange::Filtered),
            [one] if one == "all" => Ok(ListChange::All),
            [] => Err("an empty list: write \"creates\" for lists that change only on creates and deletes".into()),
            params => match params.iter().find(|p| p.is_empty() || PAGING.contains(&p.as_str()) || !p.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))) {
                Some(p) => Err(format!("{p:?} is not a filter parameter")),
                None => Ok(ListChange::Filters(params.to_vec())),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ListChange::Creates => "creates".into(),
            ListChange::Filtered => "filtered".into(),
            ListChange::All => "all".into(),
            ListChange::Filters(p) => format!("[{}]", p.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")),
        }
    }
}

/// The tag of one entity instance: `Article:how-to-train`. Built by hand: a stored list makes
/// hundreds, and the formatting machinery was a fifth of the cost of reading one.
pub fn tag(entity: &str, id: &str) -> String {
    let mut t = String::with_capacity(entity.len() + 1 + id.len());
    t.push_str(entity);
    t.push(':');
    t.push_str(id);
    t
}

/// The tag every list entry of an entity's collection carries.
pub fn list_tag(entity: &str) -> String {
    format!("list:{entity}")
}

/// The tag a list entry carries when its query filters (any parameter but paging).
pub fn filtered_tag(entity: &str) -> String {
    format!("filtered:{entity}")
}

/// The tag a list entry carries for each parameter it is filtered by.
pub fn filter_tag(entity: &str, param: &str) -> String {
    format!("filtered:{entity}:{param}")
}

/// Query parameters that page or bound a list without choosing its members.
pub const PAGING: &[&str] = &["limit", "offset", "page", "per_page", "page_size", "size", "skip", "take", "cursor", "after", "before"];

/// The most entity tags one stored body gets: a list of 10,000 items is still one entry, and
/// its tag index must stay bounded. Past it, the entry keeps its list and path tags only.
pub const MAX_TAGS: usize = 4096;

/// One step of an occurrence path: a member, or each element of an array (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Member(String),
    Each,
}

/// `/articles/*/author` (`/` alone: the whole body).
pub fn parse_path(p: &str) -> Result<Vec<Step>, String> {
    let body = p.strip_prefix('/').ok_or_else(|| format!("{p:?} must start with `/`, as in \"/articles/*\""))?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split('/')
        .map(|s| match s {
            "*" => Ok(Step::Each),
            "" => Err(format!("{p:?} has an empty step")),
            m => Ok(Step::Member(m.replace("~1", "/").replace("~0", "~"))),
        })
        .collect()
}

/// Where entities occur in a route's JSON responses, as one tree walked in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occurrences {
    root: Node,
    /// The occurrences as given, for summaries and `outermost`.
    given: Vec<(Vec<Step>, Arc<str>, Arc<str>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    members: Vec<(Box<[u8]>, Node)>,
    each: Option<Box<Node>>,
    /// Entities found here: (identifying member, entity name).
    ids: Vec<(Box<[u8]>, Arc<str>)>,
}

impl Occurrences {
    /// Adds `entity`, identified by its member `id`, at `path`.
    pub fn add(&mut self, path: &[Step], entity: &str, id: &str) {
        let mut node = &mut self.root;
        for step in path {
            node = match step {
                Step::Each => node.each.get_or_insert_with(Box::default),
                Step::Member(m) => {
                    let at = match node.members.iter().position(|(k, _)| **k == *m.as_bytes()) {
                        Some(at) => at,
                        None => {
                            node.members.push((m.as_bytes().into(), Node::default()));
                            node.members.len() - 1
                        }
                    };
                    &mut node.members[at].1
                }
            };
        }
        node.ids.push((id.as_bytes().into(), entity.into()));
        self.given.push((path.to_vec(), entity.into(), id.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }

    /// The occurrences as given: (path, entity, identifying member).
    pub fn iter(&self) -> impl Iterator<Item = (&[Step], &str, &str)> {
        self.given.iter().map(|(p, e, id)| (p.as_slice(), &**e, &**id))
    }

    /// The entities that occur in arrays (the route lists them).
    pub fn listed(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.given.iter().filter(|(p, _, _)| p.contains(&Step::Each)).map(|(_, e, _)| &**e).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// What a write's answer says it changed: the outermost occurrences at most one member
    /// deep (`/`, `/article`, `/articles/*`): the resource it answers with, bare or in an
    /// envelope. Deeper ones (`/article/author`, `/comment/author`) are copies embedded in it,
    /// which the write did not change.
    pub fn written(&self) -> Occurrences {
        let mut out = Occurrences::default();
        for (path, entity, id) in &self.given {
            let members = path.iter().filter(|s| matches!(s, Step::Member(_))).count();
            let inside = self.given.iter().any(|(other, _, _)| other.len() < path.len() && path.starts_with(other));
            if members <= 1 && !inside {
                out.add(path, entity, id);
            }
        }
        out
    }

    /// The tags of the entities in `body`, appended to `out` (at most `MAX_TAGS` in all).
    pub fn collect(&self, body: &[u8], out: &mut Vec<String>) -> Result<(), NotJson> {
        let mut scan = Scan::new(body);
        walk(&mut scan, &self.root, out)
    }
}

fn walk(scan: &mut Scan<'_>, node: &Node, out: &mut Vec<String>) -> Result<(), NotJson> {
    scan.ws();
    match scan.peek()? {
        b'{' if !node.members.is_empty() || !node.ids.is_empty() => {}
        // an array where an object was named: each element is read as that object
        b'[' => {
            let element = node.each.as_deref().unwrap_or(node);
            if element.members.is_empty() && element.ids.is_empty() && element.each.is_none() {
                return scan.skip();
            }
            scan.i += 1;
            scan.ws();
            if scan.peek()? == b']' {
                scan.i += 1;
                return Ok(());
            }
            loop {
                walk(scan, element, out)?;
                scan.ws();
                match scan.peek()? {
                    b',' => scan.i += 1,
                    b']' => {
                        scan.i += 1;
                        return Ok(());
                    }
                    _ => return Err(NotJson),
                }
            }
        }
        _ => return scan.skip(),
    }
    scan.i += 1;
    loop {
        scan.ws();
        match scan.peek()? {
            b'}' => break,
            b'"' => {}
            _ => return Err(NotJson),
        }
        let key = scan.key()?;
        scan.ws();
        if scan.peek()? != b':' {
            return Err(NotJson);
        }
        scan.i += 1;
        if let Some((_, entity)) = node.ids.iter().find(|(id, _)| **id == *key) {
            if let Some(value) = scan.scalar()?
                && out.len() < MAX_TAGS
            {
                out.push(tag(entity, &value));
            }
        } else if let Some((_, child)) = node.members.iter().find(|(k, _)| **k == *key) {
            walk(scan, child, out)?;
        } else {
            scan.ws();
            scan.skip()?;
        }
        scan.ws();
        match scan.peek()? {
            b',' => scan.i += 1,
            b'}' => break,
            _ => return Err(NotJson),
        }
    }
    scan.i += 1;
    Ok(())
}

/// The entities of a routes file, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entities {
    pub defs: Vec<EntityDef>,
}

impl Entities {
    pub fn get(&self, name: &str) -> Option<&EntityDef> {
        self.defs.iter().find(|e| e.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.defs.iter().map(|e| e.name.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn occ(pairs: &[(&str, &str, &str)]) -> Occurrences {
        let mut o = Occurrences::default();
        for (p, e, id) in pairs {
            o.add(&parse_path(p).unwrap(), e, id);
        }
        o
    }

    fn tags(o: &Occurrences, body: &str) -> Vec<String> {
        let mut out = Vec::new();
        o.collect(body.as_bytes(), &mut out).unwrap();
        out
    }

    #[test]
    fn identifiers_are_read_where_entities_occur() {
        let o = occ(&[("/articles/*", "Article", "slug"), ("/articles/*/author", "Profile", "username")]);
        let body = r#"{"articles":[{"title":"x","author":{"username":"al\"ice","bio":"{"},"slug":"a-1"},
            {"slug":"b\u00e9","author":{"username":"bob"}}],"articlesCount":2}"#;
        assert_eq!(tags(&o, body), ["Profile:al\"ice", "Article:a-1", "Article:bé", "Profile:bob"]);
        assert_eq!(o.listed(), ["Article", "Profile"]);
        // numbers identify too; nulls and objects do not
        let c = occ(&[("/", "Comment", "id")]);
        assert_eq!(tags(&c, r#"{"id": 17, "body": "b"}"#), ["Comment:17"]);
        assert!(tags(&c, r#"{"id": null}"#).is_empty());
        // an array where an object was named: each element
        let a = occ(&[("/article", "Article", "slug")]);
        assert_eq!(tags(&a, r#"{"article":[{"slug":"x"},{"slug":"y"}]}"#), ["Article:x", "Article:y"]);
        assert!(o.collect(br#"{"articles":[{"slug":"x"}"#, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_write_names_only_its_outermost_entities() {
        let o = occ(&[("/article", "Article", "slug"), ("/article/author", "Profile", "username")]);
        let w = o.written();
        assert_eq!(tags(&w, r#"{"article":{"slug":"s","author":{"username":"u"}}}"#), ["Article:s"]);
        // an entity embedded in something that is none is a copy too
        let c = occ(&[("/comment/author", "Profile", "username")]).written();
        assert!(c.is_empty());
        let bare = occ(&[("/", "Profile", "username")]).written();
        assert_eq!(tags(&bare, r#"{"username":"u"}"#), ["Profile:u"]);
        assert!(o.listed().is_empty());
        assert!(parse_path("articles").is_err() && parse_path("/a//b").is_err());
    }

    #[test]
    fn list_changes() {
        let p = |v: &[&str]| ListChange::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["creates"]).unwrap(), ListChange::Creates);
        assert_eq!(p(&["all"]).unwrap(), ListChange::All);
        assert_eq!(p(&["favorited"]).unwrap(), ListChange::Filters(vec!["favorited".into()]));
        assert_eq!(p(&["favorited", "tag"]).unwrap().describe(), "[\"favorited\", \"tag\"]");
        assert!(p(&[]).is_err() && p(&["limit"]).is_err() && p(&["a b"]).is_err());
    }
}
