//! The layering rules of `src/`, checked on every test run, so the next change keeps the house
//! standing without being told. Each rule: files of one module never name a path (or build a
//! kind of state) that belongs to another layer. `#[cfg(test)]` code may reach anywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// (module of the file, forbidden `crate::` path prefix, why)
const RULES: &[(&str, &str, &str)] = &[
    ("policy", "crate::proxy", "a policy never imports proxy"),
    ("policy", "crate::admin", "a policy never imports admin"),
    ("config", "crate::proxy", "config never imports proxy"),
    ("config", "crate::telemetry", "config never imports telemetry"),
    ("config", "crate::admin", "config never imports admin"),
    ("config", "crate::upstream", "config never builds upstream runtime state"),
    ("config", "crate::state", "config compiles plans; state materializes them"),
    ("config", "crate::app", "config never sees the running process"),
    ("telemetry", "crate::proxy", "telemetry never imports proxy"),
    ("state", "crate::proxy", "state never imports proxy"),
    ("proxy", "crate::config::raw", "the request path never reads raw config"),
    ("policy", "crate::config::raw", "the request path never reads raw config"),
    ("cache", "crate::config::raw", "the request path never reads raw config"),
    ("routing", "crate::config::raw", "the request path never reads raw config"),
    ("state", "crate::config::raw", "state materializes the compiled plan, not raw config"),
];

/// Text that builds live state: never in config.
const STATE_MARKERS: &[&str] = &["governor::", "Semaphore", "LoadBalancer", "ArcSwap", "RateLimiter::", "Concurrency::new", "RateLimit::new", "Upstream::new"];

/// What a policy must not see: it works on the `Exchange` view, testable without pingora's session.
const POLICY_NEVER: &[&str] = &["Session", "ProxyHttp", "downstream_modules_ctx"];

/// The module a file belongs to: its first path component under `src/`.
fn module_of(rel: &Path) -> String {
    let head = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    head.strip_suffix(".rs").map(str::to_string).unwrap_or(head)
}

/// The code before the first `#[cfg(test)]`, without line comments.
fn production_code(text: &str) -> String {
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::` path named, with `use crate::a::{b, c::d}` groups expanded one level.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let path: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        let base = if path.is_empty() { "crate::".to_string() } else { format!("crate::{}", path.trim_end_matches(':')) };
        let tail = &after[path.len()..];
        if (path.is_empty() || path.ends_with("::")) && tail.starts_with('{') {
            let group = &tail[1..tail.find('}').unwrap_or(tail.len())];
            for part in group.split(',') {
                let name = part.split_whitespace().next().unwrap_or("");
                if !name.is_empty() && name != "self" {
                    let sep = if path.is_empty() { "" } else { "::" };
                    out.insert(format!("{base}{sep}{name}"));
                }
            }
        }
        out.insert(base);
        rest = tail;
    }
    out
}

/// The broken rules of one file, as lines to print.
fn violations(module: &str, file: &str, text: &str) -> Vec<String> {
    let code = production_code(text);
    let mut out = Vec::new();
    for path in crate_paths(&code) {
        for (m, forbidden, why) in RULES {
            if module == *m && (path == *forbidden || path.starts_with(&format!("{forbidden}::"))) {
                out.push(format!("{file}: {path} ({why})"));
            }
        }
    }
    for (n, line) in code.lines().enumerate() {
        if module == "config" && STATE_MARKERS.iter().any(|m| line.contains(m)) {
            out.push(format!("{file}:{}: builds runtime state in config: {}", n + 1, line.trim()));
        }
        if module == "proxy" && line.contains("opentelemetry") {
            out.push(format!("{file}:{}: telemetry types built in proxy: {}", n + 1, line.trim()));
        }
        if module == "policy" && POLICY_NEVER.iter().any(|w| line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|t| t == *w)) {
            out.push(format!("{file}:{}: a policy sees the Exchange view, not pingora's session: {}", n + 1, line.trim()));
        }
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
fn the_layering_rules_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let mut broken = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let text = std::fs::read_to_string(f).unwrap_or_default();
        broken.extend(violations(&module_of(rel), &rel.display().to_string(), &text));
    }
    assert!(broken.is_empty(), "layering rules broken:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_each_kind_of_break() {
    let v = violations("policy", "policy/x.rs", "use crate::proxy::ctx::Ctx;\nfn f(s: &Session) {}\n");
    assert_eq!(v.len(), 2, "{v:?}");
    let v = violations("config", "config/x.rs", "use crate::{telemetry::Metrics, routing};\nlet s = Semaphore::new(1);\n");
    assert_eq!(v.len(), 2, "{v:?}");
    let v = violations("proxy", "proxy/x.rs", "use crate::config::raw::RawRoute;\nlet k = opentelemetry::KeyValue::new(1, 2);\n");
    assert_eq!(v.len(), 2, "{v:?}");
    // comments and test modules are not the house
    assert!(violations("policy", "p.rs", "// crate::proxy is not used here\n#[cfg(test)]\nuse crate::proxy::Gateway;\n").is_empty());
}
