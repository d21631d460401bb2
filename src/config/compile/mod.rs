//! Raw config -> validated, compiled plan, one section per file: `server` (listeners, limits,
//! TLS), `upstreams`, `routes` (matchers, targets, and each route's policies through the
//! registry), `process` (`[telemetry]`, `[cache]`, `[state]`). Every semantic problem is
//! collected, with its position, before anything is returned; nothing here runs per request.

mod entities;
mod process;
mod routes;
mod server;
mod upstreams;

use super::plan::Plan;
use super::raw::RawConfig;
use crate::model::diag::{Diagnostic, Diagnostics, Source};
use crate::policy::registry::Scope;
use crate::policy::PolicyDef;
use std::collections::HashSet;

/// Compiles a parsed file into a plan, or every problem found in it.
pub fn compile(raw: RawConfig, src: &Source<'_>) -> Result<Plan, Vec<Diagnostic>> {
    let RawConfig {
        server: raw_server,
        upstreams: raw_upstreams,
        defaults,
        routes: raw_routes,
        telemetry,
        cache,
        state,
        entities: raw_entities,
    } = raw;
    let mut cx = Diagnostics::new(src);

    let (settings, server, tls) = server::compile(&mut cx, raw_server);
    let (upstreams, broken_upstreams) = upstreams::compile(&mut cx, raw_upstreams);
    let entities = entities::compile(&mut cx, raw_entities);
    let defaults = defaults.policy;
    // `[defaults]` alone first: its errors are reported at its own lines, and once.
    PolicyDef::compile(&defaults, &mut cx, &Scope { entities: &entities, ..Scope::default() });
    let mut seen_names: HashSet<String> = HashSet::new();
    let mut compiled_routes = Vec::new();
    for route in &raw_routes {
        if let Some(r) = routes::compile(&mut cx, route, &defaults, (&upstreams, &broken_upstreams), &entities, &mut seen_names) {
            compiled_routes.push(r);
        }
    }

    routes::check_overlaps(&mut cx, &compiled_routes);

    refuse_empty(&mut cx, upstreams.is_empty(), raw_routes.is_empty());
    let (telemetry, cache_settings, state) = process::compile(&mut cx, telemetry, cache, state);
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    let mut settings = settings.ok_or_else(Vec::new)?;
    settings.telemetry = telemetry;
    settings.cache = cache_settings;
    settings.tls = tls;
    settings.state = state;
    Ok(Plan {
        settings,
        server,
        upstreams,
        routes: compiled_routes.into_iter().map(|(r, _)| r).collect(),
        entities,
        hash: digest(src.text),
        warnings: cx.warnings,
    })
}

/// An empty or cut-short file (what a non-atomic write leaves for an instant) must not become
/// a gateway that answers every request with 404.
fn refuse_empty(cx: &mut Diagnostics<'_>, no_upstreams: bool, no_routes: bool) {
    let end = cx.text().len()..cx.text().len();
    if no_upstreams && no_routes {
        cx.error::<()>(
            end,
            "the file has no `[upstreams.NAME]` and no `[[routes]]`: every request would be answered 404",
            "an empty or truncated file is refused; replace a config atomically: write a new file beside it, then `mv` it over",
        );
    } else if no_routes {
        cx.error::<()>(
            end,
            "the file has no `[[routes]]`: every request would be answered 404 `no_route`",
            "add a route, e.g. [[routes]] name = \"all\" match = { path_prefix = \"/\" } upstream = \"app\"",
        );
    }
}

fn digest(text: &str) -> String {
    // FNV-1a: stable across builds and platforms, enough to tell two files apart in metrics.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}
