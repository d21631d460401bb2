//! The routes file as written: serde structs that mirror the TOML, nothing more.
//!
//! Every table denies unknown keys (a typo is an error with a "did you mean", never a silently
//! ignored setting). Values that later checks need to point at are `Spanned`. No `flatten` or
//! `untagged`: both lose TOML positions.

use super::units::{Dur, EnvString, Size};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub defaults: RawPolicy,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<EnvString>>,
    pub admin_listen: Option<Spanned<EnvString>>,
    pub admin_token: Option<EnvString>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<EnvString>>,
    pub threads: Option<Spanned<usize>>,
    pub shutdown_grace: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<Spanned<EnvString>>,
    pub idle_timeout: Option<Dur>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<EnvString>>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub healthy_threshold: Option<usize>,
    pub unhealthy_threshold: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<Spanned<EnvString>>,
    pub path_prefix: Option<Spanned<EnvString>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub host: Option<Spanned<EnvString>>,
}

/// Declares the policy keys once, for `[defaults]` (`RawPolicy`) and for each route
/// (`RawRoute`, which adds its own identity keys), so the two cannot drift apart.
macro_rules! with_policy_keys {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(pub $field: $ty,)*
            /// Total time for the whole upstream exchange.
            pub timeout: Option<Spanned<Dur>>,
            pub connect_timeout: Option<Spanned<Dur>>,
            /// Longest wait between two reads from the upstream.
            pub read_timeout: Option<Spanned<Dur>>,
            pub max_body: Option<Spanned<Size>>,
            /// A streaming route has no total timeout; reads may idle up to `stream_idle_timeout`.
            pub streaming: Option<bool>,
            pub stream_idle_timeout: Option<Spanned<Dur>>,
        }
    };
}

with_policy_keys! {
    /// `[defaults]`: the policy every route inherits.
    pub struct RawPolicy {}
}

with_policy_keys! {
    /// `[[routes]]`: how to recognise a request, where to send it, and policy overrides.
    pub struct RawRoute {
        name: Option<Spanned<String>>,
        r#match: Option<Spanned<RawMatch>>,
        upstream: Option<Spanned<String>>,
    }
}

/// The policy keys of a route or of `[defaults]`, borrowed, for merging.
pub struct PolicyKeys<'a> {
    pub timeout: &'a Option<Spanned<Dur>>,
    pub connect_timeout: &'a Option<Spanned<Dur>>,
    pub read_timeout: &'a Option<Spanned<Dur>>,
    pub max_body: &'a Option<Spanned<Size>>,
    pub streaming: &'a Option<bool>,
    pub stream_idle_timeout: &'a Option<Spanned<Dur>>,
}

macro_rules! policy_keys_of {
    ($t:ty) => {
        impl $t {
            pub fn policy_keys(&self) -> PolicyKeys<'_> {
                PolicyKeys {
                    timeout: &self.timeout,
                    connect_timeout: &self.connect_timeout,
                    read_timeout: &self.read_timeout,
                    max_body: &self.max_body,
                    streaming: &self.streaming,
                    stream_idle_timeout: &self.stream_idle_timeout,
                }
            }
        }
    };
}
policy_keys_of!(RawPolicy);
policy_keys_of!(RawRoute);
