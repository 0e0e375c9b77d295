//! Integration tests: the gateway over real HTTP against a real `redis-server`.
//! One binary, so the services start once and compile once. The harness (services, gateways,
//! clients) is the test kit crate, `tests/kit/`; its modules are named here so that tests
//! write `crate::support::TestGateway`.

use sessiongate_testkit::{process, raw, services, support, upstreams, webdriver};

mod binary;
mod browser;
mod cluster;
mod contract;
mod counters;
mod erasure;
mod failures;
mod faults;
mod gateway;
mod gateway_hardening;
mod hostile;
mod lifecycle;
mod logs;
mod near_cache;
mod observability;
mod operator;
mod origins;
mod plans;
mod quotas;
mod reload;
mod supabase;
mod writebehind;
