//! `retry`: more attempts for an exchange that failed before any of the response reached the
//! client. A failed connect is retried for every method (nothing was sent); a reset or a
//! timeout after the request was sent only for GET, HEAD and OPTIONS, which a backend may see
//! twice (the proxy holds that rule). Another server of the upstream is tried first when there
//! is one. Without `retry`, only a failed connect moves on to another server of the upstream.

use super::registry::{keys, Env, MaterializeError, Scope, Spec};
use super::{Failure, Policy};
use crate::model::diag::Diagnostics;
use serde::Deserialize;
use toml::Spanned;

keys! {
    /// More attempts for a failed exchange: `{ attempts = 2, on = ["connect", "reset", "timeout"] }`.
    retry: Spanned<RawRetry>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts after the first, at most 5; only for idempotent requests.
    #[schema(example = 2)]
    pub attempts: Spanned<u32>,
    /// Which failures are retried: `"connect"`, `"reset"`, `"timeout"`.
    #[schema(example_toml = r#"["connect", "reset"]"#)]
    pub on: Option<Vec<Spanned<String>>>,
}

/// The definition and the live policy: plain values, nothing to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts after the first.
    pub attempts: u32,
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
}

impl Retry {
    pub const MAX_ATTEMPTS: u32 = 5;
}

impl Spec for Retry {
    type Keys = Keys;
    type Def = Retry;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<Retry> {
        let raw = keys.retry.as_ref()?.get_ref();
        let attempts = *raw.attempts.get_ref();
        // every error of the table is reported, not only the first
        let mut ok = true;
        if attempts == 0 || attempts > Retry::MAX_ATTEMPTS {
            ok = false;
            cx.error::<()>(raw.attempts.span(), format!("`retry.attempts` must be 1 to {}", Retry::MAX_ATTEMPTS), "attempts after the first: 1 or 2 is usual");
        }
        let mut retry = Retry { attempts, connect: true, reset: false, timeout: false };
        if let Some(on) = &raw.on {
            retry.connect = false;
            for kind in on {
                match kind.get_ref().as_str() {
                    "connect" => retry.connect = true,
                    "reset" => retry.reset = true,
                    "timeout" => retry.timeout = true,
                    other => {
                        ok = false;
                        cx.error::<()>(
                            kind.span(),
                            format!("unknown retry condition {other:?}"),
                            "\"connect\" (refused or timed out), \"reset\" (closed before a response), \"timeout\" (no response in read_timeout)",
                        );
                    }
                }
            }
        }
        ok.then_some(retry)
    }

    fn materialize(def: Option<&Retry>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.copied())
    }

    fn summary(def: &Retry) -> String {
        let on: Vec<&str> = [(def.connect, "connect"), (def.reset, "reset"), (def.timeout, "timeout")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        format!("retry {} on {}", def.attempts, on.join("/"))
    }
}

impl Policy for Retry {
    type Scratch = ();

    /// A failure the route lists gets its attempts; one it does not, none (not even another
    /// server: the route said which failures to retry).
    fn retries(&self, failure: Failure) -> Option<usize> {
        let listed = match failure {
            Failure::Connect => self.connect,
            Failure::Reset => self.reset,
            Failure::Timeout => self.timeout,
        };
        Some(if listed { self.attempts as usize } else { 0 })
    }
}
