//! fastgate: a reverse-proxy gateway for FastAPI backends, on pingora.
//!
//! Config flows raw -> compiled (`config`), requests flow through `proxy` over the compiled
//! `routing` table and `policy`, every gateway-made response comes from `problem`.

pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod cache;
pub mod config;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod state;
pub mod telemetry;
pub mod upstream;
