//! `hsts`: `Strict-Transport-Security` on responses to requests that came over HTTPS. Never on
//! plain HTTP (RFC 6797 8.1: a browser ignores it there, and an attacker could forge it).

use super::registry::{keys, Env, MaterializeError, Scope, Spec};
use super::{Directives, Exchange, Policy};
use crate::model::diag::Diagnostics;
use crate::model::units::{Dur, Toggle};
use crate::problem::GatewayError;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// `hsts = "on"`: one year, the value preload lists ask for.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

keys! {
    /// `Strict-Transport-Security` on HTTPS responses: `"on"` (one year), `"off"`, or a table.
    #[schema(example = "on")]
    hsts: Spanned<Toggle<RawHsts>>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    /// How long browsers remember to use HTTPS only (default one year).
    pub max_age: Option<Spanned<Dur>>,
    /// Adds `includeSubDomains`.
    pub include_subdomains: Option<Spanned<bool>>,
    /// Adds `preload` (for browsers' preload lists).
    pub preload: Option<Spanned<bool>>,
}

/// The field's value, as sent (built and checked when the config compiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HstsDef {
    pub value: HeaderValue,
}

#[derive(Debug, Clone)]
pub struct Hsts {
    value: HeaderValue,
}

impl Spec for Hsts {
    type Keys = Keys;
    type Def = HstsDef;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<HstsDef> {
        let raw = match keys.hsts.as_ref()?.get_ref() {
            Toggle::Off => return None,
            Toggle::On(raw) => raw.as_ref(),
        };
        let max_age = match raw.and_then(|r| r.max_age.as_ref()) {
            Some(d) if d.get_ref().0.is_zero() => {
                return cx.error(d.span(), "`hsts.max_age` must be above zero", "hsts = \"off\" sends no Strict-Transport-Security");
            }
            Some(d) => d.get_ref().0,
            None => DEFAULT_MAX_AGE,
        };
        let mut value = format!("max-age={}", max_age.as_secs());
        if raw.and_then(|r| r.include_subdomains.as_ref()).is_some_and(|b| *b.get_ref()) {
            value.push_str("; includeSubDomains");
        }
        if raw.and_then(|r| r.preload.as_ref()).is_some_and(|b| *b.get_ref()) {
            value.push_str("; preload");
        }
        // digits and fixed words: always a valid field value
        HeaderValue::from_str(&value).ok().map(|value| HstsDef { value })
    }

    fn materialize(def: Option<&HstsDef>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.map(|d| Hsts { value: d.value.clone() }))
    }

    fn summary(def: &HstsDef) -> String {
        format!("hsts {}", def.value.to_str().unwrap_or("?"))
    }
}

impl Policy for Hsts {
    type Scratch = ();

    async fn on_response(&self, x: &Exchange<'_>, resp: &mut ResponseHeader, _st: &mut (), _d: &mut Directives) -> Result<(), GatewayError> {
        if x.tls {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, self.value.clone())
                .map_err(|e| GatewayError::new(crate::problem::Problem::Internal, format!("hsts: {e}")))?;
        }
        Ok(())
    }
}
