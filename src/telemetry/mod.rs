//! Telemetry in one place: log set-up, metric names and labels, OTLP traces (and the `OTEL_*`
//! variables), and `outcome`: the one record per request that becomes the access line, the
//! metrics and the span. Nothing else in the crate names a metric.

pub mod errorlog;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod outcome;
pub mod status;

pub use metrics::Metrics;
