//! Auth: a request's credential → identity. Where the credential is found
//! and how it is shown to the backend is `credential`'s; who it belongs to
//! is decided by the configured mode — asking the backend (`GET me_path`,
//! the answer cached briefly, one call per credential however many tabs ask
//! at once), verifying a JWT locally (`jwt`), or deferring to the backend's
//! answer to the stream itself (`upstream`: the identity is a keyed hash of
//! the credential). Owns the identity cache. It never logs a credential and
//! never creates streams.

use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::jwt::{JwtError, JwtVerifier};
use crate::backend::BackendClient;
use crate::body::{self, Body};
use crate::config::{AuthConfig, IdentityMode, RedirectMeans};
use crate::cookie::cookie_value;
use crate::credential::{Credential, Place};
use crate::metrics::{AuthResult, Metrics};
use crate::upstream::connector::CredentialCheck;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Largest `/me` answer read.
const MAX_ME_BYTES: usize = 16 * 1024;
/// Longest user id accepted from the backend.
const MAX_USER_BYTES: usize = 256;

/// Who a request belongs to. `Debug` shows the user and where the
/// credential was, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The backend's user id (`upstream` mode: a keyed hash of the credential).
    pub user: String,
    /// The credential, to present upstream.
    pub credential: Credential,
    /// The session the request belongs to: the session cookie's value if
    /// present, else the credential. Used as the tab key when the page sends
    /// no tab id.
    pub session: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// Why a request has no identity.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credential, or the backend said 401/403, or redirected to a login
    /// page (whose `Location` is kept, for the page to follow), or the token
    /// did not verify.
    #[error("not authenticated")]
    Unauthenticated(Option<HeaderValue>),
    /// The backend could not be asked (down, timeout, 5xx).
    #[error("identity service unavailable: {0}")]
    Unavailable(String),
    /// The backend answered 2xx, but not with the identity JSON — typically
    /// an HTML login page from a framework's default for logged-out users.
    #[error("identity endpoint gave no identity: {0}")]
    BadAnswer(String),
}

/// What the identity endpoint said for one credential.
#[derive(Clone)]
enum Known {
    User(String),
    /// Not logged in; the login page a redirect named, if any.
    Refused(Option<HeaderValue>),
}

struct Cached {
    known: Known,
    expires: Instant,
}

impl Cached {
    /// What this entry costs, roughly: key, entry, the strings it holds.
    fn bytes(&self) -> usize {
        let held = match &self.known {
            Known::User(u) => u.len(),
            Known::Refused(l) => l.as_ref().map_or(0, HeaderValue::len),
        };
        std::mem::size_of::<CacheKey>() + std::mem::size_of::<Cached>() + held + ENTRY_OVERHEAD
    }
}

/// The cache key: a SHA-256 of where the credential was found and its value.
/// A client choosing 16 KiB cookies pins 32 bytes per entry, not 16 KiB, and
/// the key never holds the credential itself.
type CacheKey = [u8; 32];

/// Map bookkeeping per entry, as counted against `auth.cache_max_bytes`.
const ENTRY_OVERHEAD: usize = 32;

fn cache_key(cred: &Credential) -> CacheKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(cred.place().to_string().as_bytes());
    ctx.update(&[0]);
    ctx.update(cred.value().as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// One identity call in flight, shared by every request with its credential.
type InFlight = Arc<OnceCell<Result<Known, AuthError>>>;

/// Drops a request's entry from the in-flight map when it is done or
/// cancelled (only if the entry is still this request's call).
struct InFlightGuard<'a> {
    map: &'a DashMap<CacheKey, InFlight>,
    key: CacheKey,
    cell: InFlight,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        // Waiters that hold the cell still get its answer; a request
        // arriving later finds the cache, or asks anew.
        self.map
            .remove_if(&self.key, |_, c| Arc::ptr_eq(c, &self.cell));
    }
}

/// Most often a bad identity answer is logged at WARN; the rest go to debug.
const BAD_ANSWER_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The identity lookup with its cache.
pub struct Auth {
    client: BackendClient,
    me_url: Uri,
    settings: AuthConfig,
    /// `mode = "jwt"`: the verifier.
    jwt: Option<JwtVerifier>,
    /// `mode = "upstream"`: the key of the credential hash, random per process.
    hash_key: ring::hmac::Key,
    cache: DashMap<CacheKey, Cached>,
    /// Identity calls under way, one per credential (single flight).
    in_flight: DashMap<CacheKey, InFlight>,
    /// What the cache holds, by [`Cached::bytes`].
    cache_bytes: std::sync::atomic::AtomicUsize,
    /// When expired entries are next dropped.
    next_sweep: std::sync::Mutex<Instant>,
    metrics: Metrics,
    /// When a bad identity answer was last logged at WARN.
    bad_answer_logged: std::sync::Mutex<Option<Instant>>,
}

impl Auth {
    /// `me_url` is the backend's identity endpoint (`auth.me_path`).
    pub fn new(client: BackendClient, me_url: Uri, settings: AuthConfig, metrics: Metrics) -> Self {
        let mut seed = [0u8; 32];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
            // No OS randomness: still unique per process, not secret.
            seed = std::array::from_fn(|_| fastrand::u8(..));
        }
        Auth {
            client,
            me_url,
            settings,
            jwt: None,
            hash_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed),
            cache: DashMap::new(),
            in_flight: DashMap::new(),
            cache_bytes: std::sync::atomic::AtomicUsize::new(0),
            next_sweep: std::sync::Mutex::new(Instant::now()),
            metrics,
            bad_answer_logged: std::sync::Mutex::new(None),
        }
    }

    /// Verify credentials as JWTs with `v` (`auth.mode = "jwt"`).
    pub fn with_jwt(mut self, v: JwtVerifier) -> Self {
        self.jwt = Some(v);
        self
    }

    /// The request's identity, or the answer a request without one gets:
    /// `401`, or `503` with `Retry-After` when the backend cannot be asked
    /// (a backend outage must not look like a logout).
    pub async fn identify_or_refuse(
        &self,
        headers: &HeaderMap,
        query: &str,
    ) -> Result<Identity, Response<Body>> {
        self.identify(headers, query).await.map_err(|e| {
            match e {
                AuthError::Unauthenticated(login) => {
                    let mut r = body::text(StatusCode::UNAUTHORIZED, "not authenticated");
                    if let Some(l) = login {
                        r.headers_mut().insert(header::LOCATION, l);
                    }
                    return r;
                }
                AuthError::Unavailable(why) => tracing::warn!(%why, "identity lookup failed"),
                AuthError::BadAnswer(why) => self.log_bad_answer(&why),
            }
            let mut r = body::text(StatusCode::SERVICE_UNAVAILABLE, "backend unavailable");
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.settings.retry_after_secs),
            );
            r
        })
    }

    /// Identify the request by its credential.
    pub async fn identify(&self, headers: &HeaderMap, query: &str) -> Result<Identity, AuthError> {
        let mut cached = false;
        let r = self.lookup(headers, query, &mut cached).await;
        let result = match &r {
            Ok(_) => AuthResult::Ok,
            Err(AuthError::Unauthenticated(_)) => AuthResult::Unauthenticated,
            Err(AuthError::Unavailable(_)) => AuthResult::Unavailable,
            Err(AuthError::BadAnswer(_)) => AuthResult::BadAnswer,
        };
        self.metrics.auth(result, cached);
        r
    }

    async fn lookup(
        &self,
        headers: &HeaderMap,
        query: &str,
        cached: &mut bool,
    ) -> Result<Identity, AuthError> {
        let credential = self
            .settings
            .credentials
            .find(headers, query)
            .map_err(|_| AuthError::Unauthenticated(None))?
            .ok_or(AuthError::Unauthenticated(None))?;
        let session = match credential.place() {
            Place::Cookies => cookie_value(credential.value(), &self.settings.session_cookie)
                .unwrap_or(credential.value()),
            _ => credential.value(),
        }
        .to_string();
        let key = cache_key(&credential);
        let now = Instant::now();
        if let Some(c) = self.cache.get(&key).filter(|c| c.expires > now) {
            *cached = true;
            let known = c.known.clone();
            drop(c);
            return Self::answer(known, credential, session);
        }
        let known = match self.settings.mode {
            IdentityMode::Introspect => self.ask_once(key, &credential).await?,
            IdentityMode::Jwt => self.verify(&credential).await?,
            // The stream's own answer decides; a refusal it gave is cached
            // above (see `refused_upstream`).
            IdentityMode::Upstream => Known::User(self.keyed(&credential)),
        };
        Self::answer(known, credential, session)
    }

    /// The identity of `upstream` mode: a keyed hash of the credential's
    /// value, so tabs with one credential share one stream — wherever they
    /// put it (`?sessionId=` or `X-Session-Id`) — and the id names nobody.
    fn keyed(&self, cred: &Credential) -> String {
        let tag = ring::hmac::sign(&self.hash_key, cred.value().as_bytes());
        let hex: String = tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("cred-{hex}")
    }

    async fn verify(&self, cred: &Credential) -> Result<Known, AuthError> {
        let Some(v) = &self.jwt else {
            return Err(AuthError::Unavailable("no JWT verifier configured".into()));
        };
        match v.verify(cred.value()).await {
            Ok(user) => Ok(Known::User(user)),
            Err(JwtError::Refused(why)) => {
                tracing::debug!(%why, "token refused");
                Ok(Known::Refused(None))
            }
            Err(JwtError::Unavailable(why)) => Err(AuthError::Unavailable(why)),
        }
    }

    /// Ask the backend about `cred`, once however many requests want it at
    /// the same time: the first asks, the others wait for its answer (if the
    /// first gives up, the next waiting one asks).
    async fn ask_once(&self, key: CacheKey, cred: &Credential) -> Result<Known, AuthError> {
        let cell = self.in_flight.entry(key).or_default().clone();
        // Removed however this ends, a tab that went away included: a
        // cancelled call must not leave its entry behind.
        let _gone = InFlightGuard {
            map: &self.in_flight,
            key,
            cell: cell.clone(),
        };
        cell.get_or_init(|| async {
            let r = self.ask_backend(cred).await;
            if let Ok(known) = &r {
                self.remember(key, known.clone());
            }
            r
        })
        .await
        .clone()
    }

    /// The backend's stream refused `cred` (`upstream` mode, or every
    /// credential of a new channel refused): later requests with it are
    /// refused without a stream, for `negative_ttl`.
    pub fn refused_upstream(&self, cred: &Credential) {
        self.remember(cache_key(cred), Known::Refused(None));
    }

    fn answer(
        known: Known,
        credential: Credential,
        session: String,
    ) -> Result<Identity, AuthError> {
        match known {
            Known::User(user) => Ok(Identity {
                user,
                credential,
                session,
            }),
            Known::Refused(login) => Err(AuthError::Unauthenticated(login)),
        }
    }

    /// A framework's login page where JSON was expected is a configuration
    /// mistake, not an outage: say so once a minute, with the likely fix,
    /// instead of a WARN per reconnecting tab.
    fn log_bad_answer(&self, why: &str) {
        let now = Instant::now();
        let mut last = self
            .bad_answer_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < BAD_ANSWER_LOG_EVERY) {
            tracing::debug!(%why, "identity endpoint gave no identity");
            return;
        }
        *last = Some(now);
        tracing::warn!(
            %why,
            hint = "the identity endpoint answered 2xx without the JSON identity; if it serves an HTML page, point auth.me_path at an endpoint that answers JSON (ssemux sends Accept: application/json)",
            "identity endpoint gave no identity (logged at most once a minute)"
        );
    }

    /// Cache an answer. Expired entries are dropped as they age (a sweep at
    /// most every `negative_ttl`), so refused junk credentials do not stay;
    /// past `cache_max_entries` or `cache_max_bytes` the cache starts over
    /// rather than grow.
    fn remember(&self, key: CacheKey, known: Known) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        let expires = now
            + match known {
                Known::User(_) => self.settings.cache_ttl,
                Known::Refused(_) => self.settings.negative_ttl,
            };
        let due = {
            let mut next = self.next_sweep.lock().unwrap_or_else(|p| p.into_inner());
            let due = now >= *next;
            if due {
                *next = now
                    + self
                        .settings
                        .negative_ttl
                        .max(std::time::Duration::from_millis(100));
            }
            due
        };
        let full = self.cache.len() >= self.settings.cache_max_entries
            || self.cache_bytes.load(Relaxed) >= self.settings.cache_max_bytes;
        if due || full {
            self.cache.retain(|_, c| c.expires > now);
            let mut held: usize = self.cache.iter().map(|c| c.bytes()).sum();
            if self.cache.len() >= self.settings.cache_max_entries
                || held >= self.settings.cache_max_bytes
            {
                // Still full of live entries: start over rather than grow.
                self.cache.clear();
                held = 0;
            }
            self.cache_bytes.store(held, Relaxed);
        }
        let entry = Cached { known, expires };
        self.cache_bytes.fetch_add(entry.bytes(), Relaxed);
        if let Some(old) = self.cache.insert(key, entry) {
            let gone = old.bytes();
            let _ = self
                .cache_bytes
                .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(gone)));
        }
    }

    /// Entries and bytes the cache holds now (tests, sizing).
    pub fn cache_size(&self) -> (usize, usize) {
        (
            self.cache.len(),
            self.cache_bytes.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// What the backend says of `cred`; `Err` if it could not tell.
    async fn ask_backend(&self, cred: &Credential) -> Result<Known, AuthError> {
        let shown = cred.present(&self.settings.present_as);
        let url = shown
            .uri(&self.me_url)
            .ok_or(AuthError::Unauthenticated(None))?;
        let req = shown
            .header_into(Request::get(url).header(header::ACCEPT, "application/json"))
            .body(body::empty())
            .map_err(|_| AuthError::Unauthenticated(None))?;
        let resp = tokio::time::timeout(self.settings.timeout, self.client.request(req))
            .await
            .map_err(|_| AuthError::Unavailable("timeout".into()))?
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(Known::Refused(None)),
            // Web frameworks send a logged-out browser to their login page.
            s if s.is_redirection() && self.settings.redirect_means == RedirectMeans::LoggedOut => {
                let login = resp.headers().get(header::LOCATION).cloned();
                return Ok(Known::Refused(login));
            }
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
            .map_err(|e| AuthError::BadAnswer(format!("identity is not JSON: {e}")))?;
        let field = &self.settings.id_field;
        let user = match v.get(field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::BadAnswer(format!("identity has no `{field}`"))),
        };
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(AuthError::BadAnswer(
                "identity `id` empty or too long".into(),
            ));
        }
        // An id reaches logs, metrics-free but verbatim: no control bytes.
        if user.chars().any(char::is_control) {
            return Err(AuthError::BadAnswer(
                "identity `id` has control characters".into(),
            ));
        }
        Ok(Known::User(user))
    }
}

/// The identity lookup as the upstream's credential re-check: asks the
/// backend (or verifies the token) again, bypassing the cache, and caches
/// what the backend says, so a refused session is refused to new tabs too.
pub struct Recheck(pub Arc<Auth>);

impl CredentialCheck for Recheck {
    fn still_valid(&self, user: &str, cred: &Credential) -> BoxFuture<'static, Option<bool>> {
        let this = self.0.clone();
        let (user, cred) = (user.to_string(), cred.clone());
        Box::pin(async move {
            let known = match this.settings.mode {
                IdentityMode::Introspect => {
                    let known = this.ask_backend(&cred).await.ok()?;
                    this.remember(cache_key(&cred), known.clone());
                    known
                }
                IdentityMode::Jwt => this.verify(&cred).await.ok()?,
                IdentityMode::Upstream => return None,
            };
            Some(matches!(&known, Known::User(u) if *u == user))
        })
    }
}
