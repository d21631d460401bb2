//! `[[routes]]`: each route's name, match, target, and its policies (the route's keys over
//! `[defaults]`, compiled by each policy through the registry); then the routes against each
//! other.

use super::super::plan::{RouteDef, RouteTarget};
use super::super::raw::{RawMatch, RawRoute};
use crate::model::diag::{suggest, Diagnostics};
use crate::model::matcher::{Matcher, PathMatch};
use crate::model::normalize::normalize;
use crate::model::plan::UpstreamDef;
use crate::model::template::{PathTemplate, TemplateError};
use crate::model::units::EnvString;
use crate::policy::registry::Scope;
use crate::model::entity::Entities;
use crate::policy::{PolicyDef, PolicyKeys};
use std::collections::{BTreeMap, HashSet};
use toml::Spanned;

pub(super) fn compile(
    cx: &mut Diagnostics<'_>,
    spanned: &Spanned<RawRoute>,
    defaults: &PolicyKeys,
    (upstreams, broken): (&BTreeMap<String, UpstreamDef>, &HashSet<String>),
    entities: &Entities,
    seen: &mut HashSet<String>,
) -> Option<(RouteDef, std::ops::Range<usize>)> {
    let span = spanned.span();
    let route = spanned.get_ref();
    let RawRoute {
        name,
        r#match,
        upstream,
        action,
        deny_status,
        ..
    } = route;

    let Some(name) = name else {
        return cx.error(span, "route has no `name`", "add name = \"...\": it labels metrics, logs and errors");
    };
    let name_str = name.get_ref().trim().to_string();
    if name_str.is_empty() {
        return cx.error(name.span(), "route `name` is empty", "name it: the name labels its metrics, logs and errors");
    }
    if !seen.insert(name_str.clone()) {
        cx.error::<()>(name.span(), format!("route name `{name_str}` is used twice"), "route names label metrics and must be unique: rename one");
    }

    let matcher = match r#match {
        Some(m) => compile_match(cx, m),
        None => cx.error(
            span.clone(),
            format!("route `{name_str}` has no `match`"),
            "add match = { path_prefix = \"/\" } for a catch-all",
        ),
    };
    let deny = match action.as_ref().map(|a| (a.span(), a.get_ref().as_str())) {
        None | Some((_, "proxy")) => None,
        Some((_, "deny")) => Some(match deny_status {
            None => 404,
            Some(s) if matches!(*s.get_ref(), 403 | 404) => *s.get_ref(),
            Some(s) => cx.error(s.span(), format!("`deny_status` {} is not 403 or 404", s.get_ref()), "403 says the path exists and is refused; 404 (the default) says nothing").unwrap_or(404),
        }),
        Some((span, other)) => cx.error(span, format!("unknown `action` {other:?}"), "\"proxy\" (the default) or \"deny\""),
    };
    if deny.is_none()
        && let Some(s) = deny_status
    {
        cx.error::<()>(s.span(), "`deny_status` without action = \"deny\"", "add action = \"deny\", or remove deny_status");
    }
    let upstream = match (deny, upstream) {
        (Some(_), Some(u)) => cx.error(u.span(), format!("route `{name_str}` denies its requests: it has no `upstream`"), "remove upstream, or action = \"deny\""),
        (Some(_), None) => Some(String::new()),
        (None, None) => {
            let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            cx.error(span.clone(), format!("route `{name_str}` has no `upstream`"), format!("add upstream = \"...\", one of: {}", names.join(", ")))
        }
        (None, Some(u)) => match upstreams.get(u.get_ref()) {
            Some(_) => Some(u.get_ref().clone()),
            // defined, with errors of its own already reported: one error, not one per route
            None if broken.contains(u.get_ref()) => None,
            None => {
                let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                let hint = match suggest(u.get_ref(), &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if names.is_empty() => "no upstream is defined: add [upstreams.NAME] with servers = [\"127.0.0.1:8000\"]".to_string(),
                    None => format!("defined upstreams: {}", names.join(", ")),
                };
                cx.error(u.span(), format!("unknown upstream `{}`", u.get_ref()), hint)
            }
        },
    };
    let template = matcher.as_ref().and_then(|m| m.template().cloned());
    // the route's keys over `[defaults]`, key by key, compiled by each policy (the registry)
    let errors_before = cx.errors.len();
    // the route's path as a template, exact paths included: how it stands to the entities' items
    let shape = template.clone().or_else(|| match matcher.as_ref().map(|m| &m.path) {
        Some(PathMatch::Exact(p)) => PathTemplate::parse(p).ok().map(std::sync::Arc::new),
        _ => None,
    });
    let scope = Scope { route: Some((name_str.as_str(), template.as_deref())), shape: shape.as_deref(), entities };
    let policy = PolicyDef::compile(&route.policy.over(defaults), cx, &scope);
    let policy = (cx.errors.len() == errors_before).then_some(policy);
    Some((
        RouteDef {
            name: name_str,
            matcher: matcher?,
            target: match deny {
                Some(status) => RouteTarget::Deny(status),
                None => RouteTarget::Upstream(upstream?),
            },
            policy: policy?,
        },
        span,
    ))
}

fn compile_match(cx: &mut Diagnostics<'_>, m: &Spanned<RawMatch>) -> Option<Matcher> {
    let RawMatch {
        path,
        path_prefix,
        methods,
        host,
    } = m.get_ref();
    let path = match (path, path_prefix) {
        (Some(_), Some(p)) => {
            return cx.error(p.span(), "`path` and `path_prefix` cannot both be set", "keep `path` for one exact path or a template, or `path_prefix` for a subtree");
        }
        (None, None) => {
            return cx.error(m.span(), "`match` needs `path` or `path_prefix`", "path_prefix = \"/\" matches everything");
        }
        (Some(p), None) if PathTemplate::is_template(p.get_ref()) => match PathTemplate::parse(p.get_ref()) {
            Ok(t) => PathMatch::Template(std::sync::Arc::new(t)),
            Err(e) => {
                let hint = match e {
                    TemplateError::PartialSegment(_) => "a parameter is a whole segment: \"/files/{name}\", not \"/files/{name}.txt\"",
                    TemplateError::RestNotLast(_) => "`{name:path}` takes the rest of the path: put it last",
                    TemplateError::Convertor(_) => "write {name} or {name:path}; FastAPI's int, float, str and uuid convertors match one segment",
                    _ => "write FastAPI's syntax, e.g. \"/api/items/{item_id}\" or \"/files/{file_path:path}\"",
                };
                return cx.error(p.span(), format!("path template {:?}: {e}", p.get_ref().0), hint);
            }
        },
        (Some(p), None) => PathMatch::Exact(route_path(cx, p)?),
        (None, Some(p)) if PathTemplate::is_template(p.get_ref()) => {
            return cx.error(p.span(), "`path_prefix` cannot hold parameters", format!("write path = \"{}/{{rest:path}}\": a template whose last parameter takes the rest", p.get_ref().0.trim_end_matches('/')));
        }
        (None, Some(p)) => {
            let norm = route_path(cx, p)?;
            PathMatch::Prefix(norm.trim_end_matches('/').to_string())
        }
    };
    let methods = match methods {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                let upper = m.get_ref().to_ascii_uppercase();
                match upper.parse::<http::Method>() {
                    Ok(method) if !upper.is_empty() => out.push(method),
                    _ => {
                        cx.error::<()>(m.span(), format!("invalid HTTP method {:?}", m.get_ref()), "write a method name such as \"GET\", \"POST\" or \"DELETE\"");
                    }
                }
            }
            if out.is_empty() {
                return cx.error(m.span(), "`methods` is empty", "leave `methods` out to match every method");
            }
            Some(out)
        }
    };
    let host = host.as_ref().map(|h| h.get_ref().trim().to_ascii_lowercase());
    Some(Matcher { path, methods, host })
}

fn route_path(cx: &mut Diagnostics<'_>, p: &Spanned<EnvString>) -> Option<String> {
    match normalize(p.get_ref()) {
        Ok(n) if n != p.get_ref().0 => cx.error(
            p.span(),
            format!("route path {:?} is not in normalized form", p.get_ref().0),
            format!("write {n:?}: requests are matched after normalization"),
        ),
        Ok(n) => Some(n.into_owned()),
        Err(_) => cx.error(p.span(), format!("route path {:?} must start with `/`", p.get_ref().0), format!("write \"/{}\"", p.get_ref().0.trim_start_matches('/'))),
    }
}

/// Two routes with the same match are an error; two that can match the same request at the
/// same precedence are a warning (the one written first wins).
pub(super) fn check_overlaps(cx: &mut Diagnostics<'_>, compiled: &[(RouteDef, std::ops::Range<usize>)]) {
    for (i, (a, a_span)) in compiled.iter().enumerate() {
        for (b, b_span) in compiled.iter().skip(i + 1) {
            let (a, b): (&RouteDef, &RouteDef) = (a, b);
            if a.matcher == b.matcher {
                cx.error::<()>(
                    b_span.clone(),
                    format!("route `{}` matches exactly what route `{}` matches", b.name, a.name),
                    "remove one, or make their `match` differ",
                );
            } else if a.matcher.overlaps(&b.matcher) {
                let (line, _) = crate::model::diag::line_col(cx.text(), a_span.start);
                cx.warn(
                    b_span.clone(),
                    format!("route `{}` overlaps route `{}` (line {line}); the one written first wins", b.name, a.name),
                    "give them disjoint `methods`",
                );
            }
        }
    }
}
