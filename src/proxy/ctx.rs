//! Per-request state: a small core (id, start, config snapshot, the routing decision, who the
//! client is) plus each policy's own state and the outcome record telemetry gets at the end.

use crate::app::InFlight;
use crate::policy::PolicyScratch;
use crate::problem::GatewayError;
use crate::routing::Route;
use crate::runtime::Runtime;
use crate::telemetry::otel::RequestTrace;
use crate::telemetry::outcome::Outcome;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the first phase decided about a request; later phases act on it, never re-decide.
#[must_use]
pub enum Decision {
    /// Not decided yet (the first phase has not run).
    Pending,
    /// No route serves the path: answered with 404 `no_route` (one that serves it with other
    /// methods is a 405 rejection).
    NoRoute,
    /// Refused before the route's upstream is involved (server limits, an unroutable path, a
    /// route policy's refusal); `route` is set when the refusal came from a route's policy.
    Rejected { err: GatewayError, route: Option<Arc<Route>> },
    Routed(Arc<Route>),
}

/// What every phase knows of the request, apart from the policies' own state.
pub struct Core {
    pub started: Instant,
    pub request_id: String,
    /// The config snapshot this request runs on, start to finish.
    pub runtime: Arc<Runtime>,
    /// The normalized path, when it differs from the one received: matched and forwarded.
    pub rewritten_path: Option<String>,
    /// The route template's parameters, as ranges of the normalized path.
    pub params: crate::model::template::Params,
    pub peer_ip: Option<IpAddr>,
    /// The request came over the HTTPS listener.
    pub tls: bool,
    /// The client behind trusted proxies (the peer otherwise).
    pub client_ip: Option<IpAddr>,
    pub trusted_peer: bool,
    /// An upgrade, or a route that streams.
    pub streaming: bool,
    /// When `upstream_peer` chose a server: connect time and time to the response header.
    pub upstream_at: Option<Instant>,
    /// Failed attempts of this request retried so far, and the server of the last: the next
    /// attempt goes elsewhere when the upstream has another server.
    pub retries: usize,
    pub failed_server: Option<std::net::SocketAddr>,
    /// The backend's 304 to a revalidation, until the stored header is updated from it.
    pub not_modified: Option<Box<pingora::http::ResponseHeader>>,
    /// Answered by the cache's fast path: pingora's cache never ran, the phase is a hit.
    pub fast_hit: bool,
}

impl Decision {
    /// The route, for a routed request or a route policy's refusal. Borrowing the decision
    /// alone leaves the other fields of `Ctx` free for the policies' state.
    pub fn route(&self) -> Option<&Arc<Route>> {
        match self {
            Decision::Routed(r) | Decision::Rejected { route: Some(r), .. } => Some(r),
            _ => None,
        }
    }
}

/// The policies' state and the outcome, boxed: pingora moves the context into the request's
/// future by value, and these are most of its size (measured: 808 bytes inline cost about
/// 1k instructions of copying per request; one allocation costs far less).
#[derive(Default)]
pub struct Record {
    pub scratch: PolicyScratch,
    pub outcome: Outcome,
}

pub struct Ctx {
    pub core: Core,
    pub decision: Decision,
    pub record: Box<Record>,
    /// A refusal from a phase after `request_filter`, answered by `fail_to_proxy`: pingora
    /// ends such phases with an error, and this says which problem it was.
    pub failure: Option<GatewayError>,
    pub trace: Option<RequestTrace>,
    pub _in_flight: InFlight,
}

impl Ctx {
    pub fn new(runtime: Arc<Runtime>, in_flight: InFlight) -> Self {
        Ctx {
            core: Core {
                started: Instant::now(),
                request_id: String::new(),
                runtime,
                rewritten_path: None,
                params: Default::default(),
                peer_ip: None,
                tls: false,
                client_ip: None,
                trusted_peer: false,
                streaming: false,
                upstream_at: None,
                retries: 0,
                failed_server: None,
                not_modified: None,
                fast_hit: false,
            },
            decision: Decision::Pending,
            record: Box::default(),
            failure: None,
            trace: None,
            _in_flight: in_flight,
        }
    }

    /// The route, for a routed request or a route policy's refusal.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.decision.route()
    }
}

