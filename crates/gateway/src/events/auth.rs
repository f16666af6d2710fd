//! Auth: request cookies → identity, by asking the backend (`GET /api/v1/me`
//! with the cookies forwarded) and caching the answer briefly. Owns the
//! identity cache. It never logs cookie values and never creates streams.

use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::backend::BackendClient;
use crate::body::{self, Body};
use crate::config::AuthConfig;
use crate::metrics::{AuthResult, Metrics};

/// Longest `Cookie` header (all values joined) ssemux will forward to the
/// backend for introspection; larger is refused without asking.
pub const MAX_COOKIE_BYTES: usize = 16 * 1024;
/// Largest `/me` answer read.
const MAX_ME_BYTES: usize = 16 * 1024;
/// Longest user id accepted from the backend.
const MAX_USER_BYTES: usize = 256;

/// Who a request belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The backend's user id.
    pub user: String,
    /// The request's cookies as one `Cookie` header value, to present upstream.
    pub cookie: String,
    /// The session the request belongs to: the session cookie's value if
    /// present, else the whole cookie header. Used as the tab key when the
    /// page sends no tab id.
    pub session: String,
}

/// Why a request has no identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No cookie, or the backend said 401/403.
    #[error("not authenticated")]
    Unauthenticated,
    /// The backend could not be asked (down, timeout, 5xx, bad answer).
    #[error("identity service unavailable: {0}")]
    Unavailable(String),
}

struct Cached {
    user: Option<String>,
    expires: Instant,
}

/// The identity lookup with its cache.
pub struct Auth {
    client: BackendClient,
    me_url: Uri,
    settings: AuthConfig,
    cache: DashMap<String, Cached>,
    metrics: Metrics,
}

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

impl Auth {
    /// `me_url` is the backend's introspection endpoint.
    /// `me_url` is the backend's identity endpoint (`auth.me_path`).
    pub fn new(client: BackendClient, me_url: Uri, settings: AuthConfig, metrics: Metrics) -> Self {
        Auth {
            client,
            me_url,
            settings,
            cache: DashMap::new(),
            metrics,
        }
    }

    /// The request's identity, or the answer a request without one gets:
    /// `401`, or `503` with `Retry-After` when the backend cannot be asked
    /// (a backend outage must not look like a logout).
    pub async fn identify_or_refuse(
        &self,
        headers: &HeaderMap,
    ) -> Result<Identity, Response<Body>> {
        self.identify(headers).await.map_err(|e| match e {
            AuthError::Unauthenticated => body::text(StatusCode::UNAUTHORIZED, "not authenticated"),
            AuthError::Unavailable(why) => {
                tracing::warn!(%why, "identity lookup failed");
                let mut r = body::text(StatusCode::SERVICE_UNAVAILABLE, "backend unavailable");
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(self.settings.retry_after_secs),
                );
                r
            }
        })
    }

    /// Identify the request by its cookies.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let mut cached = false;
        let r = self.lookup(headers, &mut cached).await;
        let result = match &r {
            Ok(_) => AuthResult::Ok,
            Err(AuthError::Unauthenticated) => AuthResult::Unauthenticated,
            Err(AuthError::Unavailable(_)) => AuthResult::Unavailable,
        };
        self.metrics.auth(result, cached);
        r
    }

    async fn lookup(&self, headers: &HeaderMap, cached: &mut bool) -> Result<Identity, AuthError> {
        let cookie = cookie_header(headers).ok_or(AuthError::Unauthenticated)?;
        if cookie.len() > MAX_COOKIE_BYTES {
            return Err(AuthError::Unauthenticated);
        }
        let session = cookie_value(&cookie, &self.settings.session_cookie)
            .unwrap_or(&cookie)
            .to_string();
        let now = Instant::now();
        if let Some(c) = self.cache.get(&cookie).filter(|c| c.expires > now) {
            *cached = true;
            return match &c.user {
                Some(user) => Ok(Identity {
                    user: user.clone(),
                    cookie: cookie.clone(),
                    session,
                }),
                None => Err(AuthError::Unauthenticated),
            };
        }
        let user = self.ask_backend(&cookie).await?;
        let ttl = if user.is_some() {
            self.settings.cache_ttl
        } else {
            self.settings.negative_ttl
        };
        self.remember(cookie.clone(), user.clone(), now + ttl);
        match user {
            Some(user) => Ok(Identity {
                user,
                cookie,
                session,
            }),
            None => Err(AuthError::Unauthenticated),
        }
    }

    fn remember(&self, cookie: String, user: Option<String>, expires: Instant) {
        if self.cache.len() >= self.settings.cache_max_entries {
            let now = Instant::now();
            self.cache.retain(|_, c| c.expires > now);
            if self.cache.len() >= self.settings.cache_max_entries {
                // Still full of live entries: start over rather than grow.
                self.cache.clear();
            }
        }
        self.cache.insert(cookie, Cached { user, expires });
    }

    /// `Ok(Some(user))`, `Ok(None)` for a refused cookie, `Err` if unknown.
    async fn ask_backend(&self, cookie: &str) -> Result<Option<String>, AuthError> {
        let req = Request::get(self.me_url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::COOKIE, cookie)
            .body(body::empty())
            .map_err(|_| AuthError::Unauthenticated)?;
        let resp = tokio::time::timeout(self.settings.timeout, self.client.request(req))
            .await
            .map_err(|_| AuthError::Unavailable("timeout".into()))?
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(None),
            s if s.is_success() => {}
            s => return Err(AuthError::Unavailable(format!("backend answered {s}"))),
        }
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ME_BYTES);
        let bytes = tokio::time::timeout(self.settings.timeout, limited.collect())
            .await
            .map_err(|_| AuthError::Unavailable("timeout reading identity".into()))?
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| AuthError::Unavailable(format!("identity is not JSON: {e}")))?;
        let user = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::Unavailable("identity has no `id`".into())),
        };
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(AuthError::Unavailable(
                "identity `id` empty or too long".into(),
            ));
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookies_join_and_lookup() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_header(&h), None);
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("session=abc; b=2"));
        let c = cookie_header(&h).expect("cookies");
        assert_eq!(c, "a=1; session=abc; b=2");
        assert_eq!(cookie_value(&c, "session"), Some("abc"));
        assert_eq!(cookie_value(&c, "b"), Some("2"));
        assert_eq!(cookie_value(&c, "sess"), None);
    }
}
