//! SSE wire format.
