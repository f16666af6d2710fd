//! Mocks of the systems the seed documents (`/work/shared/seeds/`) describe,
//! each with an emulation of that system's own client, so integration tests
//! can put ssemux between a client and a backend it was not written against.
//!
//! Every mock listens on 127.0.0.1 only and answers bad input with a 4xx
//! (the WebSocket mock, once upgraded, by ignoring it or a close code),
//! never a panic. Not every test uses every item.

#![allow(dead_code)]

/// Seed 000.
pub mod cloud_share;
/// The clients' common transport.
pub mod eventsource;
/// Seed 002.
pub mod fastapi_sse;
/// Seed 003.
pub mod scaidrive;
/// The mocks' common server side.
pub mod serve;
/// Seed 004.
pub mod synckit;

use std::time::Duration;

use tokio::sync::watch;

/// Waits until `cond` holds for the value in `rx`, at most `within`; returns
/// whether it held. Shared by the clients, whose state lives in a watch
/// channel so a test wakes on each change instead of sleeping.
pub async fn wait_on<T>(
    rx: &watch::Receiver<T>,
    within: Duration,
    mut cond: impl FnMut(&T) -> bool,
) -> bool {
    let mut rx = rx.clone();
    matches!(
        tokio::time::timeout(within, rx.wait_for(|v| cond(v))).await,
        Ok(Ok(_))
    )
}

/// Polls `cond` — a mock's counter, which has no watch channel — until it
/// holds, at most `within`; returns whether it held.
pub async fn until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// A poisoned lock only means another test thread panicked; the data is
/// still what the mocks need, and they must not panic in turn.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 16 random hex digits (for secrets and ids), from std's randomly seeded
/// hasher so no RNG crate is needed.
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    format!("{:016x}", h.finish())
}
