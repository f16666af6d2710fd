//! Pass-through payload: the 1 KiB JSON event the pass-through fan-out
//! emits upstream, and the byte-for-byte check every tab runs on it.
//!
//! Owns the payload's bytes and ssemux's pass-through rule file. The emitter
//! and the tabs build the payload with the same function, so a tab knows
//! exactly which bytes it must receive from its user and timestamp alone. It
//! must never produce a CR, LF or TAB (the mock's batch format is one event
//! per line, fields split by TAB) and must stay valid JSON.

/// The upstream event name; ssemux passes it through unchanged.
pub const EVENT: &str = "bench-pass";

/// Bytes of data per event, exactly.
pub const DATA_BYTES: usize = 1024;

/// The ssemux configuration of the pass-through fan-out: one rule passing
/// every upstream event's name and data through as it came.
pub const RULES_TOML: &str = "# Written by ssemux-bench for the pass-through fan-out.\n\
    [[translate.rules]]\nevent = \"*\"\npass = true\n";

/// Repeated to fill the payload: multi-byte UTF-8, JSON escapes and text an
/// SSE or HTML encoder might be tempted to touch, none of it CR, LF or TAB.
const PATTERN: &str = r#"é漢🙂 \"quoted\" back\\slash \/ <b>&amp;</b> data: id: \n\t\u00e9 ~ "#;

const PREFIX: &[u8] = br#"{"ts":"#;

/// Replace `buf` with the payload of `user`'s event stamped `ts` (µs):
/// `{"ts":<ts>,"user":"user<user>","pad":"<pattern…>"}`, [`DATA_BYTES`] long.
pub fn write_data(buf: &mut Vec<u8>, user: usize, ts: u64) {
    use std::io::Write as _;
    buf.clear();
    let _ = write!(buf, r#"{{"ts":{ts},"user":"user{user}","pad":""#);
    while buf.len() + PATTERN.len() + 2 <= DATA_BYTES {
        buf.extend_from_slice(PATTERN.as_bytes());
    }
    buf.resize(DATA_BYTES - 2, b'.');
    buf.extend_from_slice(br#""}"#);
}

/// The timestamp a payload claims, if it looks like one of ours.
pub fn timestamp(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(PREFIX)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Whether this looks like a payload of ours at all (right or wrong).
pub fn looks_like(data: &[u8]) -> bool {
    data.starts_with(PREFIX)
}

/// The timestamp of `data` if it is, byte for byte, the payload `user`
/// was sent at that timestamp; `scratch` is reused between calls.
pub fn check(data: &[u8], user: usize, scratch: &mut Vec<u8>) -> Option<u64> {
    let ts = timestamp(data)?;
    write_data(scratch, user, ts);
    (scratch.as_slice() == data).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_exact_json_on_one_line() {
        let mut buf = Vec::new();
        for (user, ts) in [(0, 0), (7, 1_764_403_210_123_456), (199_999, u64::MAX)] {
            write_data(&mut buf, user, ts);
            assert_eq!(buf.len(), DATA_BYTES);
            assert!(!buf.iter().any(|b| matches!(b, b'\r' | b'\n' | b'\t')));
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
            assert_eq!(v["ts"].as_u64(), Some(ts));
            assert_eq!(v["user"], format!("user{user}"));
            assert!(v["pad"].as_str().is_some_and(|p| p.contains("漢")));
            assert_eq!(timestamp(&buf), Some(ts));
        }
    }

    #[test]
    fn check_wants_every_byte() {
        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
        write_data(&mut buf, 42, 123_456);
        assert_eq!(check(&buf, 42, &mut scratch), Some(123_456));
        // Another user's event, one byte changed, one byte short.
        assert_eq!(check(&buf, 41, &mut scratch), None);
        let mut bad = buf.clone();
        bad[600] ^= 1;
        assert_eq!(check(&bad, 42, &mut scratch), None);
        assert_eq!(check(&buf[..buf.len() - 1], 42, &mut scratch), None);
        assert!(looks_like(&bad));
        assert!(!looks_like(b"123456"));
        assert_eq!(timestamp(b"123456"), None);
    }
}
