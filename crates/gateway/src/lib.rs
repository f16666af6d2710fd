//! ssemux gateway library: the data path auth → hub → channel → tab, plus the
//! reverse proxy for every other request.
//!
//! Modules are named after what they own on the data path; see each module's
//! top comment for what it must never do.

pub mod auth;
pub mod body;
pub mod channel;
pub mod client;
pub mod config;
pub mod hub;
pub mod limit;
pub mod metrics;
pub mod pacer;
pub mod proxy;
pub mod server;
pub mod socket;
pub mod tab;
pub mod tab_conn;
pub mod tls;
pub mod translate;
pub mod upstream;
pub mod upstream_conn;
pub mod watermark;
