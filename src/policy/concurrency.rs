//! Concurrency limits with an optional bounded queue: how the gateway keeps a backend's
//! database pool from being exhausted. A request over the limit waits in the queue (bounded in
//! length and time) or is shed with 503 `overloaded`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use super::registry::{keys, Env, MaterializeError, Scope, Spec};
use super::{Exchange, Flow, Policy};
use crate::model::diag::Diagnostics;
use crate::model::units::Dur;
use serde::Deserialize;
use toml::Spanned;
use crate::problem::{GatewayError, Problem};
use crate::telemetry::outcome::Outcome;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use crate::model::plan::ConcurrencyDef;

pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

keys! {
    /// In-flight requests on the route.
    #[schema(example = 64)]
    max_concurrent: Spanned<usize>,
    /// Requests that may wait for a `max_concurrent` slot, and for how long.
    queue: Spanned<RawQueue>,
}

#[derive(Debug, Clone, Deserialize, fastgate_derive::Schema)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Requests that may wait; more get 503 at once.
    #[schema(example = 100)]
    pub size: Spanned<usize>,
    /// Longest wait for a slot before 503 (default 1s).
    #[schema(default = "1s")]
    pub timeout: Option<Spanned<Dur>>,
}

/// `max_concurrent` and its `queue`, in a route or an upstream: `Some(None)` when unset,
/// `None` on an error (recorded).
pub fn compile_slots(cx: &mut Diagnostics<'_>, max: Option<&Spanned<usize>>, queue: Option<&Spanned<RawQueue>>) -> Option<Option<ConcurrencyDef>> {
    let Some(max) = max else {
        if let Some(q) = queue {
            return cx.error(q.span(), "`queue` needs `max_concurrent`", "add max_concurrent = N: the queue holds requests waiting for one of N slots");
        }
        return Some(None);
    };
    if *max.get_ref() == 0 {
        return cx.error(max.span(), "`max_concurrent` must be at least 1", "leave `max_concurrent` out for no limit");
    }
    let (size, timeout) = match queue {
        None => (0, DEFAULT_QUEUE_TIMEOUT),
        Some(q) => {
            let RawQueue { size, timeout } = q.get_ref();
            (*size.get_ref(), cx.positive(timeout.as_ref(), "queue timeout", DEFAULT_QUEUE_TIMEOUT))
        }
    };
    Some(Some(ConcurrencyDef { max: *max.get_ref(), queue: size, queue_timeout: timeout }))
}

#[derive(Debug)]
pub struct Concurrency {
    pub def: ConcurrencyDef,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    QueueFull,
    QueueTimeout,
}

impl Concurrency {
    pub fn new(def: ConcurrencyDef) -> Self {
        Concurrency {
            slots: Arc::new(Semaphore::new(def.max)),
            waiting: AtomicUsize::new(0),
            def,
        }
    }

    /// A slot, held until the permit drops.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.def.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::QueueFull);
        }
        let result = tokio::time::timeout(self.def.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(Ok(p)) => Ok(p),
            // the semaphore is never closed; treat it like a timeout anyway
            Ok(Err(_)) | Err(_) => Err(Shed::QueueTimeout),
        }
    }

    pub fn in_use(&self) -> usize {
        self.def.max - self.slots.available_permits()
    }
}

/// The slots a route's requests take: the route's own limit and its upstream's, shared by
/// every route of that upstream. Taken only by requests that go upstream (cache hits never
/// queue), released when the request ends.
#[derive(Debug, Default)]
pub struct ConcurrencyPolicy {
    pub route: Option<Arc<Concurrency>>,
    pub upstream: Option<Arc<Concurrency>>,
}

impl Spec for ConcurrencyPolicy {
    type Keys = Keys;
    type Def = ConcurrencyDef;

    fn compile(keys: &Keys, cx: &mut Diagnostics<'_>, _scope: &Scope<'_>) -> Option<ConcurrencyDef> {
        compile_slots(cx, keys.max_concurrent.as_ref(), keys.queue.as_ref()).flatten()
    }

    /// The route's own slots (kept across a reload when their definition did not change) and
    /// its upstream's; `None` when it has neither.
    fn materialize(def: Option<&ConcurrencyDef>, env: &Env<'_>) -> Result<Option<Self>, MaterializeError> {
        let route = def.map(|d| {
            env.before
                .and_then(|b| b.concurrency.as_ref())
                .and_then(|c| c.route.clone())
                .filter(|c| c.def == *d)
                .unwrap_or_else(|| Arc::new(Concurrency::new(d.clone())))
        });
        let upstream = env.upstream_slots.clone();
        Ok((route.is_some() || upstream.is_some()).then_some(ConcurrencyPolicy { route, upstream }))
    }

    fn summary(def: &ConcurrencyDef) -> String {
        let mut s = format!("max {} in flight", def.max);
        if def.queue > 0 {
            s.push_str(&format!(" (queue {}, {:?})", def.queue, def.queue_timeout));
        }
        s
    }
}

#[derive(Debug, Default)]
pub struct ConcurrencyScratch {
    route: Option<OwnedSemaphorePermit>,
    upstream: Option<OwnedSemaphorePermit>,
    shed: Option<&'static str>,
}

impl Policy for ConcurrencyPolicy {
    type Scratch = ConcurrencyScratch;

    async fn admit(&self, x: &Exchange<'_>, st: &mut ConcurrencyScratch) -> Flow {
        // A stream (WebSocket, SSE) would hold an upstream slot for its whole life: the
        // upstream limit guards short calls to the database pool. A route limit still applies.
        let upstream = if x.streaming { None } else { self.upstream.as_deref() };
        for (scope, conc) in [("route", self.route.as_deref()), ("upstream", upstream)] {
            let Some(conc) = conc else { continue };
            // pingora may ask again after retrying a connection: a slot held is kept.
            let held = if scope == "route" { &mut st.route } else { &mut st.upstream };
            if held.is_some() {
                continue;
            }
            match conc.acquire().await {
                Ok(permit) => *held = Some(permit),
                Err(shed) => {
                    st.shed = Some(scope);
                    let why = match shed {
                        Shed::QueueFull => "queue full",
                        Shed::QueueTimeout => "queue wait timed out",
                    };
                    let detail = format!("{scope} is at its limit of {} requests in flight ({why})", conc.def.max);
                    return Flow::Respond(GatewayError::new(Problem::Overloaded, detail).retry_after(1));
                }
            }
        }
        Flow::Continue
    }

    fn on_done(&self, st: &ConcurrencyScratch, out: &mut Outcome) {
        out.shed = st.shed;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_then_shed() {
        let c = Concurrency::new(ConcurrencyDef { max: 1, queue: 1, queue_timeout: Duration::from_millis(50) });
        let first = c.acquire().await.unwrap();
        assert_eq!(c.in_use(), 1);
        // one may wait; it times out since the slot is held
        assert_eq!(c.acquire().await.unwrap_err(), Shed::QueueTimeout);
        drop(first);
        let _again = c.acquire().await.unwrap();
    }

    #[tokio::test]
    async fn queue_full_sheds_at_once() {
        let c = Arc::new(Concurrency::new(ConcurrencyDef { max: 1, queue: 0, queue_timeout: Duration::from_secs(5) }));
        let _p = c.acquire().await.unwrap();
        assert_eq!(c.acquire().await.unwrap_err(), Shed::QueueFull);
    }
}
