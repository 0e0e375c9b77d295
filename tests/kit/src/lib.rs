//! The test kit: what the integration tests (`tests/api/`) and the benchmarks (`benches/`)
//! run the gateway against and with. Real services on free loopback ports under watchdogs
//! that stop them with the test binary ([`services`]: PostgreSQL, PostgREST, Prometheus,
//! Redis Cluster and Sentinel; [`support`]: `redis-server`, gateways started in-process,
//! polling with deadlines), the `sessiongate` binary as a process of its own ([`process`]),
//! raw HTTP/1.1 ([`raw`]), upstreams and nginx for gateway mode ([`upstreams`]), and headless
//! Chromium through chromedriver ([`webdriver`]).
//!
//! A crate of its own (`sessiongate-testkit`, never published), a dev-dependency of
//! `sessiongate`: `tests/api` and `benches/flush.rs` use the same code, compiled once.

pub mod process;
pub mod raw;
pub mod services;
pub mod support;
pub mod upstreams;
pub mod webdriver;
