//! The `fastgate` command: `run` the gateway, `check` a routes file, `init` one from the
//! backend's OpenAPI document, `probe` an admin URL.

use clap::{Parser, Subcommand};
use fastgate::telemetry::logging::{self, LogFormat};
use fastgate::telemetry::otel::{TraceSettings, Tracing};
use fastgate::{app::App, bootstrap, config, runtime, telemetry::Metrics};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc malloc was about a fifth of the instructions per proxied request (bench/callgrind):
// pingora allocates header maps, buffers and futures for every request.
// `--features system-alloc` leaves the system allocator in place, for heap profilers that
// intercept malloc (heaptrack; bench/README.md: where an idle connection's memory goes).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "fastgate", version, about = "A reverse-proxy gateway for FastAPI backends")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Routes file (TOML).
    #[arg(short, long, env = "FASTGATE_CONFIG", default_value = "config/fastgate.toml")]
    config: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReferencePage {
    Config,
    Problems,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format.
        #[arg(long, env = "FASTGATE_LOG_FORMAT", value_enum, default_value = "json")]
        log_format: LogFormat,
        /// Take over the listening sockets of the running fastgate (send it SIGQUIT): a
        /// restart that refuses no connection.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a routes file and print the compiled route table; exit 1 on errors.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also audit the routes against the backend's OpenAPI document (URL or file).
        #[arg(long, value_name = "URL|FILE")]
        openapi: Option<String>,
        /// `json`: the findings (and config errors) as one JSON object, for CI.
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Route tests: sample requests and what each must come to (route, cache decision and
        /// key, rate-limit keys, the path the backend receives, a deny); exit 1 when one fails.
        #[arg(long = "test", value_name = "TESTS.toml")]
        tests: Option<PathBuf>,
    },
    /// Write a commented routes file from the backend's OpenAPI document.
    Init {
        /// The document: `http://HOST:PORT/openapi.json` or a file.
        #[arg(long = "from-openapi", value_name = "URL|FILE")]
        from_openapi: String,
        /// The backend, `HOST:PORT`; taken from the document's URL unless given.
        #[arg(long)]
        upstream: Option<String>,
        /// The gateway's public address.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the routes file's JSON Schema, for editors (taplo, VS Code's Even Better TOML) and
    /// validators.
    Schema,
    /// Print a reference page of the book, generated from the code: every config key (from the
    /// schema) or every problem code.
    Reference {
        #[arg(value_enum)]
        page: ReferencePage,
    },
    /// GET an admin URL and exit 0 on a 2xx answer: a container HEALTHCHECK without curl.
    Probe {
        #[arg(default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    // before any TLS client or listener exists: every one of them takes the process default
    fastgate::tls::install_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, openapi, format, tests } => match tests {
            Some(t) => route_tests(&config.config, &t, format),
            None => check(&config.config, openapi.as_deref(), format),
        },
        Command::Probe { url } => probe(&url),
        Command::Schema | Command::Reference { .. } => {
            let text = match cli.command {
                Command::Reference { page: ReferencePage::Config } => config::schema::markdown(),
                Command::Reference { page: ReferencePage::Problems } => fastgate::problem::Problem::reference(),
                _ => format!("{:#}\n", config::schema::document()),
            };
            // a closed pipe (`| head`) is the reader's choice, not an error worth a panic
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            ExitCode::SUCCESS
        }
        Command::Init { from_openapi, upstream, listen, output } => init(&from_openapi, upstream, listen, output),
        Command::Run { config, log_format, upgrade } => {
            bootstrap::guard_sighup();
            logging::init(log_format);
            run(config.config, upgrade)
        }
    }
}

fn run(path: PathBuf, upgrade: bool) -> ExitCode {
    let plan = match config::load(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fastgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &plan.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    let settings = plan.settings.clone();
    let buckets = settings.telemetry.latency_buckets.as_deref().unwrap_or(fastgate::telemetry::metrics::LATENCY_BUCKETS);
    let metrics = match Metrics::new(buckets) {
        Ok(m) => std::sync::Arc::new(m),
        Err(e) => {
            eprintln!("fastgate: cannot set up metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tracing = match TraceSettings::resolve(&settings.telemetry) {
        None => None,
        Some(t) => match Tracing::start(&t, metrics.clone()) {
            Ok(tr) => {
                tracing::info!(protocol = ?t.protocol, endpoint = t.endpoint.as_deref().unwrap_or("(from OTEL_* environment)"), "OTLP tracing on");
                Some(tr)
            }
            Err(e) => {
                eprintln!("fastgate: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let cache_settings = settings.cache.clone();
    let redis = match &settings.state {
        fastgate::model::plan::StateDef::Memory => None,
        fastgate::model::plan::StateDef::Redis(def) => match fastgate::shared_state::Redis::start(def.clone()) {
            Ok(r) => {
                tracing::info!(url = %def.display_url(), lease = def.lease, "shared state in redis");
                Some(r)
            }
            Err(e) => {
                eprintln!("fastgate: [state.redis]: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let store: std::sync::Arc<dyn fastgate::cache::store::CacheStore> = match &redis {
        None => std::sync::Arc::new(fastgate::cache::memory::MemoryStore::new(cache_settings.max_size)),
        Some(r) => fastgate::shared_state::cache::SharedStore::new(r.clone()),
    };
    let cache = fastgate::cache::Cache::new(cache_settings, store.clone());
    let parts = runtime::ProcessParts {
        store,
        tag_header: cache.settings.tag_header.clone(),
        redis: redis.clone(),
    };
    let runtime = match runtime::materialize(plan, None, &parts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fastgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match bootstrap::run(App::new(path, settings, runtime, metrics, tracing, cache, redis), upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path, openapi: Option<&str>, format: CheckFormat) -> ExitCode {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let json = format == CheckFormat::Json;
    let print = |text: &str| {
        // Built whole, written once: a closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    };
    let plan = match config::load(path) {
        Ok(p) => p,
        Err(e) => {
            if json {
                print(&format!("{}\n", serde_json::json!({"ok": false, "config_error": e.to_string(), "findings": []})));
            } else {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let findings = match openapi.map(fastgate::openapi::Document::load) {
        None => Vec::new(),
        Some(Ok(doc)) => fastgate::openapi::audit::audit(&doc, &plan),
        Some(Err(e)) => {
            eprintln!("fastgate check: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What only the machine that runs the gateway can tell: names are a warning here (a
    // cluster's names do not resolve on a laptop), unreadable certificates an error.
    let mut live_warnings = Vec::new();
    let resolver = fastgate::discovery::Resolver { server: plan.server.resolver };
    for (name, up) in &plan.upstreams {
        if let Err(e) = resolver.lookup_all_blocking(&up.servers) {
            live_warnings.push(format!("upstream `{name}`: {e}; resolved again at start-up and every resolve_interval"));
        }
    }
    let tls_error = match plan.server.certificates.is_empty() {
        true => None,
        false => fastgate::tls::Certificates::load(&plan.server.certificates).err().map(|e| format!("server.tls: {e}")),
    };
    let failed = findings.iter().any(|f| f.severity == fastgate::openapi::audit::Severity::Error) || tls_error.is_some();
    if json {
        let mut warnings: Vec<String> = plan.warnings.iter().map(ToString::to_string).collect();
        warnings.extend(live_warnings);
        if let Some(e) = &tls_error {
            print(&format!("{}\n", serde_json::json!({"ok": false, "config_error": e, "findings": []})));
            return ExitCode::FAILURE;
        }
        print(&format!("{}\n", serde_json::json!({"ok": !failed, "hash": plan.hash, "warnings": warnings, "findings": findings})));
        return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    let s = &plan.settings;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok (hash {})", path.display(), plan.hash);
    let _ = writeln!(
        out,
        "listen {}  admin {}  threads {}  shutdown_grace {:?}",
        s.listen, s.admin_listen, s.threads, s.shutdown_grace
    );
    for (name, up) in &plan.upstreams {
        let servers: Vec<String> = up.servers.iter().map(ToString::to_string).collect();
        let hc = up.health_check.as_ref().map_or("no health check".to_string(), |h| {
            format!("health check GET {} every {:?}", h.path, h.interval)
        });
        let _ = writeln!(out, "upstream {:<12} {}  ({hc})", name, servers.join(", "));
    }
    let _ = writeln!(out, "routes, in precedence order:");
    for (i, r) in fastgate::model::matcher::in_precedence_order(&plan.routes, |r| &r.matcher).into_iter().enumerate() {
        let _ = writeln!(out, "  {:>2}. {:<16} {:<36} -> {}", i + 1, r.name, r.matcher.to_string(), r.target);
        let _ = writeln!(out, "      {}", r.policy);
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for w in &live_warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(e) = &tls_error {
        let _ = writeln!(out, "error: {e}");
    }
    for f in &findings {
        let level = if f.severity == fastgate::openapi::audit::Severity::Error { "error" } else { "warning" };
        let route = f.route.as_deref().map(|r| format!(" route `{r}`")).unwrap_or_default();
        let op = f.operation.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
        let _ = writeln!(out, "{level}: [{}]{route}{op}: {}", f.kind, f.message);
    }
    if openapi.is_some() {
        let errors = findings.iter().filter(|f| f.severity == fastgate::openapi::audit::Severity::Error).count();
        let _ = writeln!(out, "audit: {errors} error(s), {} warning(s)", findings.len() - errors);
    }
    print(&out);
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// `check --test`: each test's outcome; the expected and the actual row of every failure.
fn route_tests(path: &std::path::Path, tests: &std::path::Path, format: CheckFormat) -> ExitCode {
    use std::io::Write as _;
    let plan = match config::load(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let file = tests.display().to_string();
    let outcomes = match std::fs::read_to_string(tests)
        .map_err(|err| fastgate::routetest::TestFileError::Read { file: file.clone(), err })
        .and_then(|text| fastgate::routetest::run(&plan, &file, &text))
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    let text = if format == CheckFormat::Json {
        format!("{}\n", serde_json::json!({"ok": failed == 0, "passed": outcomes.len() - failed, "failed": failed, "tests": outcomes}))
    } else {
        let mut out = String::new();
        for o in &outcomes {
            if o.ok {
                out.push_str(&format!("ok    {}\n", o.name));
            } else {
                let row = |r: &fastgate::routetest::Row| serde_json::to_string(r).unwrap_or_default();
                out.push_str(&format!("FAIL  {}\n      expected {}\n      actual   {}\n", o.name, row(&o.expected), row(&o.actual)));
            }
        }
        out.push_str(&format!("{file}: {} passed, {failed} failed\n", outcomes.len() - failed));
        out
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The admin URL's status over a plain socket (`client::get`): the runtime image needs no curl.
fn probe(url: &str) -> ExitCode {
    match fastgate::client::get(url, std::time::Duration::from_secs(2)) {
        Ok((status, _)) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok((status, _)) => {
            eprintln!("probe: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init(source: &str, upstream: Option<String>, listen: String, output: Option<PathBuf>) -> ExitCode {
    use fastgate::openapi::{init, Document};
    let doc = match Document::load(source) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("fastgate init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(upstream) = upstream.or_else(|| init::upstream_from_url(source)) else {
        eprintln!("fastgate init: the document is a file: say where the backend is with --upstream HOST:PORT");
        return ExitCode::FAILURE;
    };
    let text = init::generate(&doc, &init::InitOptions { source: source.to_string(), upstream, listen });
    let written = match &output {
        Some(path) => std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display())).and_then(|()| {
            // route tests beside the routes file, from what its table says today
            let tests = path.with_extension("tests.toml");
            match config::load_str(&path.display().to_string(), &text) {
                Ok(plan) => std::fs::write(&tests, fastgate::routetest::starter(&plan)).map_err(|e| format!("{}: {e}", tests.display())),
                Err(e) => Err(e.to_string()),
            }
        }),
        None => {
            use std::io::Write as _;
            std::io::stdout().lock().write_all(text.as_bytes()).map_err(|e| e.to_string())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastgate init: {e}");
            ExitCode::FAILURE
        }
    }
}
