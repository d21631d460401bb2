//! The bottom layer: plain definitions that every other module may use and that import nothing
//! else of the crate. Path templates and their parameters, path normalization, route matchers
//! and their precedence, and the plan's process-level definitions (listeners, upstreams, shared
//! state, telemetry). No live object (limiter, socket, metric series) is built here.

pub mod diag;
pub mod entity;
pub mod json;
pub mod matcher;
pub mod normalize;
pub mod plan;
pub mod schema;
pub mod template;
pub mod units;
