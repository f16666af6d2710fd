//! Small request-parsing helpers: url-encoded forms and queries, cookies.
//!
//! Owns byte-level parsing of untrusted input. It must never panic on any
//! input and never touch backend state; malformed input yields `None`.

use http::HeaderMap;
use http::header::COOKIE;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "session";

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
///
/// Returns `None` for a bad `%` escape or a result that is not UTF-8, so a
/// caller can answer 400 instead of guessing.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = hex_val(hex[0])?;
                let lo = hex_val(hex[1])?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses `a=1&b=2` (a form body or a query string) into decoded pairs.
///
/// Returns `None` if any component fails to decode; empty segments are skipped.
pub fn parse_pairs(s: &str) -> Option<Vec<(String, String)>> {
    s.split('&')
        .filter(|seg| !seg.is_empty())
        .map(|seg| {
            let (k, v) = seg.split_once('=').unwrap_or((seg, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// The first value for `key` among decoded pairs.
pub fn pair<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The value of cookie `name` across every `Cookie` header.
///
/// HTTP/2 clients may split cookies over several headers, so all are searched.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn decodes_forms() {
        let p = parse_pairs("user=alice&text=hi+there%21&x").unwrap();
        assert_eq!(pair(&p, "user"), Some("alice"));
        assert_eq!(pair(&p, "text"), Some("hi there!"));
        assert_eq!(pair(&p, "x"), Some(""));
        assert_eq!(pair(&p, "nope"), None);
    }

    #[test]
    fn rejects_bad_escapes_without_panicking() {
        for bad in ["%", "%4", "%zz", "a=%ff", "%e2%82"] {
            assert!(parse_pairs(bad).is_none(), "{bad:?}");
        }
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("€"));
    }

    #[test]
    fn finds_cookie_in_any_header() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(COOKIE, HeaderValue::from_static("session=abc"));
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
