//! Integration tests: the gateway over real HTTP against a real `redis-server`.
//! One binary, so the services start once and compile once.

mod services;
mod support;

mod binary;
mod cluster;
mod contract;
mod failures;
mod faults;
mod gateway;
mod hostile;
mod lifecycle;
mod observability;
mod quotas;
mod supabase;
mod writebehind;
