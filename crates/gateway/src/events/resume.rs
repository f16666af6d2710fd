//! Resume: the upstream position a downstream id carries, so a tab that
//! comes back after its channel is gone (hidden past the grace, moved to
//! another instance, a restart) resumes from the backend's own history
//! instead of a `resync`. The position is sealed (ChaCha20-Poly1305, key from
//! `hub.resume_key_file`, shared by a deployment's instances; random per
//! process if unset) with the channel's key as associated data: a page can
//! neither read nor forge one, and one user's id is worthless to another.
//! Pure: it never does I/O after the key is loaded and never logs a position.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Longest upstream id a position is made for; a longer one is not
/// resumable (ids stay short on the wire).
const MAX_ID_BYTES: usize = 192;

/// Where in the upstream a frame stands: trigger `index` (of `total`) of the
/// upstream event `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The upstream event's id.
    pub id: Arc<str>,
    /// This frame's index among the event's triggers.
    pub index: u16,
    /// How many triggers the event made.
    pub total: u16,
}

impl Position {
    /// The `Last-Event-ID` to resume the upstream with after this frame:
    /// its event's id, once the frame is that event's last trigger. A tab
    /// holding part of an event has nothing exact to resume from. (Only the
    /// last frame of a publish is sealed, and a publish always ends with a
    /// whole event, so a sealed position is a whole one.)
    pub fn resume_point(&self) -> Option<Arc<str>> {
        (u32::from(self.index) + 1 >= u32::from(self.total)).then(|| self.id.clone())
    }
}

/// The sealing key, and the nonce counter that keeps every seal unique.
pub struct ResumeKey {
    key: LessSafeKey,
    prefix: [u8; 4],
    counter: AtomicU64,
}

/// The key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("hub.resume_key_file: {0}")]
pub struct ResumeKeyError(String);

impl ResumeKey {
    /// A key from `secret` (any length of at least 32 bytes; hashed to the
    /// cipher's key).
    pub fn from_secret(secret: &[u8]) -> Result<ResumeKey, ResumeKeyError> {
        if secret.len() < 32 {
            return Err(ResumeKeyError(
                "the key must be at least 32 bytes (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, secret);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, digest.as_ref())
            .map_err(|_| ResumeKeyError("unusable key".into()))?;
        // Nonces: a random per-process prefix and a counter from a random
        // start, so instances sharing the key never repeat one.
        let mut seed = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| ResumeKeyError("no randomness for nonces".into()))?;
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&seed[..4]);
        let mut start = [0u8; 8];
        start.copy_from_slice(&seed[4..]);
        Ok(ResumeKey {
            key: LessSafeKey::new(unbound),
            prefix,
            counter: AtomicU64::new(u64::from_le_bytes(start)),
        })
    }

    /// A key of this process alone (resume within the process only).
    pub fn random() -> Result<ResumeKey, ResumeKeyError> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| ResumeKeyError("no randomness".into()))?;
        ResumeKey::from_secret(&secret)
    }

    /// The key in `path` (its bytes, surrounding whitespace dropped).
    pub fn from_file(path: &std::path::Path) -> Result<ResumeKey, ResumeKeyError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ResumeKeyError(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes);
        ResumeKey::from_secret(text.trim().as_bytes())
    }

    /// `pos` sealed for the channel `key`, as id-safe text (base64url).
    pub fn seal(&self, channel_key: &str, pos: &Position) -> Option<String> {
        if pos.id.len() > MAX_ID_BYTES {
            return None;
        }
        let mut plain = Vec::with_capacity(4 + pos.id.len() + 16);
        plain.extend_from_slice(&pos.index.to_le_bytes());
        plain.extend_from_slice(&pos.total.to_le_bytes());
        plain.extend_from_slice(pos.id.as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.prefix);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(channel_key.as_bytes()),
                &mut plain,
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The position `token` holds, if it was sealed by this key for this
    /// channel key; `None` for anything else.
    pub fn open(&self, channel_key: &str, token: &str) -> Option<Position> {
        if token.len() > 2 * (MAX_ID_BYTES + 64) {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(channel_key.as_bytes()), &mut sealed)
            .ok()?;
        let (head, id) = plain.split_at_checked(4)?;
        Some(Position {
            id: std::str::from_utf8(id).ok()?.into(),
            index: u16::from_le_bytes([head[0], head[1]]),
            total: u16::from_le_bytes([head[2], head[3]]),
        })
    }
}

/// A downstream id split into its `<epoch>-<seq>` part and its sealed
/// position, if it has one (`<epoch>-<seq>.<token>`).
pub fn split_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once('.') {
        Some((head, token)) => (head, Some(token)),
        None => (id, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(id: &str, index: u16, total: u16) -> Position {
        Position {
            id: id.into(),
            index,
            total,
        }
    }

    #[test]
    fn sealed_positions_open_only_for_their_channel_and_key() {
        let k = ResumeKey::from_secret(&[7u8; 32]).expect("key");
        let p = pos("ev-41", 0, 2);
        let t = k.seal("alice", &p).expect("sealed");
        assert!(!t.contains("ev-4"), "a position cannot be read: {t}");
        assert_eq!(k.open("alice", &t), Some(p.clone()));
        assert_eq!(k.open("bob", &t), None, "bound to the channel key");
        let other = ResumeKey::from_secret(&[8u8; 32]).expect("key");
        assert_eq!(other.open("alice", &t), None, "bound to the key");
        // Two seals of one position differ (unique nonces) and both open.
        let t2 = k.seal("alice", &p).expect("sealed");
        assert_ne!(t, t2);
        assert_eq!(k.open("alice", &t2), Some(p));
        // Tampering, truncation and junk are refused, never a panic.
        let mut bad = t.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            k.open("alice", &String::from_utf8(bad).expect("ascii")),
            None
        );
        for junk in ["", "x", "!!!!", &t[..10], &"A".repeat(5000)] {
            assert_eq!(k.open("alice", junk), None, "{junk:?}");
        }
        assert!(k.seal("alice", &pos(&"x".repeat(200), 0, 1)).is_none());
        assert!(ResumeKey::from_secret(b"short").is_err());
    }

    #[test]
    fn resume_points() {
        // The last trigger of an event: resume after it.
        assert_eq!(pos("e9", 1, 2).resume_point().as_deref(), Some("e9"));
        // Part of an event: nothing exact to resume from.
        assert_eq!(pos("e9", 0, 2).resume_point(), None);
        assert_eq!(split_id("ab-3.tok"), ("ab-3", Some("tok")));
        assert_eq!(split_id("ab-3"), ("ab-3", None));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever a client puts after the `.` of an id, opening it never
        /// panics, and only what this key sealed for this channel opens.
        #[test]
        fn any_token_opens_to_nothing_or_to_what_was_sealed(
            junk in ".{0,300}",
            id in "[ -~]{1,60}",
            index in 0u16..4,
        ) {
            let k = ResumeKey::from_secret(&[3u8; 32]).expect("key");
            proptest::prop_assert_eq!(k.open("alice", &junk), None);
            let p = pos(&id, index, 4);
            let t = k.seal("alice", &p).expect("sealed");
            proptest::prop_assert_eq!(k.open("alice", &t), Some(p));
            // Any one character changed: refused.
            let mut bytes = t.clone().into_bytes();
            let at = usize::from(index) % bytes.len();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).expect("ascii");
            proptest::prop_assert_eq!(k.open("alice", &changed), None);
        }
    }
}
