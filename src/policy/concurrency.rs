//! Concurrency limits with an optional bounded queue: how the gateway keeps a backend's
//! database pool from being exhausted. A request over the limit waits in the queue (bounded in
//! length and time) or is shed with 503 `overloaded`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyDef {
    pub max: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
}

pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

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
