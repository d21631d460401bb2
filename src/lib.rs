//! fastgate: a reverse-proxy gateway for FastAPI backends, on pingora.
//!
//! Config flows raw -> plan (`config`) -> live runtime (`runtime`); requests flow through the
//! `proxy` dispatcher over the `routing` table and each route's chain of `policy` modules;
//! every gateway-made response comes from `problem`; each request's `Outcome` is reported once
//! by `telemetry`. `tests/architecture.rs` keeps these layers apart.

pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod cache;
pub mod client;
pub mod config;
pub mod discovery;
pub mod edge;
pub mod fuzzing;
pub mod model;
pub mod openapi;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod routetest;
pub mod routing;
pub mod runtime;
pub mod shared_state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
