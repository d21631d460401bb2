//! `fastgate init --from-openapi`: a complete, commented routes file from the backend's
//! OpenAPI document. One route per path template, grouped by tag; each default says why in a
//! comment; invalidation rules come from the schema graph (a write returning `Owner` drops the
//! cached GETs whose responses embed an `Owner`).

use super::entities::{self, Inferred};
use super::health::{self, Choice};
use super::{top_names, Document, Operation};
use crate::model::template::PathTemplate;
use crate::model::matcher::PathMatch;
use std::sync::Arc;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

pub struct InitOptions {
    /// Where the document came from (for the header comment).
    pub source: String,
    /// `HOST:PORT` of the backend.
    pub upstream: String,
    pub listen: String,
}

/// How long `init` waits for the app to answer a health-check candidate.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// GET responses are kept this long when the backend's `Cache-Control` says nothing.
const TTL: &str = "10s";
const PAGE_SIZE: [&str; 5] = ["limit", "page_size", "size", "per_page", "pagesize"];
const OFFSET: [&str; 4] = ["offset", "skip", "page", "start"];
/// The page size `init` allows where the schema gives no maximum: generous for a client,
/// bounded for the database.
const PAGE_CAP: u64 = 1000;
/// Whole words of a path or tag that mark an auth endpoint (`/auth/token`, `/users/login`;
/// not `/authors`).
const AUTH_WORDS: [&str; 10] = ["login", "logout", "token", "auth", "oauth", "oauth2", "signin", "signup", "register", "password"];

fn auth_endpoint(path: &str, ops: &[&Operation]) -> bool {
    let is_auth = |text: &str| text.to_ascii_lowercase().split(|c: char| !c.is_ascii_alphanumeric()).any(|w| AUTH_WORDS.contains(&w));
    is_auth(path) || ops.iter().any(|o| o.tags.iter().any(|t| is_auth(t)))
}

/// The backend address from the document's URL (`http://host:port/openapi.json`), if it is one.
pub fn upstream_from_url(source: &str) -> Option<String> {
    let (authority, _) = crate::client::split_url(source).ok()?;
    Some(if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") })
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// FastAPI's operation id is the function name + the path's characters as `_` + the method:
/// the function name is what a reader knows the endpoint by.
pub(crate) fn function_name(op: &Operation) -> String {
    let path_part: String = op.path.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if let Some(id) = &op.operation_id {
        if let Some((head, _method)) = id.rsplit_once('_')
            && let Some(name) = head.strip_suffix(&path_part)
            && !name.is_empty()
        {
            return name.to_string();
        }
        return id.clone();
    }
    path_part.trim_matches('_').to_string()
}

fn literal_prefix(path: &str, segments: usize) -> String {
    path.split('/').filter(|s| !s.is_empty() && !s.starts_with('{')).take(segments).collect::<Vec<_>>().join("-")
}

fn params(path: &str) -> BTreeSet<String> {
    PathTemplate::parse(path).map(|t| t.names().map(str::to_string).collect()).unwrap_or_default()
}

/// What `resource` invalidates for a write on `path`: the route table's own rule
/// (`cache::invalidate::resource_root`) for the template the route will have.
fn resource_root(path: &str) -> String {
    let matcher = match PathTemplate::parse(path) {
        Ok(t) if path.contains('{') => PathMatch::Template(Arc::new(t)),
        _ => PathMatch::Exact(path.to_string()),
    };
    crate::cache::invalidate::resource_root(&matcher, path)
}

/// An invalidation pattern for cached GETs of `target` from a write on `writer`: the target's
/// own parameters that the writer also has are kept; at the first one it lacks, the pattern
/// becomes that subtree.
fn pattern(target: &str, writer_params: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for seg in target.split('/').filter(|s| !s.is_empty()) {
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(p) if writer_params.contains(p) => {
                let _ = write!(out, "/{{{p}}}");
            }
            Some(_) => return format!("{out}/**"),
            None => {
                let _ = write!(out, "/{seg}");
            }
        }
    }
    if out.is_empty() { "/".into() } else { out }
}

fn covered(p: &str, by: &str) -> bool {
    match by.strip_suffix("/**") {
        Some(root) => p == root || p.starts_with(&format!("{root}/")),
        None => p == by,
    }
}

fn size_text(bytes: u64) -> String {
    let kib = bytes.div_ceil(1024).max(1);
    if kib >= 1024 { format!("{}MiB", kib.div_ceil(1024)) } else { format!("{kib}KiB") }
}

/// Path templates with their operations, in document order.
type Paths<'a> = Vec<(&'a str, Vec<&'a Operation>)>;

/// The routes file.
pub fn generate(doc: &Document, opts: &InitOptions) -> String {
    // path templates in document order, grouped by their first tag
    let mut paths: Paths<'_> = Vec::new();
    for op in &doc.operations {
        match paths.iter_mut().find(|(p, _)| *p == op.path) {
            Some((_, ops)) => ops.push(op),
            None => paths.push((&op.path, vec![op])),
        }
    }
    let tag_of = |ops: &[&Operation]| ops.iter().find_map(|o| o.tags.first().cloned()).unwrap_or_else(|| "untagged".into());
    let mut groups: Vec<(String, Paths<'_>)> = Vec::new();
    for (path, ops) in paths {
        let tag = tag_of(&ops);
        match groups.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, list)) => list.push((path, ops)),
            None => groups.push((tag, vec![(path, ops)])),
        }
    }
    let gets: Vec<&Operation> = doc.operations.iter().filter(|o| o.method == "GET").collect();
    let contained: HashMap<&str, BTreeSet<String>> =
        gets.iter().filter_map(|o| Some((o.path.as_str(), doc.contained(o.response.as_ref()?)))).collect();

    let mut out = String::new();
    let writes = doc.operations.iter().filter(|o| o.is_write()).count();
    let _ = writeln!(out, "# fastgate routes for {:?} {} (from {})", doc.title, doc.version, opts.source);
    let _ = writeln!(
        out,
        "# {} operations on {} paths, {} of them writes. Generated by `fastgate init --from-openapi`;",
        doc.operations.len(),
        groups.iter().map(|(_, l)| l.len()).sum::<usize>(),
        writes
    );
    let _ = writeln!(out, "# review it, then `fastgate check -c FILE --openapi URL` keeps it honest as the app changes.\n");
    let _ = writeln!(out, "[server]\nlisten = {}\n", q(&opts.listen));
    let _ = writeln!(out, "[upstreams.app]\nservers = [{}]", q(&opts.upstream));
    let probe = |path: &str| -> Result<u16, String> {
        crate::client::get(&format!("http://{}{path}", opts.upstream), PROBE_TIMEOUT).map(|(status, _)| status).map_err(|e| e.to_string())
    };
    health_check(&mut out, &health::choose(doc, &probe));
    let _ = writeln!(out, "[defaults]");
    let _ = writeln!(out, "# one client cannot take the backend: 50 requests a second each, bursts of 100");
    let _ = writeln!(out, "rate_limit = [{{ rate = \"50/s\", burst = 100, key = \"client_ip\", name = \"per-client\" }}]");
    let _ = writeln!(out, "# FastAPI's errors ({{\"detail\": ...}}, 422 lists) in the gateway's problem+json shape");
    let _ = writeln!(out, "normalize_errors = true");
    let _ = writeln!(out, "# JSON reads may ask for fewer members: ?fields=id,name,owner.name");
    let _ = writeln!(out, "fields = \"on\"\n");
    let entities = entities::infer(doc);
    entities_section(&mut out, &entities);

    let all_paths: Vec<(&str, BTreeSet<String>)> =
        groups.iter().flat_map(|(_, l)| l.iter()).map(|(p, ops)| (*p, ops.iter().map(|o| function_name(o)).collect())).collect();
    let mut names: HashMap<String, usize> = HashMap::new();
    names.insert("rest".into(), 1);
    for (tag, list) in &groups {
        let _ = writeln!(out, "# ---- {tag} ----\n");
        for (path, ops) in list {
            let fns: BTreeSet<String> = ops.iter().map(|o| function_name(o)).collect();
            let twins: Vec<&str> = all_paths.iter().filter(|(q, f)| q != path && *f == fns && twin(path, q)).map(|(q, _)| *q).collect();
            let graph = Graph { gets: &gets, contained: &contained, twins: &twins, entities: &entities, doc };
            route(&mut out, doc, path, ops, &graph, &mut names);
        }
    }
    let _ = writeln!(out, "# Everything the document does not declare: /docs, /redoc, /openapi.json, routes added later.");
    let _ = writeln!(out, "[[routes]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"");
    out
}

/// `text` as `# ` comment lines of at most 100 columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 100 && line.len() > 1 {
            let _ = writeln!(out, "{line}");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}

/// The upstream's `health_check` line (or why there is none), with the rule that chose it.
fn health_check(out: &mut String, choice: &Choice) {
    let check = |path: &str| format!("health_check = {{ path = {}, interval = \"5s\" }}", q(path));
    match choice {
        Choice::Operation { path, name } => {
            comment(out, &format!("the app's own health endpoint (`{name}`: a GET without parameters or credentials that says health); it answered 200 when init asked"));
            let _ = writeln!(out, "{}\n", check(path));
        }
        Choice::Document { path, passed_over } => {
            let tried = if passed_over.is_empty() { String::new() } else { format!(" or answered 200 ({})", passed_over.join("; ")) };
            comment(out, &format!("no operation says health{tried}: the path init read the document from, which the app serves without credentials and answered 200"));
            let _ = writeln!(out, "{}\n", check(path));
        }
        Choice::None { why, unprobed } => {
            comment(out, &format!("no active health check: {why}. The upstream counts as healthy; passive health (`eject_after`) still leaves out a failing server while the upstream has another. A check must answer 200, or it takes the app off the air."));
            if let Some(p) = unprobed {
                let _ = writeln!(out, "# once {p} answers 200:\n# {}", check(p));
            }
            out.push('\n');
        }
    }
}

/// What invalidation rules are made from.
struct Graph<'a> {
    gets: &'a [&'a Operation],
    /// Each GET path's response schemas, nested ones included.
    contained: &'a HashMap<&'a str, BTreeSet<String>>,
    /// The same operations under other prefixes (a router included twice).
    twins: &'a [&'a str],
    entities: &'a [Inferred],
    doc: &'a Document,
}

/// `a` and `b` are the same template under two literal prefixes: they end alike from their
/// first parameter (or last segment) on.
pub(crate) fn twin(a: &str, b: &str) -> bool {
    let tail = |p: &str| -> String {
        let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        let first = segs.iter().position(|s| s.starts_with('{')).map_or(segs.len().saturating_sub(1), |i| i.saturating_sub(1));
        segs[first..].join("/")
    };
    tail(a) == tail(b)
}

fn route(out: &mut String, doc: &Document, path: &str, ops: &[&Operation], graph: &Graph<'_>, names: &mut HashMap<String, usize>) {
    let get = ops.iter().find(|o| o.method == "GET");
    let primary = get.copied().unwrap_or(ops[0]);
    let mut name = function_name(primary);
    if names.contains_key(&name) {
        name = format!("{name}-{}", literal_prefix(path, 2));
    }
    let n = names.entry(name.clone()).or_insert(0);
    *n += 1;
    if *n > 1 {
        name = format!("{name}-{n}");
    }
    let mut methods: Vec<&str> = ops.iter().map(|o| o.method.as_str()).collect();
    if get.is_some() && !methods.contains(&"HEAD") {
        methods.push("HEAD");
    }
    let fns: BTreeSet<String> = ops.iter().map(|o| function_name(o)).collect();
    let _ = writeln!(out, "# {} {path}: {}", methods.join(", "), fns.into_iter().collect::<Vec<_>>().join(", "));
    let _ = writeln!(out, "[[routes]]\nname = {}", q(&name));
    let list: Vec<String> = methods.iter().map(|m| q(m)).collect();
    let _ = writeln!(out, "match = {{ path = {}, methods = [{}] }}", q(path), list.join(", "));
    let _ = writeln!(out, "upstream = \"app\"");

    let auth = auth_endpoint(path, ops);
    let streaming = ops.iter().any(|o| o.event_stream);
    if auth {
        let _ = writeln!(out, "# an auth endpoint: a tight per-client limit against credential stuffing; never cached");
        let _ = writeln!(
            out,
            "rate_limit = [{{ rate = \"50/s\", burst = 100, key = \"client_ip\", name = \"per-client\" }}, {{ rate = \"10/m\", burst = 10, key = \"client_ip\", name = \"auth\" }}]"
        );
    }
    if streaming {
        let _ = writeln!(out, "# declares text/event-stream: no total timeout, never cached or filtered");
        let _ = writeln!(out, "streaming = true\nfields = \"off\"");
    }
    if let Some(g) = get.filter(|_| !auth && !streaming) {
        if !g.secured && g.headers.iter().any(|h| h == "authorization") {
            let _ = writeln!(out, "# GET is cached {TTL} unless the backend's Cache-Control says otherwise; it reads `Authorization` (a header parameter, often a dependency's), so each caller has its own entries");
            let _ = writeln!(out, "cache = {{ ttl = \"{TTL}\", key = {{ headers = [\"authorization\"] }} }}");
        } else if g.secured {
            let _ = writeln!(out, "# GET is cached {TTL} unless the backend's Cache-Control says otherwise; it requires credentials, so each caller has its own entries");
            let _ = writeln!(out, "cache = {{ ttl = \"{TTL}\", key = {{ headers = [\"authorization\"] }} }}");
        } else {
            let _ = writeln!(out, "# GET is cached {TTL} unless the backend's Cache-Control says otherwise (requests with credentials bypass it)");
            let _ = writeln!(out, "cache = {{ ttl = \"{TTL}\" }}");
        }
        pagination(out, g);
    }
    let occ = entities::route_occurrences(doc, graph.entities, ops);
    if !occ.is_empty() {
        let shown: Vec<String> = occ.iter().map(|(p, e)| format!("{e} at {p}")).collect();
        let what = if get.is_some() { "a stored answer is tagged with each one's identifier, and a write to any of them drops it" } else { "a write's answer names what it changed (the resource it answers with, not the copies embedded in it)" };
        comment(out, &format!("its answers show {}: {what}", shown.join(", ")));
        let pairs: Vec<String> = occ.iter().map(|(p, e)| format!("{} = {}", q(p), q(e))).collect();
        let _ = writeln!(out, "entities = {{ {} }}", pairs.join(", "));
    }
    body_cap(out, doc, ops);
    let mut answered = crate::model::entity::Occurrences::default();
    for (p, e) in &occ {
        if let Ok(steps) = crate::model::entity::parse_path(p) {
            answered.add(&steps, e, "");
        }
    }
    invalidation(out, path, ops, graph, !answered.written().is_empty());
    out.push('\n');
}

fn pagination(out: &mut String, g: &Operation) {
    let Some(size) = g.query.iter().find(|p| PAGE_SIZE.contains(&p.name.as_str())) else { return };
    let (max, mut why) = match size.maximum.filter(|m| *m > 0) {
        Some(max) => (max, format!("`{}` has maximum {max} in the schema", size.name)),
        // `size` alone may mean bytes (`/binary?size=`): capped only beside an offset
        None if size.name == "size" && !g.query.iter().any(|p| OFFSET.contains(&p.name.as_str())) => return,
        None => (PAGE_CAP, format!("`{}` has no maximum in the schema, so one request could ask for every row: the gateway caps it at {PAGE_CAP}", size.name)),
    };
    let mut text = format!("pagination = {{ param = {}, max = {max}", q(&size.name));
    if let Some(d) = size.default.filter(|d| *d >= 1 && *d <= max) {
        let _ = write!(text, ", default = {d}");
    }
    if let Some(off) = g.query.iter().find(|p| OFFSET.contains(&p.name.as_str())) {
        if off.name != "offset" {
            let _ = write!(text, ", offset_param = {}", q(&off.name));
        }
        if let Some(m) = off.maximum {
            let _ = write!(text, ", max_offset = {m}");
            let _ = write!(why, ", `{}` {m}", off.name);
        }
    }
    let _ = writeln!(out, "# {why}: the gateway holds the same bounds (larger pages are lowered to the maximum)");
    let _ = writeln!(out, "{text} }}");
}

/// `[entities.NAME]` tables, each with why.
fn entities_section(out: &mut String, entities: &[Inferred]) {
    if entities.is_empty() {
        return;
    }
    let _ = writeln!(out, "# ---- entities ----");
    comment(out, "What the cache tags stored answers with: a write drops the entries that show what it changed (the item it names, and lists whose members it changes), not a whole path subtree.");
    out.push('\n');
    for e in entities {
        let also: Vec<&str> = e.schemas.iter().skip(1).map(String::as_str).collect();
        let mut why = e.why.clone();
        if !also.is_empty() {
            let _ = write!(why, "; {} carry the same `{}`", also.join(", "), e.id);
        }
        comment(out, &format!("{}: {why}", e.name));
        let _ = writeln!(out, "[entities.{}]\nid = {}", e.name, q(&e.id));
        match e.items.as_slice() {
            [] => {}
            [one] => {
                let _ = writeln!(out, "item = {}", q(one));
            }
            many => {
                let _ = writeln!(out, "item = [{}]", many.iter().map(|i| q(i)).collect::<Vec<_>>().join(", "));
            }
        }
        match &e.lists_why {
            _ if e.items.is_empty() => {}
            Some(why) => {
                comment(out, why);
                let _ = writeln!(out, "lists = {}", e.lists.describe());
            }
            None => comment(out, "its lists change on creates and deletes, filtered ones on updates (lists = \"creates\"); say [\"param\"], \"filtered\" or \"all\" if other writes move items between them"),
        }
        out.push('\n');
    }
}

/// What writes on `path` drop by entities: the comment saying it, and whether the default
/// rules apply or only `viewer` does; `None` when the route names no entity and answers with
/// none (the path rules apply).
///
/// A write to a word below an item (`/api/articles/{slug}/comments`, `.../follow`) changes the
/// item only if the item shows something of it: a member named after the word. None
/// (`ArticleOut` has nothing of comments): it changes the thread, not the article. Only
/// flags (`Profile.following`): it changes how the writer sees the item, which `viewer` drops.
/// A count (`favoritesCount`, `review_count`): it changes the item for everyone.
fn entity_writes(doc: &Document, path: &str, entities: &[Inferred], answers_entities: bool) -> Option<(String, bool)> {
    let route = PathTemplate::parse(path).ok()?;
    let mut parts = Vec::new();
    let mut viewer_only = None;
    for e in entities {
        for item_path in &e.items {
            let Ok(item) = PathTemplate::parse(item_path) else { continue };
            if let Some((param, is_item)) = route.under_item(&item) {
                let delete = if is_item { "; on a delete its lists and subtree too" } else { "" };
                parts.push(format!("the {} it names ({}:{{{param}}}{delete})", e.name, e.name));
                let tail = path.strip_prefix(item_path.as_str()).unwrap_or("").trim_matches('/');
                if !is_item && !tail.is_empty() && !tail.contains(['/', '{']) {
                    viewer_only = shows_of(doc, e, tail);
                }
                break;
            }
            if route.is_collection_of(&item) {
                parts.push(format!("every list of {} (a create changes them)", e.name));
                break;
            }
        }
    }
    if let Some(why) = viewer_only {
        return Some((format!("{why}: writes here drop their own path and the writer's own entries (invalidate = [\"viewer\"])"), true));
    }
    if answers_entities {
        parts.push("the entity its answer is (not the copies embedded in it)".into());
    }
    if parts.is_empty() {
        return None;
    }
    Some((format!("writes here drop {}, the writer's own entries, and their own path (the default rules: invalidate = [\"entities\", \"viewer\"])", parts.join(", ")), false))
}

/// Why a write to `word` below an item of `e` leaves the item as others see it, when it does:
/// the item's schema has no member named after the word, or only true/false ones.
fn shows_of(doc: &Document, e: &Inferred, word: &str) -> Option<String> {
    let schema = e.schemas.first()?;
    let reference = serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") });
    let props = doc.schema_at(&reference, &[])?.get("properties")?.as_object()?;
    let w = word.to_ascii_lowercase();
    let stem = w.strip_suffix('s').unwrap_or(&w);
    let stem = stem.strip_suffix('e').unwrap_or(stem);
    let named: Vec<(&String, &serde_json::Value)> = props.iter().filter(|(k, _)| k.to_ascii_lowercase().replace('_', "").contains(stem)).collect();
    if named.is_empty() {
        return Some(format!("{schema} shows nothing of `{word}` (no member named after it): a write here changes what is below the {}, not the {} itself", e.name, e.name));
    }
    let flags = named.iter().all(|(_, v)| doc.schema_at(v, &[]).and_then(|s| s.get("type")).and_then(serde_json::Value::as_str) == Some("boolean"));
    let names: Vec<String> = named.iter().map(|(k, _)| format!("`{k}`")).collect();
    flags.then(|| format!("{schema} shows `{word}` only as {}, a flag of the reader's: a write here changes how the writer sees the {}, not what others see", names.join(", "), e.name))
}

fn body_cap(out: &mut String, doc: &Document, ops: &[&Operation]) {
    let bodies: Vec<(&Operation, &serde_json::Value)> = ops.iter().filter_map(|o| Some((*o, o.request.as_ref()?))).collect();
    if bodies.is_empty() {
        return;
    }
    let sizes: Option<Vec<u64>> = bodies.iter().map(|(_, s)| doc.max_json_size(s)).collect();
    let names: Vec<String> = bodies.iter().flat_map(|(_, s)| top_names(s)).collect();
    match sizes.and_then(|s| s.into_iter().max()) {
        Some(max) => {
            // twice the bound: whitespace and key order are the client's
            let cap = size_text(max * 2);
            let _ = writeln!(out, "# the request schema ({}) bounds every string and list: at most {max} bytes of JSON", names.join(", "));
            let _ = writeln!(out, "max_body = {}", q(&cap));
        }
        None => {
            let _ = writeln!(out, "# the request schema ({}) has unbounded strings or lists: the built-in 10MiB body cap applies", names.join(", "));
        }
    }
}

fn invalidation(out: &mut String, path: &str, ops: &[&Operation], graph: &Graph<'_>, answers_entities: bool) {
    let writers: Vec<&&Operation> = ops.iter().filter(|o| o.is_write()).collect();
    if writers.is_empty() {
        return;
    }
    if let Some((text, viewer_only)) = entity_writes(graph.doc, path, graph.entities, answers_entities) {
        comment(out, &text);
        // a router included twice: its other copy of this path is not tagged with what a
        // write below an item changes (a review list), so it is named
        let own = params(path);
        let twins: Vec<String> = graph.twins.iter().map(|t| pattern(t, &own)).collect();
        if !twins.is_empty() {
            comment(out, &format!("{} serve the same operations (a router included twice): their copies of this path go too", graph.twins.join(", ")));
        }
        let rules: &[&str] = if viewer_only { &["viewer"] } else { &["entities", "viewer"] };
        if viewer_only || !twins.is_empty() {
            let list: Vec<String> = rules.iter().map(|s| q(s)).chain(twins.iter().map(|p| q(p))).collect();
            let _ = writeln!(out, "invalidate = [{}]", list.join(", "));
        }
        return;
    }
    let own = params(path);
    let root = resource_root(path);
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in graph.twins {
        let why = format!("{t} serves the same operations: a router included twice");
        rules.entry(format!("{}/**", resource_root(t))).or_default().push(why);
    }
    let touched: BTreeSet<String> = writers
        .iter()
        .flat_map(|o| o.request.iter().chain(o.response.iter()).flat_map(top_names))
        .collect();
    for g in graph.gets {
        let Some(inside) = graph.contained.get(g.path.as_str()) else { continue };
        let hit: Vec<&String> = touched.iter().filter(|s| inside.contains(*s)).collect();
        if hit.is_empty() {
            continue;
        }
        let p = pattern(&g.path, &own);
        if covered(&p, &format!("{root}/**")) {
            continue; // `resource` already drops it
        }
        let why = format!("GET {} contains {}", g.path, hit.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
        rules.entry(p).or_default().push(why);
    }
    // a pattern inside another's subtree adds nothing
    let all: Vec<String> = rules.keys().cloned().collect();
    rules.retain(|p, _| !all.iter().any(|o| o != p && o.ends_with("/**") && covered(p, o)));
    if rules.is_empty() {
        return;
    }
    let sent = if touched.is_empty() { "no named schema".to_string() } else { touched.iter().cloned().collect::<Vec<_>>().join(", ") };
    let _ = writeln!(out, "# writes here send or return {sent}; besides this resource ({root}), they change:");
    for (p, why) in &rules {
        let _ = writeln!(out, "#   {p}  ({})", why.join("; "));
    }
    let list: Vec<String> = ["resource", "viewer"].iter().map(|s| q(s)).chain(rules.keys().map(|p| q(p))).collect();
    let _ = writeln!(out, "invalidate = [{}]", list.join(", "));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_patterns_roots() {
        let op = |id: &str, path: &str| Operation {
            method: "GET".into(),
            path: path.into(),
            operation_id: Some(id.into()),
            tags: vec![],
            secured: false,
            query: vec![],
            request: None,
            response: None,
            event_stream: false,
            required_params: false,
            headers: vec![],
        };
        assert_eq!(function_name(&op("get_item_api_v1_items__item_id__get", "/api/v1/items/{item_id}")), "get_item");
        assert_eq!(function_name(&op("custom", "/x")), "custom");
        let w: BTreeSet<String> = ["user_id".to_string()].into();
        assert_eq!(pattern("/api/items/{item_id}", &w), "/api/items/**");
        assert_eq!(pattern("/api/users/{user_id}/profile", &w), "/api/users/{user_id}/profile");
        assert_eq!(pattern("/api/items", &w), "/api/items");
        assert_eq!(resource_root("/api/v1/items/{item_id}/reviews"), "/api/v1/items");
        assert_eq!(resource_root("/api/v1/items"), "/api/v1/items");
        assert!(covered("/api/items", "/api/items/**") && covered("/api/items/{x}", "/api/items/**"));
        assert!(!covered("/api/itemsx", "/api/items/**"));
        assert_eq!(upstream_from_url("http://127.0.0.1:8000/openapi.json").unwrap(), "127.0.0.1:8000");
        assert_eq!(size_text(3000), "3KiB");
        assert!(twin("/api/v1/items/{item_id}/reviews", "/api/items/{item_id}/reviews"));
        assert!(twin("/api/v1/items", "/api/items"));
        assert!(!twin("/api/v1/items", "/api/v1/users"));
        assert!(auth_endpoint("/auth/token", &[]) && auth_endpoint("/api/users/login", &[]) && auth_endpoint("/oauth2/authorize", &[]));
        assert!(!auth_endpoint("/v1/authors/{author_id}", &[]) && !auth_endpoint("/api/tokenizer", &[]));
    }
}
