//! Credential: where a tab's credential is found in its request (all the
//! cookies, one cookie, a header, `Authorization: Bearer`, a query
//! parameter) and how it is presented to the backend (as it came, or in
//! another place the backend expects). Every part that sends a credential —
//! the identity call, the per-user stream, the watermark post — presents it
//! through here, so they cannot disagree. A leaf and pure: it never logs a
//! value, and [`Credential`]'s `Debug` never shows one.

use std::fmt;
use std::sync::Arc;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cookie::{cookie_header, cookie_value};

/// Longest credential accepted from a request, wherever it came from; larger
/// is refused without asking the backend.
pub const MAX_CREDENTIAL_BYTES: usize = crate::cookie::MAX_COOKIE_BYTES;

/// One place a credential can be: `cookies` (the whole `Cookie` header, as
/// posta-style session backends read it), `cookie:NAME`, `header:NAME`,
/// `bearer` (`Authorization: Bearer …`) or `query:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// Every cookie, joined into one `Cookie` header value.
    Cookies,
    /// The value of one cookie.
    Cookie(String),
    /// The value of one request header.
    Header(HeaderName),
    /// The token of `Authorization: Bearer <token>`.
    Bearer,
    /// The (percent-decoded) value of one query parameter.
    Query(String),
}

impl Place {
    /// Parse `cookies`, `cookie:NAME`, `header:NAME`, `bearer`, `query:NAME`.
    pub fn parse(s: &str) -> Result<Place, String> {
        let s = s.trim();
        let (kind, name) = match s.split_once(':') {
            Some((k, n)) => (k.trim(), Some(n.trim())),
            None => (s, None),
        };
        let named = |what: &str| -> Result<String, String> {
            match name {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()) => {
                    Ok(n.to_string())
                }
                _ => Err(format!("`{s}`: `{what}` needs a name, as in `{what}:NAME`")),
            }
        };
        match (kind, name) {
            ("cookies", None) => Ok(Place::Cookies),
            ("bearer", None) => Ok(Place::Bearer),
            ("cookie", _) => Ok(Place::Cookie(named("cookie")?)),
            ("query", _) => Ok(Place::Query(named("query")?)),
            ("header", _) => {
                let n = named("header")?;
                let h = HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("`{s}`: `{n}` is not a header name"))?;
                if h == header::COOKIE || h == header::AUTHORIZATION {
                    return Err(format!(
                        "`{s}`: use `cookies`/`cookie:NAME` or `bearer` for that header"
                    ));
                }
                Ok(Place::Header(h))
            }
            _ => Err(format!(
                "`{s}`: expected cookies, cookie:NAME, header:NAME, bearer or query:NAME"
            )),
        }
    }

    /// What a kind of place is called in metrics and logs (never a value).
    pub fn kind(&self) -> &'static str {
        match self {
            Place::Cookies | Place::Cookie(_) => "cookie",
            Place::Header(_) => "header",
            Place::Bearer => "bearer",
            Place::Query(_) => "query",
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Cookies => f.write_str("cookies"),
            Place::Cookie(n) => write!(f, "cookie:{n}"),
            Place::Header(n) => write!(f, "header:{n}"),
            Place::Bearer => f.write_str("bearer"),
            Place::Query(n) => write!(f, "query:{n}"),
        }
    }
}

/// Where credentials are looked for, in order (`auth.credentials`). Written
/// as one comma-separated string (so `--set` and the environment can set
/// it) or as a TOML array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources(pub Vec<Place>);

impl Default for Sources {
    fn default() -> Self {
        Sources(vec![Place::Cookies])
    }
}

impl Sources {
    /// Parse `"query:secret, header:X-Session-Id"`.
    pub fn parse(s: &str) -> Result<Sources, String> {
        let places = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Place::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if places.is_empty() {
            return Err("at least one credential source is needed".into());
        }
        Ok(Sources(places))
    }

    /// The first credential the request carries, in source order. `Err`
    /// when the first one found is larger than [`MAX_CREDENTIAL_BYTES`].
    pub fn find(&self, headers: &HeaderMap, query: &str) -> Result<Option<Credential>, TooLarge> {
        for place in &self.0 {
            let Some(value) = extract(place, headers, query) else {
                continue;
            };
            if value.len() > MAX_CREDENTIAL_BYTES {
                return Err(TooLarge);
            }
            let mut cred = Credential::new(place.clone(), value);
            if let Place::Query(n) = place {
                cred.raw = raw_query_value(query, n).map(Arc::from);
            }
            return Ok(Some(cred));
        }
        Ok(None)
    }

    /// Whether any source reads the query string.
    pub fn reads_query(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Place::Query(_)))
    }

    /// The query parameter names credentials are read from, to keep them out
    /// of anything logged or derived.
    pub fn query_names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Place::Query(n) => Some(n.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Serialize for Sources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            List(Vec<String>),
        }
        let text = match Raw::deserialize(d)? {
            Raw::One(s) => s,
            Raw::List(v) => v.join(","),
        };
        Sources::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How the backend is shown a credential (`auth.present_as`): where it was
/// found, or always in one place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Presentation {
    /// In the place it came from.
    #[default]
    AsReceived,
    /// Always in this place.
    In(Place),
}

impl Serialize for Presentation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Presentation::AsReceived => s.serialize_str("as-received"),
            Presentation::In(p) => s.serialize_str(&p.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Presentation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "as-received" {
            return Ok(Presentation::AsReceived);
        }
        Place::parse(&s)
            .map(Presentation::In)
            .map_err(serde::de::Error::custom)
    }
}

/// The credential was larger than [`MAX_CREDENTIAL_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("credential too large")]
pub struct TooLarge;

/// A tab's credential: where it was found and its value. Cheap to clone (the
/// value is shared); `Debug` shows the place only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    place: Place,
    value: Arc<str>,
    /// A query value as it was written (still percent-encoded): what a
    /// backend reading the same parameter is shown, so it decodes exactly
    /// what the browser sent (`+`, invalid escapes and all).
    raw: Option<Arc<str>>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credential({}, <{} bytes>)",
            self.place,
            self.value.len()
        )
    }
}

impl Credential {
    /// A credential found at `place`.
    pub fn new(place: Place, value: impl Into<Arc<str>>) -> Credential {
        Credential {
            place,
            value: value.into(),
            raw: None,
        }
    }

    /// A whole `Cookie` header value (the posta contract; tests).
    pub fn cookies(header: &str) -> Credential {
        Credential::new(Place::Cookies, header)
    }

    /// Where it was found.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// The secret itself. Callers present it through [`Credential::present`]
    /// or hash it; nothing logs it.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// How to show it to the backend under `how`: the header to send (if
    /// any) and the query parameter to append (if any).
    pub fn present(&self, how: &Presentation) -> Presented {
        let place = match how {
            Presentation::AsReceived => &self.place,
            Presentation::In(p) => p,
        };
        let v = self.value();
        let header = |name: HeaderName, text: String| {
            HeaderValue::from_str(&text).ok().map(|mut hv| {
                hv.set_sensitive(true);
                (name, hv)
            })
        };
        match place {
            Place::Cookies => Presented {
                header: header(header::COOKIE, v.to_string()),
                query: None,
            },
            Place::Cookie(n) => Presented {
                header: header(header::COOKIE, format!("{n}={v}")),
                query: None,
            },
            Place::Header(n) => Presented {
                header: header(n.clone(), v.to_string()),
                query: None,
            },
            Place::Bearer => Presented {
                header: header(header::AUTHORIZATION, format!("Bearer {v}")),
                query: None,
            },
            Place::Query(n) => {
                let raw = self
                    .raw
                    .as_deref()
                    .filter(|_| self.place == Place::Query(n.clone()));
                let value = raw.map_or_else(|| encode(v), str::to_string);
                Presented {
                    header: None,
                    query: Some(format!("{}={value}", encode(n))),
                }
            }
        }
    }
}

impl From<&str> for Credential {
    /// A whole `Cookie` header value.
    fn from(header: &str) -> Credential {
        Credential::cookies(header)
    }
}

impl From<&String> for Credential {
    fn from(header: &String) -> Credential {
        Credential::cookies(header)
    }
}

impl From<&Credential> for Credential {
    fn from(c: &Credential) -> Credential {
        c.clone()
    }
}

/// A credential as one request carries it to the backend. `Debug` names
/// the header or parameter, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Presented {
    /// A header to send (marked sensitive).
    pub header: Option<(HeaderName, HeaderValue)>,
    /// `name=value`, percent-encoded, to append to the query.
    pub query: Option<String>,
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = self.header.as_ref().map(|(n, _)| n.as_str());
        let query = self
            .query
            .as_deref()
            .map(|q| q.split_once('=').map_or(q, |(n, _)| n));
        f.debug_struct("Presented")
            .field("header", &header)
            .field("query", &query)
            .finish()
    }
}

impl Presented {
    /// `path_and_query` with the credential's query parameter appended.
    pub fn path(&self, path_and_query: &str) -> String {
        match &self.query {
            None => path_and_query.to_string(),
            Some(q) if path_and_query.contains('?') => format!("{path_and_query}&{q}"),
            Some(q) => format!("{path_and_query}?{q}"),
        }
    }
}

impl Presented {
    /// `url` with the credential's query parameter appended (`None` only if
    /// the result is not a URI, which an encoded parameter cannot cause).
    pub fn uri(&self, url: &http::Uri) -> Option<http::Uri> {
        if self.query.is_none() {
            return Some(url.clone());
        }
        let mut parts = url.clone().into_parts();
        let pq = parts.path_and_query.as_ref().map_or("/", |p| p.as_str());
        parts.path_and_query = Some(self.path(pq).parse().ok()?);
        http::Uri::from_parts(parts).ok()
    }

    /// Put the credential on a request being built.
    pub fn header_into(&self, b: http::request::Builder) -> http::request::Builder {
        match &self.header {
            Some((n, v)) => b.header(n, v),
            None => b,
        }
    }
}

fn extract(place: &Place, headers: &HeaderMap, query: &str) -> Option<String> {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match place {
        Place::Cookies => cookie_header(headers),
        Place::Cookie(n) => {
            let all = cookie_header(headers)?;
            // Two cookies of the name: ssemux and the backend could pick
            // different ones (cookie tossing), so neither is taken.
            if crate::cookie::cookie_count(&all, n) > 1 {
                return None;
            }
            cookie_value(&all, n).and_then(nonempty)
        }
        Place::Header(n) => {
            // Two values would leave ssemux and the backend free to pick
            // different ones: neither is taken.
            let mut all = headers.get_all(n).iter();
            let v = all.next()?;
            if all.next().is_some() {
                return None;
            }
            v.to_str().ok().map(str::trim).and_then(nonempty)
        }
        Place::Bearer => {
            let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .and_then(nonempty)
        }
        Place::Query(n) => {
            let mut found = query_values(query, n);
            let v = found.next()?;
            if found.next().is_some() {
                return None;
            }
            nonempty(&v)
        }
    }
}

/// The one value of query parameter `name`, as written.
fn raw_query_value<'a>(query: &'a str, name: &'a str) -> Option<&'a str> {
    let mut found = raw_query_values(query, name);
    let v = found.next()?;
    // Only characters a request target may carry, or it is re-encoded.
    let safe = v.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    (found.next().is_none() && safe).then_some(v)
}

/// Every percent-decoded value of query parameter `name`.
pub fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    raw_query_values(query, name).map(decode)
}

/// Every value of query parameter `name` (matched decoded), as written.
fn raw_query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k) == name).then_some(v)
    })
}

/// Percent-decode (`+` stays `+`: EventSource URLs are not forms); invalid
/// escapes and non-UTF-8 results are kept as they were written.
pub fn decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn places_parse_and_print_back() {
        for s in [
            "cookies",
            "cookie:session",
            "header:x-session-id",
            "bearer",
            "query:secret",
        ] {
            assert_eq!(Place::parse(s).expect(s).to_string(), s);
        }
        for bad in [
            "",
            "cookie",
            "query:",
            "header:bad name",
            "header:cookie",
            "token",
            "bearer:x",
        ] {
            assert!(Place::parse(bad).is_err(), "{bad:?}");
        }
        let s = Sources::parse("query:secret, header:X-Session-Id").expect("sources");
        assert_eq!(s.to_string(), "query:secret, header:x-session-id");
        assert!(Sources::parse(" , ").is_err());
    }

    #[test]
    fn the_first_source_present_wins() {
        let s = Sources::parse("query:sessionId, header:X-Session-Id, bearer").expect("sources");
        let h = headers(&[("x-session-id", "hdr"), ("authorization", "Bearer tok")]);
        let c = s
            .find(&h, "a=1&sessionId=q%2Bv")
            .expect("size")
            .expect("found");
        assert_eq!((c.place().kind(), c.value()), ("query", "q+v"));
        let c = s.find(&h, "a=1").expect("size").expect("found");
        assert_eq!((c.place().kind(), c.value()), ("header", "hdr"));
        let h = headers(&[("authorization", "bearer   tok ")]);
        assert_eq!(s.find(&h, "").expect("size").expect("found").value(), "tok");
        let h = headers(&[("authorization", "Basic dXNlcg==")]);
        assert_eq!(s.find(&h, "").expect("size"), None);
        // Two values of one parameter or header: ambiguous, not taken.
        assert_eq!(
            s.find(&HeaderMap::new(), "sessionId=a&sessionId=b")
                .expect("size"),
            None
        );
        let h = headers(&[("x-session-id", "a"), ("x-session-id", "b")]);
        assert_eq!(s.find(&h, "").expect("size"), None);
        // A cookie named twice (cookie tossing): neither is taken.
        let c = Sources::parse("cookie:sid").expect("sources");
        let h = headers(&[("cookie", "sid=a; other=1"), ("cookie", "sid=b")]);
        assert_eq!(c.find(&h, "").expect("size"), None);
        let h = headers(&[("cookie", "sid=a; other=1")]);
        assert_eq!(c.find(&h, "").expect("size").expect("found").value(), "a");
        let big = format!("sessionId={}", "x".repeat(MAX_CREDENTIAL_BYTES + 1));
        assert_eq!(s.find(&HeaderMap::new(), &big), Err(TooLarge));
    }

    #[test]
    fn presented_as_received_or_mapped() {
        let c = Credential::new(Place::Query("secret".into()), "a b&c");
        let as_is = c.present(&Presentation::AsReceived);
        assert_eq!(as_is.header, None);
        assert_eq!(as_is.path("/events"), "/events?secret=a%20b%26c");
        assert_eq!(as_is.path("/e?x=1"), "/e?x=1&secret=a%20b%26c");
        // Found in a query, shown in one: exactly as it was written.
        let s = Sources::parse("query:secret").expect("sources");
        let found = s
            .find(&HeaderMap::new(), "secret=a+b%2Fc%zz")
            .expect("size")
            .expect("found");
        assert_eq!(found.value(), "a+b/c%zz");
        let shown = found.present(&Presentation::AsReceived);
        assert_eq!(shown.path("/e"), "/e?secret=a+b%2Fc%zz");
        let bearer = c.present(&Presentation::In(Place::Bearer));
        let (name, value) = bearer.header.expect("header");
        assert_eq!(name, header::AUTHORIZATION);
        assert_eq!(value, "Bearer a b&c");
        assert!(value.is_sensitive());
        let cookie = c.present(&Presentation::In(Place::Cookie("sid".into())));
        assert_eq!(cookie.header.expect("header").1, "sid=a b&c");
        // A value HTTP cannot carry in a header is left out, never sent broken.
        let c = Credential::new(Place::Query("t".into()), "qqq\r\nb");
        assert_eq!(c.present(&Presentation::In(Place::Bearer)).header, None);
        assert!(!format!("{c:?}").contains("qqq"), "{c:?}");
    }

    #[test]
    fn query_helpers() {
        assert_eq!(decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(encode("é/ x"), "%C3%A9%2F%20x");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Any query string: finding a credential never panics, and what
        /// is presented can never break the request line.
        #[test]
        fn any_query_is_safe_to_read_and_present(query in ".{0,200}") {
            let s = Sources::parse("query:t, bearer").expect("sources");
            if let Ok(Some(c)) = s.find(&HeaderMap::new(), &query) {
                let shown = c.present(&Presentation::AsReceived);
                let path = shown.path("/e");
                proptest::prop_assert!(path.bytes().all(|b| b.is_ascii_graphic()), "{}", path);
                let _ = c.present(&Presentation::In(Place::Bearer));
            }
            let _ = decode(&query);
        }
    }
}
