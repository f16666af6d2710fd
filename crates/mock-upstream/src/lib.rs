//! A posta-like chat backend with fault controls, used in-process by tests
//! and as a process by the demo and benchmarks.
//!
//! Owns nothing itself: it wires the modules and exposes [`MockBackend`] and
//! [`MockConfig`]. It must never grow logic of its own.
//!
//! Event data shapes (one JSON line each, ids `<epoch>-<seq>`):
//! - `outbound-state` to the sender: `{"peer":<recipient>,"rowId":N,"state":"sent"}`
//! - `inbound` to the recipient: `{"peer":<sender>,"rowId":N}`
//! - `read-watermark-changed` to the reader: `{"peer":<peer>,"rowId":N}`
//! - `outbound-state` to the sender when the recipient's watermark covers
//!   their messages: `{"peer":<reader>,"rowId":N,"state":"read"}`, N the
//!   newest of the sender's messages now read (all up to it are)
//! - `resync` (stream-local, when `Last-Event-ID` cannot be served): `{}`

mod assets;
mod backend;
mod chat;
mod feed;
mod routes;
mod server;
mod state;
mod stream;
mod ui;
mod users;
mod wire;

pub use assets::{WEB_DIR_ENV, web_dir};
pub use backend::{MockBackend, MockConfig};
pub use users::{DEMO_USERS, is_valid_user};
