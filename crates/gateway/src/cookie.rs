//! Cookies: a request's `Cookie` header fields as the one value every part
//! uses — what is authenticated, what is forwarded, what keys a tab — and one
//! cookie's value in it. HTTP/2 clients (and some HTTP/1.1 ones) send
//! several `Cookie` fields; the backend may read only the first, so ssemux
//! joins them once and forwards exactly what it authenticated. Pure: never
//! logs a value.

use http::HeaderMap;
use http::header;

/// Longest `Cookie` header (all values joined) ssemux will forward to the
/// backend for introspection; larger is refused without asking.
pub const MAX_COOKIE_BYTES: usize = 16 * 1024;

/// All `Cookie` headers of a request joined as one value (HTTP/2 clients send
/// one header per cookie).
pub fn cookie_header(headers: &HeaderMap) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(s);
    }
    (!out.is_empty()).then_some(out)
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// How many cookies in `cookie_header` are named `name`. Two session
/// cookies make the request ambiguous: ssemux and the backend could each
/// pick a different one, and so a different user.
pub fn cookie_count(cookie_header: &str, name: &str) -> usize {
    cookie_header
        .split(';')
        .filter(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_join_and_names_count() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1".parse().expect("hv"));
        h.append(header::COOKIE, " session=x ".parse().expect("hv"));
        let joined = cookie_header(&h).expect("cookies");
        assert_eq!(joined, "a=1; session=x");
        assert_eq!(cookie_value(&joined, "session"), Some("x"));
        assert_eq!(cookie_count(&joined, "session"), 1);
        assert_eq!(cookie_count("session=a; x=1; session=b", "session"), 2);
        assert_eq!(cookie_count("sessionid=a", "session"), 0);
    }
}
