//! Plain data and pure rules: what a session is and what its quotas mean. Everything else
//! in the crate builds on this; this imports nothing else of the crate and never does I/O.

pub mod decision;
pub mod quota;
pub mod session;
