//! The seed mocks against their own clients, no ssemux in between: each
//! client gets what its document says it needs, refusals are refused, and
//! reconnects catch up.

mod seeds;
