//! The integration tests, one binary: each module drives the real `fastgate` binary in front of
//! the real example backend (and a real redis-server, OTLP receivers, TLS clients) and asserts
//! what a user would observe. One binary links the crate once; nextest still runs every test in
//! a process of its own. `tests/architecture.rs` reads the source and stays apart.

mod common;

mod cache;
mod caching;
mod conformance;
mod discovery;
mod edge;
mod entities;
mod errors;
mod fastapi;
mod fuzz_regressions;
mod invalidation;
mod lifecycle;
mod observability;
mod openapi;
mod policies;
mod proxy;
mod ratelimits;
mod scaleout;
mod server;
mod shipped;
mod streams;
mod tls;
mod traces;
mod upstreams;
