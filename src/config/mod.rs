//! The routes file: read -> parse (`raw`) -> validate and compile (`compile`) -> `Plan`.
//!
//! Loading is the only place config text is looked at. A plan is plain definitions; `runtime`
//! makes it live. Nothing here builds a limiter, a pool or a metric, or reads telemetry
//! variables.

pub mod compile;
pub mod plan;
pub mod raw;
pub mod schema;

pub use crate::model::diag::Diagnostic;
pub use plan::Plan;

use crate::model::diag::Source;
use std::path::Path;

/// Why a routes file was not loaded.
#[derive(Debug, thiserror::Error)]
/// Why a config could not be loaded.
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source}\n  hint: name the routes file with `-c FILE` or the FASTGATE_CONFIG variable (default config/fastgate.toml)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The diagnostics, empty for an I/O error.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(d) => d,
        }
    }
}

fn render(diags: &[Diagnostic]) -> String {
    let mut out = format!("{} error(s) in config", diags.len());
    for d in diags {
        out.push('\n');
        out.push_str(&d.to_string());
    }
    out
}

/// Reads and compiles a routes file.
pub fn load(path: &Path) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&path.display().to_string(), &text)
}

/// Compiles config text; `file` names it in diagnostics.
pub fn load_str(file: &str, text: &str) -> Result<Plan, ConfigError> {
    let src = Source { file, text };
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid(vec![src.from_toml(&e)]))?;
    compile::compile(raw, &src).map_err(ConfigError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diag::Source;

    #[test]
    fn wrong_types_get_the_expected_shape_and_an_example() {
        let text = "[defaults]\nrate_limit = { rate = \"5/s\" }\n";
        let src = Source { file: "t.toml", text };
        let err = toml::from_str::<raw::RawConfig>(text).unwrap_err();
        let d = src.from_toml(&err);
        assert_eq!((d.line, d.column), (2, 14));
        let hint = d.hint.unwrap();
        assert!(hint.contains("`rate_limit` takes a sequence") && hint.contains("rate = \"100/s\""), "{hint}");
    }


    const BASE: &str = r#"
[upstreams.api]
servers = ["127.0.0.1:8000"]

[[routes]]
name = "market"
match = { path_prefix = "/api/market" }
upstream = "api"
"#;

    fn errors(text: &str) -> Vec<Diagnostic> {
        match load_str("t.toml", text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.diagnostics().to_vec(),
        }
    }

    fn one_error(text: &str) -> Diagnostic {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn minimal_config_compiles_with_defaults() {
        let c = load_str("t.toml", BASE).unwrap();
        assert_eq!(c.settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.settings.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].policy.timeout.as_ref().unwrap().timeouts.total, std::time::Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_has_position_and_suggestion() {
        let text = format!("{BASE}upstraem = \"api\"\n");
        let d = one_error(&text);
        assert_eq!((d.line, d.column, d.file.as_str()), (9, 1, "t.toml"));
        assert!(d.message.contains("unknown field `upstraem`"), "{}", d.message);
        assert_eq!(d.hint.as_deref(), Some("did you mean `upstream`?"));
    }

    #[test]
    fn bad_duration_points_at_the_value() {
        let text = "[defaults]\ntimeout = \"5 parsecs\"\n";
        let d = one_error(text);
        assert_eq!((d.line, d.column), (2, 11));
        assert!(d.message.contains("invalid duration"), "{}", d.message);
    }

    #[test]
    fn bad_size_points_at_the_value() {
        let d = one_error("[defaults]\nmax_body = \"12 parsecs\"\n");
        assert_eq!((d.line, d.column), (2, 12));
        assert!(d.message.contains("invalid size"), "{}", d.message);
    }

    #[test]
    fn forwarded_takes_a_name_or_a_list_and_points_at_an_unknown_one() {
        let c = load_str("t.toml", &format!("[server]\nforwarded = [\"x-forwarded-for\", \"x-real-ip\"]\n{BASE}")).unwrap();
        assert!(c.server.forwarded.x_real_ip && !c.server.forwarded.x_forwarded_proto);
        let c = load_str("t.toml", &format!("[server]\nforwarded = \"both\"\n{BASE}")).unwrap();
        assert!(c.server.forwarded.forwarded && c.server.forwarded.x_forwarded_host);
        let d = one_error(&format!("[server]\nforwarded = [\"x-forwarded-for\", \"x-forwarded-port\"]\n{BASE}"));
        assert_eq!((d.line, d.column), (2, 13));
        assert!(d.message.contains("\"x-forwarded-port\""), "{}", d.message);
        assert!(d.hint.as_deref().is_some_and(|h| h.contains("x-real-ip")), "{:?}", d.hint);
        let d = one_error(&format!("[server]\nforwarded = 7\n{BASE}"));
        assert!(d.message.contains("a string or a list of strings"), "{}", d.message);
    }

    #[test]
    fn semantic_errors_are_all_collected() {
        let text = r#"
[server]
listen = "nowhere"
trusted_proxies = ["10.0.0.0/33"]

[upstreams.api]
servers = ["127.0.0.1:8000"]

[[routes]]
name = "a"
match = { path_prefix = "/a" }
upstream = "apj"

[[routes]]
name = "a"
match = { path = "/b/../c" }
upstream = "api"
"#;
        let errs = errors(text);
        let lines: Vec<usize> = errs.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![3, 4, 12, 15, 16], "{errs:#?}");
        assert_eq!(errs[2].hint.as_deref(), Some("did you mean `api`?"));
        assert_eq!(errs[2].column, 12);
        assert!(errs[4].hint.as_deref().unwrap().contains("\"/c\""));
    }

    #[test]
    fn duplicate_routes_are_errors_and_overlaps_warnings() {
        let text = format!(
            "{BASE}\n[[routes]]\nname = \"dup\"\nmatch = {{ path_prefix = \"/api/market\" }}\nupstream = \"api\"\n"
        );
        let d = one_error(&text);
        assert!(d.message.contains("matches exactly what route `market` matches"), "{}", d.message);

        let text = r#"
[upstreams.api]
servers = ["127.0.0.1:8000"]
[[routes]]
name = "r"
match = { path_prefix = "/x", methods = ["GET", "POST"] }
upstream = "api"
[[routes]]
name = "w"
match = { path_prefix = "/x", methods = ["POST"] }
upstream = "api"
"#;
        let c = load_str("t.toml", text).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].line, 8);
    }

    #[test]
    fn env_variables_fill_strings() {
        // SAFETY: tests in this module do not read this variable concurrently
        unsafe { std::env::set_var("FASTGATE_TEST_TOKEN", "tok") };
        let text = format!("[server]\nadmin_token = \"${{FASTGATE_TEST_TOKEN}}\"\nlisten = \"${{FASTGATE_TEST_UNSET:-127.0.0.1:1234}}\"\n{BASE}");
        let c = load_str("t.toml", &text).unwrap();
        assert_eq!(c.server.admin_token.as_deref(), Some("tok"));
        assert_eq!(c.settings.listen.to_string(), "127.0.0.1:1234");

        let d = one_error("[server]\nadmin_token = \"${FASTGATE_TEST_UNSET_TOO}\"\n");
        assert_eq!(d.line, 2);
        assert!(d.message.contains("FASTGATE_TEST_UNSET_TOO"));
    }

    #[test]
    fn defaults_are_inherited_and_overridden() {
        let text = r#"
[defaults]
timeout = "5s"
max_body = "64KiB"
[upstreams.api]
servers = ["127.0.0.1:8000"]
[[routes]]
name = "a"
match = { path_prefix = "/a" }
upstream = "api"
[[routes]]
name = "b"
match = { path_prefix = "/b" }
upstream = "api"
timeout = "250ms"
max_body = "1MiB"
"#;
        let c = load_str("t.toml", text).unwrap();
        let get = |n: &str| &c.routes.iter().find(|r| r.name == n).unwrap().policy;
        assert_eq!(get("a").timeout.as_ref().unwrap().timeouts.total.as_millis(), 5000);
        assert_eq!(get("a").body.as_ref().unwrap().max_body, 64 * 1024);
        assert_eq!(get("b").timeout.as_ref().unwrap().timeouts.total.as_millis(), 250);
        assert_eq!(get("b").timeout.as_ref().unwrap().timeouts.read.as_millis(), 250);
        assert_eq!(get("b").body.as_ref().unwrap().max_body, 1024 * 1024);
    }

    #[test]
    fn an_unknown_algorithm_is_refused_with_the_choices() {
        let text = format!("{BASE}compress = {{ algorithms = [\"br\", \"deflate\"] }}\n");
        let d = one_error(&text);
        assert_eq!((d.line, d.column), (9, 34));
        assert!(d.message.contains("deflate"), "{}", d.message);
        assert!(d.hint.as_deref().is_some_and(|h| h.contains("\"br\"")), "{:?}", d.hint);
    }

    #[test]
    fn policy_errors_point_at_their_values() {
        let text = format!(
            "{BASE}rate_limit = [{{ rate = \"10/fortnight\" }}, {{ rate = \"5/s\", key = \"ip\" }}]\nmax_concurrent = 0\n"
        );
        let errs = errors(&text);
        let msgs: Vec<&str> = errs.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(errs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("invalid rate unit"), "{msgs:?}");
        assert!(msgs[1].contains("unknown rate limit key \"ip\""), "{msgs:?}");
        assert!(msgs[2].contains("`max_concurrent` must be at least 1"), "{msgs:?}");
        assert_eq!(errs[2].line, 10);
    }

    #[test]
    fn compress_toggle_forms() {
        for (value, on) in [("\"off\"", false), ("\"on\"", true), ("true", true), ("{ min_size = 10 }", true)] {
            let text = format!("{BASE}compress = {value}\n");
            let c = load_str("t.toml", &text).unwrap();
            assert_eq!(c.routes[0].policy.compress.is_some(), on, "{value}");
        }
        let d = one_error(&format!("{BASE}compress = \"sometimes\"\n"));
        assert!(d.message.contains("expected \"off\", \"on\" or a table"), "{}", d.message);
    }

    #[test]
    fn a_bad_default_is_reported_once_at_its_own_line() {
        let text = format!("[defaults]\ntimeout = \"0s\"\n{BASE}\n[[routes]]\nname = \"b\"\nmatch = {{ path = \"/b\" }}\nupstream = \"api\"\n");
        let d = one_error(&text);
        assert_eq!((d.line, d.column), (2, 11), "{d}");
        assert!(d.message.contains("`timeout` must be above zero"), "{d}");
    }

    #[test]
    fn nothing_is_clamped_silently() {
        let text = format!("[server]\nmax_header_count = 0\n{BASE}");
        assert!(one_error(&text).message.contains("`max_header_count` must be at least 1"));
        let text = BASE.replace("servers = [\"127.0.0.1:8000\"]", "servers = [\"127.0.0.1:8000\"]\nhealth_check = { healthy_threshold = 0 }");
        assert!(one_error(&text).message.contains("`healthy_threshold` must be at least 1"));
        // A read timeout longer than the total is used as the total, and said so.
        let plan = load_str("t.toml", &format!("{BASE}timeout = \"1s\"\nread_timeout = \"5s\"\n")).unwrap();
        assert_eq!(plan.routes[0].policy.timeout.as_ref().unwrap().timeouts.read, std::time::Duration::from_secs(1));
        assert_eq!(plan.warnings.len(), 1);
        assert_eq!(plan.warnings[0].line, 10);
        assert!(plan.warnings[0].message.contains("`read_timeout` 5s is longer"), "{}", plan.warnings[0]);
    }

    #[test]
    fn every_error_has_a_hint_and_a_caret() {
        let text = r#"
[server]
listen = "nowhere"
threads = 0
trusted_proxies = ["10.0.0.0/33"]
[upstreams.api]
servers = []
[upstreams.web]
servers = ["127.0.0.1:8000"]
health_check = { path = "healthz", interval = "0s" }
[[routes]]
name = ""
match = { path = "/a" }
upstream = "api"
[[routes]]
name = "b"
match = { path = "/b", path_prefix = "/c", methods = [] }
upstream = "nope"
rate_limit = [{ rate = "1/fortnight" }, { rate = "5/s", key = "ip", missing_key_status = 500, on_missing_key = "x", burst = 0 }]
invalidate_tags = ["{bogus}"]
max_concurrent = 0
compress = { algorithms = ["br", "lz4"], gzip_level = 11 }
cache = { ttl = "0s", key = { headers = ["bad header"] } }
[[routes]]
name = "c"
upstream = "web"
queue = { size = 1 }
[telemetry]
protocol = "carrier-pigeon"
sampler = "sometimes"
latency_buckets = [2.0, 1.0]
[cache]
tag_header = "bad tag"
"#;
        let errs = errors(text);
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(errs.len() >= 20, "{}", all.join("\n"));
        for d in &errs {
            assert!(d.hint.as_deref().is_some_and(|h| !h.is_empty()), "no hint: {d}");
            assert!(d.to_string().contains('^'), "no caret: {d}");
        }
    }

    #[test]
    fn a_missing_file_names_the_ways_to_give_one() {
        let e = load(std::path::Path::new("/nonexistent/fastgate.toml")).unwrap_err().to_string();
        assert!(e.contains("-c FILE") && e.contains("FASTGATE_CONFIG"), "{e}");
    }

    #[test]
    fn shipped_examples_compile() {
        // SAFETY: no other test reads this variable
        unsafe { std::env::set_var("FASTGATE_ADMIN_TOKEN", "example") };
        for f in ["config/fastgate.toml", "config/edge.toml", "config/sidecar.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            if let Err(e) = load(&path) {
                panic!("{f}: {e}");
            }
        }
    }
}
