//! Mock backend.
