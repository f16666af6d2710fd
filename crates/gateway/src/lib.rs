//! ssemux gateway library.
