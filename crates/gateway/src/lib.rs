//! ssemux gateway library: the data path auth → hub → channel → tab, plus the
//! reverse proxy for every other request.

pub mod body;
