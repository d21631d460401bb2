//! The registry: every route policy, listed once, in the order it runs. From that one list
//! (`registry!` at the bottom of this file) come:
//! - `PolicyKeys`: the route keys of every policy, read from a route and from `[defaults]`
//!   (each policy declares its own with [`keys!`]), and their merge, key by key;
//! - `PolicyDef`: each policy's compiled definition, compiled by each policy's [`Spec`];
//! - `RoutePolicies`: each policy made live (materialized), and the dispatch of every phase
//!   hook in the list's order; `PolicyScratch`, each policy's per-request state;
//! - the text summary of a definition (`check`, the admin API, the status page), the admin
//!   API's facts, and what a route as a whole takes from its policies (`RouteTraits`).
//!
//! The list itself is in `policy/mod.rs`, beside the modules it names, with the rules that tie
//! two policies together (`cross_policy`), in plain sight.
//!
//! Adding a policy: one file in `src/policy/` with its keys, its definition, its `Spec` and its
//! `Policy` hooks; its `mod` line and one line in the list (`policy/mod.rs`).

use super::{Policy, RoutePolicies};
use crate::cache::invalidate;
use crate::cache::store::CacheStore;
use crate::cache::tags::TagTemplate;
use crate::model::diag::{Diagnostics, Span};
use crate::model::entity::Entities;
use crate::model::matcher::PathMatch;
use crate::model::template::PathTemplate;
use crate::shared_state::Redis;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use toml::Spanned;

/// A policy's keys in a route or `[defaults]`, as written (see [`keys!`]).
pub trait KeySet: Default + Clone + std::fmt::Debug {
    /// The keys, as written in the file.
    const NAMES: &'static [&'static str];
    /// Reads `key`'s value from `map` when the key is one of this policy's.
    fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
    /// These keys over `defaults`, key by key.
    fn or(&self, defaults: &Self) -> Self;
}

/// Declares a policy's route keys: each becomes an `Option` field of its `Keys` struct, read
/// with its span (no `flatten`, which would lose TOML positions).
macro_rules! keys {
    ( $( $(#[$m:meta])* $key:ident : $ty:ty ),* $(,)? ) => {
        /// This policy's keys in a route or in `[defaults]`, as written.
        #[derive(Debug, Default, Clone, fastgate_derive::Schema)]
        pub struct Keys {
            $( $(#[$m])* pub $key: Option<$ty>, )*
        }

        impl $crate::policy::registry::KeySet for Keys {
            const NAMES: &'static [&'static str] = &[ $( stringify!($key), )* ];

            fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
                match key {
                    $( stringify!($key) => {
                        self.$key = Some(map.next_value()?);
                        Ok(true)
                    } )*
                    _ => Ok(false),
                }
            }

            fn or(&self, defaults: &Self) -> Self {
                Keys { $( $key: self.$key.clone().or_else(|| defaults.$key.clone()), )* }
            }
        }
    };
}
pub(crate) use keys;

/// Where keys are compiled: in a route (whose path template parameters they may name) or in
/// `[defaults]` alone.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The route's name and template; `None` for `[defaults]` compiled alone.
    pub route: Option<(&'a str, Option<&'a PathTemplate>)>,
    /// The route's path as a template, an exact path included (no parameters).
    pub shape: Option<&'a PathTemplate>,
    /// `[entities]`, for the cache's occurrences and what writes name.
    pub entities: &'a Entities,
}

static NO_ENTITIES: Entities = Entities { defs: Vec::new() };

impl Default for Scope<'_> {
    fn default() -> Self {
        Scope { route: None, shape: None, entities: &NO_ENTITIES }
    }
}

impl Scope<'_> {
    /// Refuses path parameters the route's template does not declare.
    pub fn check_params<'p>(&self, cx: &mut Diagnostics<'_>, span: Span, params: impl IntoIterator<Item = &'p str>) {
        let Some((route, template)) = self.route else { return };
        if let Some(name) = invalidate::unknown_param(params, template) {
            let hint = match template {
                Some(t) => format!("the template {:?} declares: {}", t.as_str(), t.names().collect::<Vec<_>>().join(", ")),
                None => "give the route a path template, e.g. match = { path = \"/api/items/{item_id}\" }".to_string(),
            };
            cx.error::<()>(span, format!("route `{route}` has no path parameter `{name}`"), hint);
        }
    }

    /// A tag template (`"item:{item_id}"`) whose path parameters the route has.
    pub fn tag_template(&self, cx: &mut Diagnostics<'_>, t: &Spanned<String>) -> Option<TagTemplate> {
        match TagTemplate::parse(t.get_ref()) {
            Ok(tpl) => {
                self.check_params(cx, t.span(), tpl.params());
                Some(tpl)
            }
            Err(e) => cx.error(t.span(), e, "a tag is text with {NAME} (a path parameter), {header:NAME}, {query:NAME} or {cookie:NAME} placeholders, e.g. \"item:{item_id}\""),
        }
    }
}

/// A query parameter name a policy reads (`param`, `offset_param`), or `default` when unset.
pub fn query_name(cx: &mut Diagnostics<'_>, v: &Option<Spanned<String>>, default: &str, key: &str) -> Option<String> {
    let Some(v) = v else { return Some(default.to_string()) };
    let name = v.get_ref().trim();
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Some(name.to_string())
    } else {
        cx.error(v.span(), format!("`{key}` must be a query parameter name, found {name:?}"), format!("letters, digits, `_`, `-` and `.`, e.g. \"{default}\""))
    }
}

/// A duration key that must be above zero; `None` when unset (an error is recorded for zero).
pub fn above_zero(cx: &mut Diagnostics<'_>, v: &Option<Spanned<crate::model::units::Dur>>, key: &str) -> Option<Duration> {
    let v = v.as_ref()?;
    if v.get_ref().0.is_zero() {
        return cx.error(v.span(), format!("`{key}` must be above zero"), format!("leave `{key}` out for the built-in default"));
    }
    Some(v.get_ref().0)
}

/// What a policy may use to become live: the process's parts, the route, and the route's
/// policies in force before a reload (a limiter or a slot pool whose definition did not change
/// is kept, with its state).
pub struct Env<'a> {
    pub route: &'a str,
    pub path: &'a PathMatch,
    pub redis: Option<&'a Arc<Redis>>,
    pub store: &'a Arc<dyn CacheStore>,
    pub tag_header: &'a http::HeaderName,
    /// The upstream's own slots, shared by every route that uses it.
    pub upstream_slots: Option<Arc<super::concurrency::Concurrency>>,
    pub before: Option<&'a RoutePolicies>,
}

#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error("rate limit `{limit}` cannot be built")]
    RateLimit { limit: String },
}

/// What a route as a whole takes from its policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTraits {
    /// Requests stream: no total deadline, not counted as slow.
    pub streaming: bool,
    /// A request slower than this logs a warning and counts as slow.
    pub slow_threshold: Duration,
}

/// A route policy's factory (Envoy's per-filter config + factory): its keys, how they compile
/// to a plain definition, and how a definition becomes the live policy.
pub trait Spec: Policy + Sized {
    type Keys: KeySet;
    type Def: std::fmt::Debug + Clone + PartialEq;
    /// The merged keys of a route, or `[defaults]` alone: `None` when the route runs without
    /// the policy. Errors are recorded in `cx`.
    fn compile(keys: &Self::Keys, cx: &mut Diagnostics<'_>, scope: &Scope<'_>) -> Option<Self::Def>;
    /// The live policy; `None` when the route runs without it.
    fn materialize(def: Option<&Self::Def>, env: &Env<'_>) -> Result<Option<Self>, MaterializeError>;
    /// The definition in words (for `check`, the admin API and the status page).
    fn summary(def: &Self::Def) -> String;
    /// Fields of the admin API's route table.
    fn facts(_def: &Self::Def, _out: &mut serde_json::Map<String, serde_json::Value>) {}
    /// What the route as a whole takes from this policy.
    fn route_traits(_def: &Self::Def, _t: &mut RouteTraits) {}
}

/// The names every route and `[defaults]` accept for policies (for "did you mean").
pub fn all_names(lists: &[&'static [&'static str]]) -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| lists.iter().flat_map(|l| l.iter().copied()).collect())
}

macro_rules! registry {
    ( $( $(#[$doc:meta])* $field:ident : $ty:ty ),* $(,)? ) => {
        /// A route's policies, materialized.
        #[derive(Debug, Default)]
        pub struct RoutePolicies {
            $( $(#[$doc])* pub $field: Option<$ty>, )*
        }

        /// Each policy's per-request state.
        #[derive(Default)]
        pub struct PolicyScratch {
            $( pub $field: <$ty as $crate::policy::Policy>::Scratch, )*
        }

        /// The policy keys of a route or of `[defaults]`, as written.
        #[derive(Debug, Default, Clone)]
        pub struct PolicyKeys {
            $( pub $field: <$ty as $crate::policy::registry::Spec>::Keys, )*
        }

        /// Every policy of a route, compiled: `[defaults]` merged with the route's own keys.
        #[derive(Debug, Clone, PartialEq)]
        pub struct PolicyDef {
            $( pub $field: Option<<$ty as $crate::policy::registry::Spec>::Def>, )*
        }

        impl $crate::model::schema::Schema for PolicyKeys {
            /// Every policy's keys, in the list's order.
            fn schema() -> serde_json::Value {
                let mut o = $crate::model::schema::Object::new("");
                $( o.flatten(<<$ty as $crate::policy::registry::Spec>::Keys as $crate::model::schema::Schema>::schema()); )*
                o.into_value()
            }
        }

        impl PolicyKeys {
            /// Every policy key, as written in the file.
            pub fn names() -> &'static [&'static str] {
                $crate::policy::registry::all_names(&[ $( <<$ty as $crate::policy::registry::Spec>::Keys as $crate::policy::registry::KeySet>::NAMES, )* ])
            }

            /// Reads `key`'s value from `map` when a policy owns the key.
            pub fn accept<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
                $( if $crate::policy::registry::KeySet::accept(&mut self.$field, key, map)? { return Ok(true); } )*
                Ok(false)
            }

            /// A route's keys over `[defaults]`, key by key.
            pub fn over(&self, defaults: &PolicyKeys) -> PolicyKeys {
                PolicyKeys { $( $field: $crate::policy::registry::KeySet::or(&self.$field, &defaults.$field), )* }
            }
        }

        impl PolicyDef {
            /// Compiles merged keys; errors are recorded in `cx`.
            pub fn compile(keys: &PolicyKeys, cx: &mut $crate::model::diag::Diagnostics<'_>, scope: &$crate::policy::registry::Scope<'_>) -> PolicyDef {
                let mut def = PolicyDef { $( $field: <$ty as $crate::policy::registry::Spec>::compile(&keys.$field, cx, scope), )* };
                cross_policy(&mut def);
                def
            }

            /// The built-in policy: what a route gets when neither it nor `[defaults]` says more.
            pub fn builtin() -> PolicyDef {
                let src = $crate::model::diag::Source { file: "", text: "" };
                PolicyDef::compile(&PolicyKeys::default(), &mut $crate::model::diag::Diagnostics::new(&src), &$crate::policy::registry::Scope::default())
            }

            /// Fields of the admin API's route table.
            pub fn facts(&self) -> serde_json::Map<String, serde_json::Value> {
                let mut out = serde_json::Map::new();
                $( if let Some(d) = &self.$field { <$ty as $crate::policy::registry::Spec>::facts(d, &mut out); } )*
                out
            }

            /// What the route as a whole takes from its policies.
            pub fn route_traits(&self) -> $crate::policy::registry::RouteTraits {
                let mut t = $crate::policy::registry::RouteTraits { streaming: false, slow_threshold: $crate::policy::timeout::SLOW_THRESHOLD };
                $( if let Some(d) = &self.$field { <$ty as $crate::policy::registry::Spec>::route_traits(d, &mut t); } )*
                t
            }
        }

        impl std::fmt::Display for PolicyDef {
            /// Every policy the route runs, in words, in the order they run.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let parts: Vec<String> = [ $( self.$field.as_ref().map(<$ty as $crate::policy::registry::Spec>::summary), )* ]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect();
                f.write_str(&parts.join(", "))
            }
        }

        impl RoutePolicies {
            /// The live policies of a definition.
            pub fn materialize(def: &PolicyDef, env: &$crate::policy::registry::Env<'_>) -> Result<RoutePolicies, $crate::policy::registry::MaterializeError> {
                Ok(RoutePolicies { $( $field: <$ty as $crate::policy::registry::Spec>::materialize(def.$field.as_ref(), env)?, )* })
            }

            pub async fn on_request(&self, x: &$crate::policy::Exchange<'_>, st: &mut PolicyScratch, d: &mut $crate::policy::Directives) -> $crate::policy::Flow {
                $( if let Some(p) = &self.$field {
                    if let $crate::policy::Flow::Respond(e) = $crate::policy::Policy::on_request(p, x, &mut st.$field, d).await { return $crate::policy::Flow::Respond(e); }
                } )*
                $crate::policy::Flow::Continue
            }
            pub async fn admit(&self, x: &$crate::policy::Exchange<'_>, st: &mut PolicyScratch) -> $crate::policy::Flow {
                $( if let Some(p) = &self.$field {
                    if let $crate::policy::Flow::Respond(e) = $crate::policy::Policy::admit(p, x, &mut st.$field).await { return $crate::policy::Flow::Respond(e); }
                } )*
                $crate::policy::Flow::Continue
            }
            pub fn on_request_body(&self, chunk: &mut Option<bytes::Bytes>, st: &mut PolicyScratch) -> Result<(), $crate::problem::GatewayError> {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::on_request_body(p, chunk, &mut st.$field)?; } )*
                Ok(())
            }
            pub fn on_peer(&self, x: &$crate::policy::Exchange<'_>, st: &mut PolicyScratch, opts: &mut pingora::upstreams::peer::PeerOptions) {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::on_peer(p, x, &mut st.$field, opts); } )*
            }
            pub fn on_upstream_request(&self, x: &$crate::policy::Exchange<'_>, up: &mut pingora::http::RequestHeader, st: &mut PolicyScratch) -> Result<(), $crate::problem::GatewayError> {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::on_upstream_request(p, x, up, &mut st.$field)?; } )*
                Ok(())
            }
            /// Attempts after the first that the first policy with an opinion allows for
            /// `failure`; `None` when none has one.
            pub fn retries(&self, failure: $crate::policy::Failure) -> Option<usize> {
                $( if let Some(n) = self.$field.as_ref().and_then(|p| $crate::policy::Policy::retries(p, failure)) { return Some(n); } )*
                None
            }
            pub async fn on_response(&self, x: &$crate::policy::Exchange<'_>, resp: &mut pingora::http::ResponseHeader, st: &mut PolicyScratch, d: &mut $crate::policy::Directives) -> Result<(), $crate::problem::GatewayError> {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::on_response(p, x, resp, &mut st.$field, d).await?; } )*
                Ok(())
            }
            pub fn decorate(&self, resp: &mut pingora::http::ResponseHeader, st: &PolicyScratch) {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::decorate(p, resp, &st.$field); } )*
            }
            pub fn on_response_body(&self, body: &mut Option<bytes::Bytes>, eos: bool, st: &mut PolicyScratch) -> Result<(), $crate::policy::Cut> {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::on_response_body(p, body, eos, &mut st.$field)?; } )*
                Ok(())
            }
            pub fn on_done(&self, st: &PolicyScratch, out: &mut $crate::telemetry::outcome::Outcome) {
                $( if let Some(p) = &self.$field { $crate::policy::Policy::on_done(p, &st.$field, out); } )*
            }
        }
    };
}
pub(crate) use registry;

