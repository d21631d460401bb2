//! Pagination caps for list endpoints: a page-size parameter gets a default when absent and a
//! maximum (clamped, or refused with 400), and the offset parameter a maximum, so neither a
//! huge page nor a deep one can be used to read a whole table.
//!
//! A value that is not a whole number is left for the backend to refuse (FastAPI answers 422
//! naming the parameter): the gateway only enforces the bounds it is given.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::{query, Directives, Exchange, Flow, Policy};
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

#[derive(Debug, Default)]
pub struct PaginationState {
    /// The page size to send upstream instead of the client's (or in the absence of one).
    set: Option<u64>,
    /// What the client asked, when it was clamped.
    requested: Option<u64>,
}

impl Policy for Pagination {
    type State = PaginationState;

    async fn on_request(&self, x: &Exchange<'_>, st: &mut PaginationState, _d: &mut Directives) -> Flow {
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

    fn on_upstream_request(&self, _x: &Exchange<'_>, up: &mut RequestHeader, st: &mut PaginationState) -> Result<(), GatewayError> {
        let Some(n) = st.set else { return Ok(()) };
        query::set_param(up, &self.param, Some(&n.to_string()))
            .map_err(|e| GatewayError::new(Problem::Internal, format!("setting `{}`: {e}", self.param)))
    }

    async fn on_response(
        &self,
        _x: &Exchange<'_>,
        resp: &mut ResponseHeader,
        st: &mut PaginationState,
        _d: &mut Directives,
    ) -> Result<(), GatewayError> {
        if let (Some(requested), Some(set)) = (st.requested, st.set) {
            let _ = resp.insert_header(CLAMPED_HEADER, format!("{}={set}; requested={requested}", self.param));
        }
        Ok(())
    }

    fn on_done(&self, st: &PaginationState, out: &mut Outcome) {
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

    fn run(p: &Pagination, target: &str) -> (Flow, PaginationState, String) {
        let req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        let mut st = PaginationState::default();
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
