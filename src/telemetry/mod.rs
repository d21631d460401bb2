//! Telemetry in one place: log set-up, metric names and labels, and the typed events the
//! request path emits. Nothing else in the crate names a metric.

pub mod errorlog;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod outcome;
pub mod status;

pub use metrics::Metrics;
