//! Trigger: what travels from translate to the tabs — an event name and a
//! short data string — and the rules that keep both safe to frame. A leaf:
//! it must never depend on another module of this crate.

/// Trigger every tab receives when it must re-render from scratch.
pub const RESYNC: &str = "resync";
/// Trigger sent before a user's streams are closed because the backend refused
/// every credential ssemux holds for them.
pub const LOGOUT: &str = "logout";
/// What an SSE event without an `event:` field is called; a passed-through
/// event of this name is sent without one.
pub const UNNAMED: &str = "message";
/// Longest `data` a trigger carries; longer upstream values are cut (at a char
/// boundary) because a trigger is a hint, not a payload.
pub const MAX_DATA_BYTES: usize = 512;

/// One event for the tabs: an htmx trigger (a safe name and a short data
/// string), or an upstream event passed through (its name and data as they
/// came; the encoder frames each line of the data as its own `data:` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// Event name: for a trigger only `[A-Za-z0-9._:-]`; passed through, any
    /// name the SSE parser accepted. `message` is sent without `event:`.
    pub name: String,
    /// A trigger's is never empty and never contains CR, LF or NUL; a passed
    /// event's is what the upstream sent.
    pub data: String,
    /// Idempotent: of several with the same name and data that a tab takes
    /// at once, only the last is sent (never set on a passed event).
    pub coalesce: bool,
}

impl Trigger {
    /// A trigger with fixed data.
    pub fn new(name: &str, data: &str) -> Trigger {
        Trigger {
            name: name.to_string(),
            data: clean_data(data),
            coalesce: false,
        }
    }

    /// The same trigger, idempotent (see [`Trigger::coalesce`]).
    pub fn coalesced(self) -> Trigger {
        Trigger {
            coalesce: true,
            ..self
        }
    }

    /// An upstream event passed through as it came.
    pub fn pass(name: &str, data: &str) -> Trigger {
        Trigger {
            name: name.to_string(),
            data: data.to_string(),
            coalesce: false,
        }
    }

    /// The `resync` trigger.
    pub fn resync() -> Trigger {
        Trigger::new(RESYNC, "1")
    }
}

/// Whether `name` is a safe trigger name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Make upstream text safe and useful as trigger data: control characters
/// (CR, LF, NUL, …) become spaces so the value stays on one `data:` line,
/// length is capped, and empty becomes `1` because browsers drop events whose
/// data is empty.
pub fn clean_data(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_DATA_BYTES));
    for c in raw.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_DATA_BYTES {
            break;
        }
        out.push(c);
    }
    if out.trim().is_empty() {
        "1".to_string()
    } else {
        out
    }
}
