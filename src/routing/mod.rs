//! Request routing: a compiled, immutable table from (method, host, normalized path) to a route.
//!
//! Precedence is by specificity, never by accident of file order:
//! 1. a route with a `host` beats one without;
//! 2. paths compare segment by segment, left to right: a literal segment beats a parameter
//!    (`{id}`), a parameter beats the open end of a prefix or a `{rest:path}`; a path that ends
//!    there (exact, or a template without `:path`) beats one that goes on. So an exact `path`
//!    beats a template of the same length, a template beats a prefix it falls under, and a
//!    longer prefix beats a shorter one;
//! 3. a route restricted to `methods` beats one that takes every method.
//!
//! Routes equal on all three keep file order; `fastgate check` reports such overlaps.
//! Prefixes match whole segments: `/api/market` matches `/api/market` and `/api/market/x`,
//! never `/api/marketing`.

use crate::policy::PolicyDef;
use crate::model::matcher::{Matcher, Routed, Table};
use crate::policy::RoutePolicies;
use crate::upstream::Upstream;
use std::sync::Arc;



/// One compiled route: everything the request path needs, resolved.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    pub target: Target,
    /// The policy as configured, for `check`, the admin API and the status page.
    pub def: PolicyDef,
    /// The policies, materialized, in the order they run.
    pub policies: RoutePolicies,
    /// Requests of this route stream (no total deadline; not counted as slow).
    pub streaming: bool,
    pub slow_threshold: std::time::Duration,
    /// Metric series of this route, resolved on first use.
    pub metrics: crate::telemetry::metrics::RouteHandles,
}

/// Where a route's requests go.
#[derive(Debug)]
pub enum Target {
    Upstream(Arc<Upstream>),
    /// `action = "deny"`: refused with this problem (403 `forbidden` or 404 `not_found`).
    Deny(crate::problem::Problem),
}

impl Route {
    /// The upstream requests go to; `None` for a route that denies them.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.target {
            Target::Upstream(u) => Some(u),
            Target::Deny(_) => None,
        }
    }

    /// What telemetry reads of it when a request ends.
    pub fn seen(&self) -> crate::telemetry::outcome::RouteSeen<'_> {
        crate::telemetry::outcome::RouteSeen {
            name: &self.name,
            metrics: &self.metrics,
            upstream: self.upstream().map(|u| (u.name.as_str(), &u.metrics)),
            slow_threshold: self.slow_threshold,
        }
    }

    /// A fresh stored response of this route may be answered at the connection's front door
    /// (`proxy::front`): it caches, goes to an upstream and does not read request bodies whole.
    pub fn hits_at_front_door(&self) -> bool {
        matches!(self.target, Target::Upstream(_))
            && self.policies.cache.as_ref().is_some_and(|c| c.policy.is_some())
            && self.policies.body.as_ref().is_none_or(|b| b.buffer.is_none())
    }

    /// What the route's target is called in the admin API and `check`.
    pub fn target_name(&self) -> &str {
        match &self.target {
            Target::Upstream(u) => &u.name,
            Target::Deny(_) => "(deny)",
        }
    }
}

/// The live routes in precedence order: `model::matcher::Table` over materialized routes.
pub type RouteTable = Table<Arc<Route>>;

impl Routed for Arc<Route> {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    fn denies(&self) -> bool {
        matches!(self.target, Target::Deny(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::matcher::PathMatch;
    use crate::model::template::PathTemplate;

    fn m(path: PathMatch, methods: Option<&[&str]>, host: Option<&str>) -> Matcher {
        Matcher {
            path,
            methods: methods.map(|ms| ms.iter().map(|s| s.parse().unwrap()).collect()),
            host: host.map(str::to_string),
        }
    }

    fn table(ms: Vec<(&str, Matcher)>) -> RouteTable {
        table_denying(ms, "")
    }

    /// The routes, the one named `deny` denying.
    fn table_denying(ms: Vec<(&str, Matcher)>, deny: &str) -> RouteTable {
        let up = Arc::new(Upstream::for_tests());
        RouteTable::new(
            ms.into_iter()
                .map(|(name, matcher)| {
                    Arc::new(Route {
                        name: name.into(),
                        matcher,
                        target: if name == deny { Target::Deny(crate::problem::Problem::NotFound) } else { Target::Upstream(up.clone()) },
                        def: PolicyDef::builtin(),
                        policies: Default::default(),
                        streaming: false,
                        slow_threshold: std::time::Duration::from_millis(100),
                        metrics: Default::default(),
                    })
                })
                .collect(),
        )
    }

    fn hit(t: &RouteTable, method: &str, host: Option<&str>, path: &str) -> Option<String> {
        t.lookup(&method.parse().unwrap(), host, path).map(|(r, _)| r.name.clone())
    }

    #[test]
    fn a_denied_path_is_denied_in_any_case_and_with_segment_parameters() {
        let t = table_denying(
            vec![
                ("all", m(PathMatch::Prefix(String::new()), None, None)),
                ("admin", m(PathMatch::Prefix("/admin".into()), None, None)),
                ("public", m(PathMatch::Exact("/admin/public".into()), None, None)),
            ],
            "admin",
        );
        for p in ["/admin", "/ADMIN", "/Admin/users", "/admin;jsessionid=1/users", "/admin;x"] {
            assert_eq!(hit(&t, "GET", None, p).as_deref(), Some("admin"), "{p}");
        }
        // a more specific route still wins, and other paths are untouched
        assert_eq!(hit(&t, "GET", None, "/admin/public").as_deref(), Some("public"));
        assert_eq!(hit(&t, "GET", None, "/Other;x").as_deref(), Some("all"));
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let t = table(vec![("market", m(PathMatch::Prefix("/api/market".into()), None, None))]);
        assert_eq!(hit(&t, "GET", None, "/api/market").as_deref(), Some("market"));
        assert_eq!(hit(&t, "GET", None, "/api/market/").as_deref(), Some("market"));
        assert_eq!(hit(&t, "GET", None, "/api/market/AAPL").as_deref(), Some("market"));
        assert_eq!(hit(&t, "GET", None, "/api/marketing"), None);
        assert_eq!(hit(&t, "GET", None, "/api"), None);
    }

    #[test]
    fn most_specific_wins_regardless_of_file_order() {
        let t = table(vec![
            ("catch-all", m(PathMatch::Prefix(String::new()), None, None)),
            ("api", m(PathMatch::Prefix("/api".into()), None, None)),
            ("market-get", m(PathMatch::Prefix("/api/market".into()), Some(&["GET"]), None)),
            ("market", m(PathMatch::Prefix("/api/market".into()), None, None)),
            ("exact", m(PathMatch::Exact("/api/market/special".into()), None, None)),
            ("host", m(PathMatch::Prefix(String::new()), None, Some("admin.example.com"))),
        ]);
        assert_eq!(hit(&t, "GET", None, "/other").as_deref(), Some("catch-all"));
        assert_eq!(hit(&t, "GET", None, "/api/x").as_deref(), Some("api"));
        assert_eq!(hit(&t, "GET", None, "/api/market/x").as_deref(), Some("market-get"));
        assert_eq!(hit(&t, "POST", None, "/api/market/x").as_deref(), Some("market"));
        assert_eq!(hit(&t, "POST", None, "/api/market/special").as_deref(), Some("exact"));
        assert_eq!(hit(&t, "GET", Some("ADMIN.example.com"), "/api/market/special").as_deref(), Some("host"));
    }

    fn tpl(s: &str) -> PathMatch {
        PathMatch::Template(Arc::new(PathTemplate::parse(s).unwrap()))
    }

    #[test]
    fn literal_segments_beat_parameters_and_templates_beat_prefixes() {
        let t = table(vec![
            ("api", m(PathMatch::Prefix("/api".into()), None, None)),
            ("item", m(tpl("/api/items/{id}"), None, None)),
            ("reviews", m(tpl("/api/items/{id}/reviews"), None, None)),
            ("featured", m(PathMatch::Exact("/api/items/featured".into()), None, None)),
            ("any-sub", m(tpl("/api/{coll}/{id}"), None, None)),
            ("files", m(tpl("/api/files/{p:path}"), None, None)),
            ("files-deep", m(PathMatch::Prefix("/api/files/static".into()), None, None)),
        ]);
        assert_eq!(hit(&t, "GET", None, "/api/items/5").as_deref(), Some("item"));
        assert_eq!(hit(&t, "GET", None, "/api/items/featured").as_deref(), Some("featured"));
        assert_eq!(hit(&t, "GET", None, "/api/items/5/reviews").as_deref(), Some("reviews"));
        assert_eq!(hit(&t, "GET", None, "/api/users/5").as_deref(), Some("any-sub"));
        assert_eq!(hit(&t, "GET", None, "/api/items/5/other").as_deref(), Some("api"));
        assert_eq!(hit(&t, "GET", None, "/api/files/a/b").as_deref(), Some("files"));
        assert_eq!(hit(&t, "GET", None, "/api/files/static/x").as_deref(), Some("files-deep"));
        assert_eq!(hit(&t, "GET", None, "/api/items").as_deref(), Some("api"));
    }

    #[test]
    fn templates_of_one_shape_are_the_same_match() {
        let a = m(tpl("/items/{id}"), None, None);
        let b = m(tpl("/items/{item_id}"), None, None);
        assert_eq!(a, b);
        assert_ne!(a, m(tpl("/items/{id}/x"), None, None));
    }

    #[test]
    fn overlap_detection() {
        let a = m(PathMatch::Prefix("/a".into()), Some(&["GET", "POST"]), None);
        let b = m(PathMatch::Prefix("/a".into()), Some(&["POST"]), None);
        let c = m(PathMatch::Prefix("/a".into()), Some(&["PUT"]), None);
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
