//! Integration tests: the gateway over real HTTP against a real `redis-server`.
//! One binary, so the services start once and compile once.

mod process;
mod raw;
mod services;
mod support;
mod upstreams;
mod webdriver;

mod binary;
mod browser;
mod cluster;
mod contract;
mod counters;
mod failures;
mod faults;
mod gateway;
mod gateway_hardening;
mod hostile;
mod lifecycle;
mod logs;
mod observability;
mod origins;
mod quotas;
mod supabase;
mod writebehind;
