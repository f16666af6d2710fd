//! Cookie handling on arbitrary header bytes: joining several `Cookie`
//! headers, looking a cookie up and counting a name never panic, a value
//! found is always a piece of what the client sent, and a name found is
//! counted.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use ssemux_gateway::{cookie_count, cookie_header, cookie_value};

fuzz_target!(|input: (Vec<Vec<u8>>, String)| {
    let (values, name) = input;
    let mut headers = HeaderMap::new();
    for v in values.iter().take(16) {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(header::COOKIE, v);
        }
    }
    let Some(joined) = cookie_header(&headers) else {
        return;
    };
    assert!(!joined.is_empty());
    // Whatever was joined is still a valid header value to forward.
    assert!(HeaderValue::from_str(&joined).is_ok(), "{joined:?}");
    for n in [name.as_str(), "session", ""] {
        let count = cookie_count(&joined, n);
        if let Some(v) = cookie_value(&joined, n) {
            assert!(joined.contains(v));
            assert!(!v.contains(';'));
            // Found means named at least once (the doubled-session check).
            assert!(count >= 1, "{joined:?} {n:?}");
        }
        assert!(count <= joined.matches(';').count() + 1);
    }
});
