//! SSE wire format for ssemux: a framing-safe encoder and a size-capped,
//! incremental parser for the upstream stream.
//!
//! This crate owns the bytes-on-the-wire rules and nothing else: it must never
//! do I/O, allocate per input byte, or panic on any input.

pub mod encode;
pub mod parse;

pub use encode::{EncodeError, encode_comment, encode_event, encode_retry};
pub use parse::{Event, Item, ParseError, Parser};
