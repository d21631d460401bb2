//! The house's layering, checked on every test run so the next change keeps it standing
//! without being told. Each file of `src/` is parsed (syn) and every path it names is resolved
//! to the top-level module it reaches: `use` trees with their groups, nesting, renames and
//! `self`, `super::` from the file's own module, names a `use` brought in (`use
//! crate::config;` then `config::raw::X`), and paths in types and expressions. Items under
//! `#[cfg(test)]` may reach anywhere, wherever they stand in the file.
//!
//! `ALLOWED` is the table of who may import whom. It is a layering (no cycle, checked), it is
//! exact (an edge the code no longer has is reported too), and a new edge is a reviewed
//! one-line change to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Each top-level module of `src/` and the modules it may import, bottom layer first.
const ALLOWED: &[(&str, &[&str])] = &[
    // plain definitions and leaf utilities: nothing else of the crate
    ("model", &[]),
    ("problem", &[]),
    ("client", &[]),
    ("lib", &[]),
    // connections and loaders built from definitions
    ("discovery", &["model"]),
    ("tls", &["model"]),
    ("telemetry", &["model"]),
    // mechanisms
    ("cache", &["model"]),
    ("shared_state", &["model", "cache"]),
    ("policy", &["model", "problem", "cache", "shared_state", "telemetry"]),
    ("upstream", &["model", "discovery", "tls", "telemetry", "policy"]),
    // what every request gets from the server, before and beside its route
    ("edge", &["model", "problem", "policy"]),
    // config compiles raw text into the plan, with each policy's parsers
    ("config", &["model", "policy", "edge"]),
    // the live route table and its materialization
    ("routing", &["model", "problem", "telemetry", "policy", "upstream"]),
    ("runtime", &["problem", "shared_state", "discovery", "tls", "cache", "policy", "upstream", "config", "routing", "edge"]),
    ("app", &["model", "shared_state", "telemetry", "cache", "runtime"]),
    // the server: requests, the admin listener, reloads, start-up
    ("reload", &["config", "runtime", "app"]),
    ("proxy", &["model", "problem", "telemetry", "cache", "policy", "routing", "runtime", "app", "edge"]),
    ("admin", &["model", "problem", "cache", "app", "reload", "edge"]),
    ("bootstrap", &["model", "app", "reload", "proxy", "admin"]),
    // tools beside the server
    ("openapi", &["model", "client", "cache", "policy", "config"]),
    ("routetest", &["model", "cache", "policy", "config"]),
    ("fuzzing", &["model", "cache", "policy", "config", "proxy", "edge"]),
    ("main", &["model", "problem", "client", "shared_state", "discovery", "tls", "telemetry", "cache", "config", "runtime", "app", "bootstrap", "openapi", "routetest"]),
];

/// Text that builds live state: never in config.
const STATE_MARKERS: &[&str] = &["Semaphore", "LoadBalancer", "ArcSwap", "RateLimiter", "governor"];
const STATE_CONSTRUCTORS: &[&str] = &["Concurrency", "RateLimit", "Upstream"];

/// What a policy must not see: it works on the `Exchange` view, testable without pingora's session.
const POLICY_NEVER: &[&str] = &["Session", "ProxyHttp", "downstream_modules_ctx"];

/// What one file names, production code only.
#[derive(Default)]
struct Named {
    /// Absolute paths into the crate (`["config", "raw", "RawRoute"]`).
    crate_paths: BTreeSet<Vec<String>>,
    /// Every path as written, `::`-joined (`governor::Quota`, `Concurrency::new`).
    paths: BTreeSet<String>,
    idents: BTreeSet<String>,
}

struct Reader<'a> {
    /// The module the code being read is in (`["policy", "cache"]`; `[]` at the crate root).
    module: Vec<String>,
    /// Names brought in by `use`, to the absolute path they stand for.
    aliases: BTreeMap<String, Vec<String>>,
    /// The first pass only learns the aliases.
    learning: bool,
    out: &'a mut Named,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl Reader<'_> {
    /// `segments` as an absolute crate path, when it is one.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let (first, rest) = segments.split_first()?;
        match first.as_str() {
            "crate" | "fastgate" => Some(rest.to_vec()),
            "self" => Some(self.module.iter().chain(rest).cloned().collect()),
            "super" => {
                let mut base = self.module.clone();
                let mut rest = rest;
                base.pop();
                while let Some(("super", more)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
                    base.pop();
                    rest = more;
                }
                Some(base.into_iter().chain(rest.iter().cloned()).collect())
            }
            name => self.aliases.get(name).map(|abs| abs.iter().chain(rest).cloned().collect()),
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let full: Vec<String> = if name == "self" { prefix.clone() } else { prefix.iter().cloned().chain([name]).collect() };
                self.imported(full, None);
            }
            syn::UseTree::Rename(r) => {
                let name = r.ident.to_string();
                let full: Vec<String> = if name == "self" { prefix.clone() } else { prefix.iter().cloned().chain([name]).collect() };
                self.imported(full, Some(r.rename.to_string()));
            }
            syn::UseTree::Glob(_) => {
                if let Some(abs) = self.resolve(prefix) {
                    self.out.crate_paths.insert(abs);
                }
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn imported(&mut self, full: Vec<String>, rename: Option<String>) {
        let Some(abs) = self.resolve(&full) else { return };
        let name = rename.or_else(|| abs.last().cloned()).unwrap_or_default();
        if self.learning {
            self.aliases.insert(name, abs);
        } else {
            self.out.crate_paths.insert(abs);
        }
    }
}

impl<'ast> Visit<'ast> for Reader<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if !self.learning {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            if let Some(abs) = self.resolve(&segments) {
                self.out.crate_paths.insert(abs);
            }
            self.out.paths.insert(segments.join("::"));
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_ident(&mut self, ident: &'ast proc_macro2::Ident) {
        if !self.learning {
            self.out.idents.insert(ident.to_string());
        }
    }

    /// Macro bodies are tokens, not syntax: read the paths they spell (`crate::x::y!(...)`,
    /// `format!("{}", crate::a::b)`).
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        if self.learning {
            return;
        }
        let tokens: Vec<proc_macro2::TokenTree> = mac.tokens.clone().into_iter().collect();
        self.macro_tokens(&tokens);
    }
}

impl Reader<'_> {
    fn macro_tokens(&mut self, tokens: &[proc_macro2::TokenTree]) {
        use proc_macro2::TokenTree;
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                    self.macro_tokens(&inner);
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    // an identifier followed by `::` pairs is a path
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < tokens.len() + 1 {
                        match (&tokens.get(j), &tokens.get(j + 1), &tokens.get(j + 2)) {
                            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next)))
                                if a.as_char() == ':' && b.as_char() == ':' =>
                            {
                                segments.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segments.len() > 1 {
                        if let Some(abs) = self.resolve(&segments) {
                            self.out.crate_paths.insert(abs);
                        }
                        self.out.paths.insert(segments.join("::"));
                    }
                    self.out.idents.extend(segments);
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

/// What `text`, the file at `module` (`["policy", "cache"]`), names in production code.
fn named(module: &[&str], text: &str) -> Result<Named, String> {
    let file = syn::parse_file(text).map_err(|e| e.to_string())?;
    let mut out = Named::default();
    let mut reader = Reader { module: module.iter().map(|s| s.to_string()).collect(), aliases: BTreeMap::new(), learning: true, out: &mut out };
    reader.visit_file(&file);
    reader.learning = false;
    reader.visit_file(&file);
    Ok(out)
}

/// The module path of a file under `src/` (`policy/cache.rs` -> `["policy", "cache"]`,
/// `policy/mod.rs` -> `["policy"]`, `lib.rs` -> `[]`) and the top-level module it belongs to.
fn module_of(rel: &Path) -> (Vec<String>, String) {
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.strip_suffix(".rs").unwrap_or(&last).to_string();
    let top = parts.first().cloned().unwrap_or_else(|| stem.clone());
    if !matches!(stem.as_str(), "mod" | "lib" | "main") {
        parts.push(stem);
    }
    (parts, top)
}

/// The broken rules of one file, as lines to print, and the edges it adds.
fn check_file(top: &str, module: &[String], file: &str, text: &str, modules: &BTreeSet<String>) -> (Vec<String>, BTreeMap<String, String>) {
    let module: Vec<&str> = module.iter().map(String::as_str).collect();
    let named = match named(&module, text) {
        Ok(n) => n,
        Err(e) => return (vec![format!("{file}: does not parse: {e}")], BTreeMap::new()),
    };
    let allowed: BTreeSet<&str> = ALLOWED.iter().find(|(m, _)| *m == top).map(|(_, a)| a.iter().copied().collect()).unwrap_or_default();
    let mut broken = Vec::new();
    let mut edges = BTreeMap::new();
    for path in &named.crate_paths {
        let Some(target) = path.first().filter(|t| modules.contains(*t) && t.as_str() != top) else { continue };
        edges.entry(target.clone()).or_insert_with(|| format!("{file}: crate::{}", path.join("::")));
        if !allowed.contains(target.as_str()) {
            broken.push(format!("{file}: crate::{} ({top} may not import {target}; if the edge is right, add it to ALLOWED)", path.join("::")));
        }
    }
    if top == "config" {
        for p in &named.paths {
            let segs: Vec<&str> = p.split("::").collect();
            let builds = segs.iter().any(|s| STATE_MARKERS.contains(s))
                || segs.windows(2).any(|w| STATE_CONSTRUCTORS.contains(&w[0]) && w[1] == "new");
            if builds {
                broken.push(format!("{file}: {p}: builds runtime state in config"));
            }
        }
    }
    if top == "proxy" {
        for p in named.paths.iter().filter(|p| p.starts_with("opentelemetry")) {
            broken.push(format!("{file}: {p}: telemetry types built in proxy"));
        }
    }
    if top == "policy" {
        for w in POLICY_NEVER.iter().filter(|w| named.idents.contains(**w)) {
            broken.push(format!("{file}: {w}: a policy sees the Exchange view, not pingora's session"));
        }
    }
    (broken, edges)
}

/// The cycles of `graph` (strongly connected components of more than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn reach(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in graph.keys() {
        let ahead = reach(graph, m);
        if !ahead.contains(m) || out.iter().any(|c| c.contains(m)) {
            continue;
        }
        let comp: Vec<String> = ahead.into_iter().filter(|o| reach(graph, o).contains(m)).collect();
        out.push(comp);
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_allowed_table_is_a_layering() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        ALLOWED.iter().map(|(m, a)| (m.to_string(), a.iter().map(|s| s.to_string()).collect())).collect();
    assert!(cycles(&graph).is_empty(), "ALLOWED has a cycle: {:?}", cycles(&graph));
    for (m, a) in ALLOWED {
        for t in *a {
            assert!(graph.contains_key(*t), "{m} may import {t}, which ALLOWED does not list");
        }
    }
}

#[test]
fn the_code_keeps_to_the_allowed_table_and_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f.strip_prefix(&src).unwrap_or(f)).1).collect();
    let mut broken = Vec::new();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let (module, top) = module_of(rel);
        if !ALLOWED.iter().any(|(m, _)| *m == top) {
            broken.push(format!("{}: module `{top}` has no line in ALLOWED: place it in a layer", rel.display()));
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let (b, edges) = check_file(&top, &module, &rel.display().to_string(), &text, &modules);
        broken.extend(b);
        for (target, at) in edges {
            graph.entry(top.clone()).or_default().entry(target).or_insert(at);
        }
    }
    // exact: an allowed edge the code no longer has is a line to remove
    for (m, a) in ALLOWED {
        for t in *a {
            if modules.contains(*m) && !graph.get(*m).is_some_and(|g| g.contains_key(*t)) {
                broken.push(format!("ALLOWED says {m} imports {t}, and it no longer does: remove it"));
            }
        }
    }
    let edges: BTreeMap<String, BTreeSet<String>> = graph.iter().map(|(m, g)| (m.clone(), g.keys().cloned().collect())).collect();
    for comp in cycles(&edges) {
        let at: Vec<String> = comp.iter().flat_map(|a| comp.iter().filter_map(|b| graph.get(a)?.get(b).cloned())).collect();
        broken.push(format!("import cycle among {}: {}", comp.join(", "), at.join("; ")));
    }
    assert!(broken.is_empty(), "the house's layering is broken:\n{}", broken.join("\n"));
}

#[test]
fn the_reader_resolves_every_spelling() {
    let paths = |module: &[&str], text: &str| -> BTreeSet<String> {
        named(module, text).unwrap().crate_paths.into_iter().map(|p| p.join("::")).collect()
    };
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // nested groups, self, renames, globs
    let text = "use crate::{config::{self, raw::RawRoute}, proxy::ctx as c, cache::*};";
    assert_eq!(paths(&["policy"], text), set(&["config", "config::raw::RawRoute", "proxy::ctx", "cache"]));
    // a module brought in by `use`, named later; paths in types and expressions
    let text = "use crate::config;\nfn f(r: config::raw::RawRoute) { let _ = crate::telemetry::Metrics::new(); }";
    assert_eq!(paths(&["policy"], text), set(&["config", "config::raw::RawRoute", "telemetry::Metrics::new"]));
    // super:: from the file's own module, twice
    assert_eq!(paths(&["policy", "cache"], "use super::super::proxy::Gateway;"), set(&["proxy::Gateway"]));
    assert_eq!(paths(&["policy", "cache"], "use super::Exchange;"), set(&["policy::Exchange"]));
    // code after a test module still counts; the test module does not
    let text = "#[cfg(test)]\nmod tests { use crate::proxy::X; }\nuse crate::admin::Admin;";
    assert_eq!(paths(&["policy"], text), set(&["admin::Admin"]));
    // inside a function body and a macro
    let text = "fn f() { use crate::runtime::Runtime; let _ = format!(\"{}\", crate::app::NAME); }";
    assert_eq!(paths(&["policy"], text), set(&["runtime::Runtime", "app::NAME"]));
    // comments and strings are not paths
    assert!(paths(&["policy"], "// crate::proxy\nconst S: &str = \"crate::proxy\";").is_empty());
}

#[test]
fn the_checker_catches_each_kind_of_break() {
    let modules: BTreeSet<String> = ["proxy", "config", "telemetry", "routing", "policy", "model"].iter().map(|s| s.to_string()).collect();
    let check = |top: &str, text: &str| check_file(top, &[top.to_string()], "x.rs", text, &modules).0;
    let v = check("policy", "use crate::proxy::ctx::Ctx;\nfn f(s: &Session) {}\n");
    assert_eq!(v.len(), 2, "{v:?}");
    let v = check("config", "use crate::{telemetry::Metrics, routing};\nfn f() { let s = Semaphore::new(1); let u = Upstream::new(); }\n");
    assert_eq!(v.len(), 4, "{v:?}");
    let v = check("proxy", "use crate::config::raw::RawRoute;\nfn f() { let k = opentelemetry::KeyValue::new(1, 2); }\n");
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(check("policy", "use crate::model::plan::Settings;\n").is_empty());
    // the cycle finder
    let g: BTreeMap<String, BTreeSet<String>> = [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]
        .iter()
        .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
}
