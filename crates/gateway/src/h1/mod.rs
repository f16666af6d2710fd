//! HTTP/1.1 spoken by hand, for the two lean paths only: the tab connection
//! (`events::tab_conn`) and the per-user stream to a plain-http backend
//! (`upstream::plain_conn`). Why by hand: for a connection that carries one
//! endless response, hyper's per-connection state was most of the cost — two
//! 8 KiB buffers per served connection, and per pooled client connection a
//! dispatch channel, two buffers and a task (see docs/architecture.md, "The
//! tab connection" and "The upstream connection"). These pieces keep no
//! buffer between reads. Everything else goes through hyper.
//!
//! This module only frames bytes: it never decides who serves a request,
//! never judges a status or a content type, and never panics on input (the
//! request head and body de-framing are fuzzed: `fuzz/fuzz_targets`).

pub mod body;
pub mod head;
pub mod write;

/// Most header fields accepted in a head, request or response.
pub const MAX_HEADERS: usize = 64;
