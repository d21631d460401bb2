//! Pagination caps for list endpoints: a page-size parameter gets a default when absent and a
//! maximum (clamped, or refused with 400), and the offset parameter a maximum, so neither a
//! huge page nor a deep one can be used to read a whole table.
//!
//! A value that is not a whole number is left for the backend to refuse (FastAPI answers 422
//! naming the parameter): the gateway only enforces the bounds it is given.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::registry::{keys, query_name, Env, MaterializeError, Scope, Spec};
use super::support::query;
use super::{Directives, Exchange, Flow, Policy};
use crate::model::diag::Diagnostics;
use serde::Deserialize;
use toml::Spanned;
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use pingora::http::{RequestHeader, ResponseHeader};

/// The response field that says a page size was clamped: `limit=200; requested=1000`.
pub const CLAMPED_HEADER: &str = "fastgate-pagination";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    Clamp,
    Reject,
}

keys! {
    /// Page-size default and cap, and an offset cap, for a list endpoint.
    #[schema(example_toml = r#"{ max = 200, default = 50 }"#)]
    pagination: Spanned<RawPagination>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawPagination {
    /// The page-size parameter; `limit` unless given.
    #[schema(default = "limit")]
    pub param: Option<Spanned<String>>,
    /// Added when a request has none.
    pub default: Option<Spanned<u64>>,
    /// The largest page a client may ask for.
    #[schema(example = 200)]
    pub max: Spanned<u64>,
    /// `"clamp"` (the default) or `"reject"`.
    #[schema(default = "clamp")]
    pub on_excess: Option<Spanned<String>>,
    /// The offset parameter; `offset` unless given.
    #[schema(default = "offset")]
    pub offset_param: Option<Spanned<String>>,
    /// The largest offset a client may ask for (deep pages cost the database most).
    pub max_offset: Option<Spanned<u64>>,
}

/// The definition and the live policy: plain values, nothing to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    /// The page-size parameter (`limit`, `page_size`, `size`).
    pub param: String,
    /// Added when the request has no page size; `None`: the backend's own default applies.
    pub default: Option<u64>,
    pub max: u64,
    pub on_excess: Excess,
    /// The offset parameter (`offset`, `skip`, `page`) and its maximum.
    pub offset_param: String,
    pub max_offset: Option<u64>,
}

impl Spec for Pagination {
    type Keys = Keys;
    type Def = Pagination;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<Pagination> {
        let RawPagination { param, default, max, on_excess, offset_param, max_offset } = keys.pagination.as_ref()?.get_ref();
        let param = query_name(cx, param, "limit", "param");
        let offset_param = query_name(cx, offset_param, "offset", "offset_param");
        let max_value = *max.get_ref();
        if max_value == 0 {
            cx.error::<()>(max.span(), "`max` must be above zero", "the largest page a client may ask for, e.g. max = 200");
        }
        if let Some(d) = default.as_ref().filter(|d| *d.get_ref() > max_value || *d.get_ref() == 0) {
            cx.error::<()>(d.span(), format!("`default` must be 1 to `max` ({max_value})"), "the page size a request without one gets, e.g. default = 50");
        }
        let on_excess = match on_excess.as_ref().map(|v| (v.span(), v.get_ref().as_str())) {
            None | Some((_, "clamp")) => Excess::Clamp,
            Some((_, "reject")) => Excess::Reject,
            Some((span, other)) => return cx.error(span, format!("unknown `on_excess` {other:?}"), "\"clamp\" (lower it to `max`) or \"reject\" (400)"),
        };
        Some(Pagination {
            param: param?,
            default: default.as_ref().map(|d| *d.get_ref()),
            max: max_value,
            on_excess,
            offset_param: offset_param?,
            max_offset: max_offset.as_ref().map(|m| *m.get_ref()),
        })
    }

    fn materialize(def: Option<&Pagination>, _env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        Ok(def.cloned())
    }

    fn summary(def: &Pagination) -> String {
        let mut s = format!("pagination {} max {}", def.param, def.max);
        if let Some(d) = def.default {
            s.push_str(&format!(" default {d}"));
        }
        if def.on_excess == Excess::Reject {
            s.push_str(" (reject)");
        }
        if let Some(m) = def.max_offset {
            s.push_str(&format!(", {} max {m}", def.offset_param));
        }
        s
    }
}

#[derive(Debug, Default)]
pub struct PaginationScratch {
    /// The page size to send upstream instead of the client's (or in the absence of one).
    set: Option<u64>,
    /// What the client asked, when it was clamped.
    requested: Option<u64>,
}

impl Policy for Pagination {
    type Scratch = PaginationScratch;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut PaginationScratch, _d: &mut Directives) -> Flow {
        let q = x.req.uri.query();
        if let Some(max_offset) = self.max_offset {
            let offset = query::param(q, &self.offset_param).and_then(|v| v.parse::<u64>().ok());
            if let Some(offset) = offset.filter(|o| *o > max_offset) {
                let detail = format!("`{}` may be at most {max_offset} on this route; {offset} was asked", self.offset_param);
                return Flow::Respond(GatewayError::new(Problem::PaginationLimit, detail));
            }
        }
        match query::param(q, &self.param) {
            None => st.set = self.default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > self.max => match self.on_excess {
                    Excess::Clamp => {
                        st.set = Some(self.max);
                        st.requested = Some(n);
                    }
                    Excess::Reject => {
                        let detail = format!("`{}` may be at most {} on this route; {n} was asked", self.param, self.max);
                        return Flow::Respond(GatewayError::new(Problem::PaginationLimit, detail));
                    }
                },
                _ => {}
            },
        }
        Flow::Continue
    }

    fn on_upstream_request(&self, _x: &Exchange<'_>, up: &mut RequestHeader, st: &mut PaginationScratch) -> Result<(), GatewayError> {
        let Some(n) = st.set else { return Ok(()) };
        query::set_param(up, &self.param, Some(&n.to_string()))
            .map_err(|e| GatewayError::new(Problem::Internal, format!("setting `{}`: {e}", self.param)))
    }

    async fn on_response(
        &self,
        _x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut PaginationScratch,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if let (Some(requested), Some(set)) = (st.requested, st.set) {
            let _ = resp.insert_header(CLAMPED_HEADER, format!("{}={set}; requested={requested}", self.param));
        }
        Ok(())
    }

    fn on_done(&self, st: &PaginationScratch, out: &mut Outcome) {
        if st.requested.is_some() {
            out.pagination = Some("clamped");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::FutureExt as _;
    use super::*;
    use crate::policy::tests::exchange;

    fn policy(on_excess: Excess) -> Pagination {
        Pagination {
            param: "limit".into(),
            default: Some(50),
            max: 200,
            on_excess,
            offset_param: "offset".into(),
            max_offset: Some(1000),
        }
    }

    fn run(p: &Pagination, target: &str) -> (Flow, PaginationScratch, String) {
        let req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        let mut st = PaginationScratch::default();
        let flow = p.on_request(&exchange(&req), &mut st, &mut Directives::default()).now_or_never().unwrap();
        let mut up = req.clone();
        p.on_upstream_request(&exchange(&req), &mut up, &mut st).unwrap();
        (flow, st, up.uri.to_string())
    }

    #[test]
    fn default_clamp_reject_and_offset() {
        let clamp = policy(Excess::Clamp);
        assert_eq!(run(&clamp, "/items").2, "/items?limit=50");
        assert_eq!(run(&clamp, "/items?q=a&limit=20").2, "/items?q=a&limit=20");
        let (flow, st, uri) = run(&clamp, "/items?limit=5000&offset=10");
        assert!(matches!(flow, Flow::Continue));
        assert_eq!((uri.as_str(), st.requested), ("/items?offset=10&limit=200", Some(5000)));
        // not a number: the backend's to refuse
        assert_eq!(run(&clamp, "/items?limit=abc").2, "/items?limit=abc");
        let (flow, ..) = run(&policy(Excess::Reject), "/items?limit=201");
        assert!(matches!(flow, Flow::Respond(e) if e.problem == Problem::PaginationLimit));
        let (flow, ..) = run(&clamp, "/items?offset=1001");
        assert!(matches!(flow, Flow::Respond(e) if e.problem == Problem::PaginationLimit));
        assert!(matches!(run(&clamp, "/items?offset=1000").0, Flow::Continue));
    }
}
