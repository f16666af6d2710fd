//! Configuration: the one place that knows every key, its default and how it
//! is spelled in TOML, in `SSEMUX_*` environment variables and in `--set`
//! flags. Must never do I/O beyond reading the file it is given, and never
//! hold runtime state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::BackendUrl;
use crate::credential::{Place, Presentation, Sources};
use crate::upstream::translate::{self, Rules};

/// Why a configuration was refused. Always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax error or a key with the wrong type (the message names it).
    #[error("{0}")]
    Parse(String),
    /// An override (`--set` or env var) is malformed.
    #[error("override `{0}`: expected KEY=VALUE")]
    Override(String),
    /// A key is unknown.
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    /// A value is well-typed but not acceptable.
    #[error("key `{key}`: {why}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// Why the value is refused.
        why: String,
    },
}

/// Durations in the configuration are written `250ms`, `10s`, `5m` or `1h`
/// (a bare integer means seconds) and held as [`Duration`] once loaded.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parse `250ms`, `10s`, `5m`, `1h` or a bare number of seconds.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (use e.g. 250ms, 10s, 5m)"))?;
        match unit.trim() {
            "ms" => Ok(Duration::from_millis(n)),
            "" | "s" => Ok(Duration::from_secs(n)),
            "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
            "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
            other => Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            )),
        }
    }

    /// `10s`, or `250ms` when not whole seconds.
    pub fn format(d: Duration) -> String {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    /// For `#[serde(with = "duration")]`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// For `#[serde(with = "duration")]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl ConfigError {
    /// The dotted key the error is about, if it names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::UnknownKey(k) => Some(k),
            _ => None,
        }
    }
}

/// A value of the wrong type: serde's message ends with "in `hub.grace`";
/// made one line that names the key first, like every other error.
fn typed_error(msg: &str) -> ConfigError {
    let msg = msg.trim();
    match msg.rsplit_once("\nin `") {
        Some((why, key)) => ConfigError::Invalid {
            key: key.trim_end_matches('`').to_string(),
            why: why.trim().replace('\n', " "),
        },
        None => ConfigError::Parse(msg.replace('\n', " ")),
    }
}

/// Where a key's value came from, highest precedence first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `--set key=value` flag.
    Flag(String),
    /// An `SSEMUX_*` environment variable: its name and value.
    Env(String, String),
    /// The file, at this 1-based line.
    File(usize),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(s) => write!(f, "--set {s}"),
            Origin::Env(k, v) => write!(f, "{k}={v}"),
            Origin::File(line) => write!(f, "line {line}"),
        }
    }
}

/// Where `key` (dotted; `translate.rules[2]` for the third rule) was set:
/// a flag, the environment, the file's text, or nowhere (its default).
pub fn origin(
    key: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    overrides: &[String],
) -> Option<Origin> {
    for o in overrides.iter().rev() {
        if let Some((k, _)) = o.split_once('=')
            && k.trim() == key
        {
            return Some(Origin::Flag(o.clone()));
        }
    }
    let var = env_name(key);
    if let Some(v) = env.get(&var) {
        return Some(Origin::Env(var, v.clone()));
    }
    line_of(text, key).map(Origin::File)
}

/// The 1-based line of `key` in a TOML text: `k = …` under its table
/// header, or the header of the n-th `[[table]]` for `table[n]`.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (array, index) = match key.rsplit_once('[') {
        Some((a, rest)) => (Some(a), rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (None, None),
    };
    let mut table = String::new();
    let mut seen = 0usize;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix("[[").and_then(|h| h.split_once("]]")) {
            table = h.0.trim().to_string();
            if Some(table.as_str()) == array {
                if Some(seen) == index {
                    return Some(n + 1);
                }
                seen += 1;
            }
            continue;
        }
        if let Some(h) = line.strip_prefix('[').and_then(|h| h.split_once(']')) {
            table = h.0.trim().to_string();
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        let full = if table.is_empty() {
            k.to_string()
        } else {
            format!("{table}.{k}")
        };
        if array.is_none() && full == key {
            return Some(n + 1);
        }
    }
    None
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address ssemux listens on for browsers.
    pub listen: SocketAddr,
    /// Base URL of the backend (`http://` or `https://`), may carry a path prefix.
    pub backend: String,
    /// Path of the multiplexed SSE endpoint served by ssemux itself.
    pub events_path: String,
    /// Identity by introspection.
    pub auth: AuthConfig,
    /// The per-user upstream SSE connection.
    pub upstream: UpstreamConfig,
    /// The per-user channel and the tab streams.
    pub hub: HubConfig,
    /// Read-watermark handling.
    pub watermark: WatermarkConfig,
    /// Reverse proxy for every other request.
    pub proxy: ProxyConfig,
    /// Listener behaviour.
    pub server: ServerConfig,
    /// What keys a user's stream besides the identity: query parameters.
    pub key: KeyConfig,
    /// Upstream event → trigger rules.
    pub translate: Rules,
    /// Native TLS for the browser-facing listener.
    pub tls: TlsConfig,
    /// Metrics and health endpoints.
    pub admin: AdminConfig,
    /// Deprecated keys this configuration was given, each with what to
    /// write instead; the binary warns about them once logging is up.
    #[serde(skip)]
    pub deprecated: Vec<String>,
}

/// Keys no longer used: (key, what replaced it). Still accepted in the
/// file, the environment and `--set`, so an old configuration starts, with
/// a warning that the value is ignored.
const RETIRED: &[(&str, &str)] = &[
    (
        "hub.max_lag_frames",
        "a tab now lags by time and bytes: `hub.max_lag`, `hub.max_lag_bytes`",
    ),
    (
        "hub.broadcast_buffer",
        "a tab now lags by time and bytes: `hub.max_lag`, `hub.max_lag_bytes`",
    ),
];

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: "http://127.0.0.1:8081".into(),
            events_path: "/events".into(),
            auth: AuthConfig::default(),
            upstream: UpstreamConfig::default(),
            hub: HubConfig::default(),
            key: KeyConfig::default(),
            watermark: WatermarkConfig::default(),
            proxy: ProxyConfig::default(),
            server: ServerConfig::default(),
            translate: Rules::default(),
            tls: TlsConfig::default(),
            admin: AdminConfig::default(),
            deprecated: Vec::new(),
        }
    }
}

/// `[tls]`: with both set, the listener speaks https with ALPN h2 and
/// http/1.1; with neither, plain http/1.1 and h2c.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// `[admin]`: metrics and health endpoints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Separate plain-http listener for the admin paths. Unset → they are
    /// served on the main listener (before proxying).
    pub listen: Option<SocketAddr>,
    /// Prometheus text exposition.
    pub metrics_path: String,
    /// Liveness: `200` while the process runs.
    pub healthz_path: String,
    /// Readiness: `200` when listening and the backend answers; `503` while
    /// draining or when the backend is unreachable.
    pub readyz_path: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            metrics_path: "/metrics".into(),
            healthz_path: "/healthz".into(),
            readyz_path: "/readyz".into(),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Backend path that answers `200 {"id": "<user>"}` for a valid cookie.
    pub me_path: String,
    /// How long a positive answer is cached per cookie.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// How long a 401 is cached per cookie (keep short: a user may log in).
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    /// Upper bound on cached identities.
    pub cache_max_entries: usize,
    /// Upper bound on what the cache holds, in bytes (keys are hashes, so an
    /// entry is ~100 bytes plus the user id).
    pub cache_max_bytes: usize,
    /// Time allowed for the introspection call.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// `Retry-After` seconds sent with `503` when the backend is unreachable.
    pub retry_after_secs: u64,
    /// Name of the backend's session cookie: its value keys a tab that sends
    /// no tab id.
    pub session_cookie: String,
    /// What a `3xx` from `me_path` means: `logged-out` (a web framework
    /// sending a logged-out browser to its login page: `401` to the tab, with
    /// the redirect's `Location`) or `error` (`503`, like a backend fault).
    pub redirect_means: RedirectMeans,
    /// How often each distinct credential of a user's channel is asked about
    /// again (and on every upstream reconnect): a session revoked at the
    /// backend loses its tabs (`logout`) within this. `0s` = never.
    #[serde(with = "duration")]
    pub recheck_interval: Duration,
    /// How a tab's identity is decided: `introspect` (ask `me_path`, today's
    /// default), `jwt` (verify the credential locally as a JWT, see
    /// `[auth.jwt]`) or `upstream` (no identity call: tabs with the same
    /// credential share one stream, and the backend's answer to that stream
    /// decides — a `401`/`403` refuses the tab).
    pub mode: IdentityMode,
    /// Where a tab's credential is looked for, in order: `cookies` (the
    /// whole `Cookie` header), `cookie:NAME`, `header:NAME`, `bearer`,
    /// `query:NAME`. Comma-separated, or a TOML array.
    pub credentials: Sources,
    /// How the credential is shown to the backend (identity call, stream,
    /// watermark posts): `as-received`, or one place from the list above.
    pub present_as: Presentation,
    /// Field of the identity answer (`introspect`) that names the user.
    pub id_field: String,
    /// Local JWT verification (`mode = "jwt"`).
    pub jwt: JwtConfig,
}

/// `auth.mode`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// Ask the backend's identity endpoint.
    #[default]
    Introspect,
    /// Verify a JWT locally.
    Jwt,
    /// The upstream stream's own answer decides.
    Upstream,
}

/// `[auth.jwt]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`; tokens signed otherwise are refused.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret (file bytes, a trailing newline dropped).
    /// RS256/ES256: the PEM public key. Or use `jwks_file` / `jwks_path`.
    pub key_file: Option<PathBuf>,
    /// A JWKS document (keys picked by the token's `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Backend path serving a JWKS document, fetched at the first token and
    /// again (at most once a minute) when a token names an unknown `kid`.
    pub jwks_path: String,
    /// Required `iss`; empty = not checked.
    pub issuer: String,
    /// Required `aud` (one of the token's); empty = not checked.
    pub audience: String,
    /// Claim naming the user.
    pub identity_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "duration")]
    pub leeway: Duration,
}

/// `auth.jwt.algorithm`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            key_file: None,
            jwks_file: None,
            jwks_path: String::new(),
            issuer: String::new(),
            audience: String::new(),
            identity_claim: "sub".into(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// `[key]`: a user's stream is keyed by identity plus these query
/// parameters of the tab's request (SyncKit's `app_id`): tabs that differ in
/// one never share a stream. Each fills `{name}` in `upstream.events_path`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// The parameters (`[[key.params]]`).
    pub params: Vec<KeyParam>,
}

/// One query parameter of the multiplex key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyParam {
    /// Query parameter name.
    pub name: String,
    /// The whole value must match (anchored). Unset: letters, digits and
    /// `._~-` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<KeyPattern>,
    /// Longest value accepted, in bytes.
    #[serde(default = "KeyParam::default_max_len")]
    pub max_len: usize,
    /// A tab without it gets `400`; when not required it is keyed as empty.
    #[serde(default = "KeyParam::default_required")]
    pub required: bool,
}

impl KeyParam {
    /// Whether `value` is acceptable for this parameter.
    pub fn accepts(&self, value: &str) -> bool {
        // Whatever the pattern: a control character could forge the key's
        // separator.
        value.len() <= self.max_len
            && !value.chars().any(char::is_control)
            && match &self.pattern {
                Some(p) => p.matches(value),
                None => {
                    !value.is_empty()
                        && value.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
                        })
                }
            }
    }

    fn default_max_len() -> usize {
        64
    }
    fn default_required() -> bool {
        true
    }
}

/// A compiled value pattern, anchored to the whole value.
#[derive(Clone, Debug)]
pub struct KeyPattern {
    text: String,
    re: regex_lite::Regex,
}

impl KeyPattern {
    /// Compile `text`, anchored.
    pub fn new(text: &str) -> Result<KeyPattern, String> {
        let re = regex_lite::Regex::new(&format!("^(?:{text})$"))
            .map_err(|e| format!("pattern `{text}`: {e}"))?;
        Ok(KeyPattern {
            text: text.to_string(),
            re,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        self.re.is_match(value)
    }
}

impl PartialEq for KeyPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Serialize for KeyPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for KeyPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeyPattern::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `auth.redirect_means`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RedirectMeans {
    /// Not logged in.
    #[default]
    LoggedOut,
    /// A backend fault.
    Error,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            me_path: "/api/v1/me".into(),
            cache_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(1),
            cache_max_entries: 100_000,
            cache_max_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            retry_after_secs: 2,
            session_cookie: "session".into(),
            redirect_means: RedirectMeans::LoggedOut,
            recheck_interval: Duration::from_secs(60),
            mode: IdentityMode::Introspect,
            credentials: Sources::default(),
            present_as: Presentation::AsReceived,
            id_field: "id".into(),
            jwt: JwtConfig::default(),
        }
    }
}

/// `[upstream]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Backend path of the per-user SSE stream.
    pub events_path: String,
    /// An upstream silent (not even a comment) this long is treated as dead.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Smallest reconnect delay.
    #[serde(with = "duration")]
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(with = "duration")]
    pub backoff_reset_after: Duration,
    /// Failed connects in a row, over all users, after which the backend
    /// counts as down for everyone: users stop backing off each on their
    /// own and wait while one connect at a time probes it; when a probe is
    /// answered all are released at `connects_per_second`. `0` = off.
    pub circuit_after: u32,
    /// Longest time between two probes while the backend is down (they
    /// start `backoff_min` apart and double up to this): the most a user
    /// waits after the backend is back, before the connect pacing.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
    /// Largest upstream event accepted; bigger ones are skipped and cause a `resync`.
    pub max_event_bytes: usize,
    /// Time allowed to open the TCP/TLS connection.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response head.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// Extra CA certificate (PEM) trusted for an https backend.
    pub extra_ca_pem: Option<PathBuf>,
    /// Upstream connect attempts per second, over all users together (after
    /// a burst of a tenth of a second's worth). A backend restart drops every
    /// user's stream at once; this is the rate at which they come back.
    /// `0` = unlimited.
    pub connects_per_second: u32,
    /// How the per-user streams reach the backend: `auto` and `http1` open
    /// one HTTP/1.1 connection per user (TLS for an https backend), which no
    /// backend stream limit can starve; `http2` multiplexes them over h2
    /// connections, at most `h2_streams_per_connection` streams each.
    /// Proxied requests and identity calls have a pool of their own either way.
    pub http_version: HttpVersion,
    /// With `http_version = "http2"`: streams per h2 connection before another
    /// connection is opened. Keep it at or below the backend's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (nginx 128, Go 250, many load
    /// balancers 100).
    pub h2_streams_per_connection: usize,
}

/// `upstream.http_version`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// HTTP/1.1, one connection per user (measured cheapest per user).
    #[default]
    Auto,
    /// HTTP/1.1, one connection per user.
    Http1,
    /// h2 (ALPN, or prior knowledge to an http backend), several users'
    /// streams per connection.
    Http2,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            events_path: "/api/v1/events".into(),
            idle_timeout: Duration::from_secs(45),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            circuit_after: 3,
            probe_interval: Duration::from_secs(1),
            max_event_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(15),
            extra_ca_pem: None,
            connects_per_second: 1500,
            http_version: HttpVersion::Auto,
            h2_streams_per_connection: 100,
        }
    }
}

/// `[hub]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// How long a user's channel (and its upstream) outlives its last tab.
    #[serde(with = "duration")]
    pub grace: Duration,
    /// Keepalive comment after this much idle on a tab stream.
    #[serde(with = "duration")]
    pub keepalive: Duration,
    /// Base of the `retry:` hint sent first on every tab stream; each tab gets
    /// this plus up to the same again of jitter, spreading reconnects.
    #[serde(with = "duration")]
    pub retry_hint: Duration,
    /// Encoded triggers kept per user for `Last-Event-ID` replay.
    pub ring_size: usize,
    /// A live tab that has not caught up for this long (its oldest frame not
    /// yet written is older) gets `resync` instead of the frames it missed.
    #[serde(with = "duration")]
    pub max_lag: Duration,
    /// Most bytes a user's channel keeps, beyond its replay ring, for tabs
    /// that have not taken them yet; past it the oldest go and the tabs that
    /// needed them get `resync`. Bounds what one slow tab can cost.
    pub max_lag_bytes: usize,
    /// Most tabs one user may hold open; beyond → `429`.
    pub max_tabs_per_user: usize,
    /// Most tabs in total; beyond → `503`. `0` = derive from the process's
    /// open-file limit (half of it, leaving room for upstreams and proxying).
    pub max_total_tabs: usize,
    /// What a tab gets when its stream cannot be resumed (an unservable
    /// `Last-Event-ID`, a lag, an upstream that reconnected without an id to
    /// resume from): `resync` (the `resync_event` event) or `end` (its
    /// stream ends, and the client's own reconnect-and-refresh runs).
    pub on_gap: GapPolicy,
    /// Event name of the `resync` (e.g. `changed` for clients that refetch
    /// on it).
    pub resync_event: String,
    /// Data of the `resync` event.
    pub resync_data: String,
    /// A user's upstream failing this long makes their tabs get
    /// `upstream_down_event`, then `upstream_up_event` once it is back.
    #[serde(with = "duration")]
    pub upstream_down_after: Duration,
    /// Event sent while the upstream is down (empty = none).
    pub upstream_down_event: String,
    /// Event sent when it is back (empty = none).
    pub upstream_up_event: String,
    /// A file holding the key (at least 32 bytes) that seals the upstream
    /// position into every downstream id, so a tab resumes from the
    /// backend's history after its channel is gone — on any instance that
    /// has the same key. Unset: a random key per process (resume within the
    /// process only).
    pub resume_key_file: Option<PathBuf>,
    /// Seal positions into ids at all. Costs a cipher call and ~70 bytes per
    /// published batch on every tab's wire (measured in docs/benchmarks.md);
    /// `false` for deployments bound by fan-out throughput (a tab back after
    /// its channel is gone then gets `resync`).
    pub resume: bool,
}

/// `hub.on_gap`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GapPolicy {
    /// Send the resync event.
    #[default]
    Resync,
    /// End the tab's stream.
    End,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            grace: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            retry_hint: Duration::from_secs(2),
            ring_size: 256,
            max_lag: Duration::from_secs(5),
            max_lag_bytes: 4 << 20,
            max_tabs_per_user: 64,
            max_total_tabs: 0,
            on_gap: GapPolicy::Resync,
            resync_event: crate::trigger::RESYNC.into(),
            resync_data: "1".into(),
            upstream_down_after: Duration::from_secs(2),
            upstream_down_event: "upstream-down".into(),
            upstream_up_event: "upstream-up".into(),
            resume_key_file: None,
            resume: true,
        }
    }
}

/// `[watermark]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkConfig {
    /// Path of the backend's read-watermark endpoint; a 2xx `POST` of
    /// `{peer,rowId}` through ssemux marks the peer active for the tab.
    /// Empty: off (every request on every path is proxied as it is).
    pub read_path: String,
    /// Upstream event whose `peer` may be advanced automatically (empty:
    /// never).
    pub inbound_event: String,
    /// Time allowed for each automatic watermark POST.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Reads (`POST`/`DELETE` on `read_path`) per second allowed from one
    /// client address (bursts up to twice this), before the identity lookup.
    /// Over → `429`. `0` = unlimited; loopback peers are exempt.
    pub reads_per_second: u32,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            read_path: "/api/v1/contacts/read".into(),
            inbound_event: "inbound".into(),
            reads_per_second: 20,
            timeout: Duration::from_secs(2),
        }
    }
}

/// `[proxy]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Largest request body forwarded to the backend.
    pub max_request_body: u64,
    /// Time allowed for the backend's response head.
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// Most WebSocket connections relayed to the backend at once (requests
    /// upgraded on proxied paths). Over it a new upgrade is answered `503`
    /// with `Retry-After`, without contacting the backend.
    pub max_websockets: usize,
    /// A relayed WebSocket connection that carries no byte in either
    /// direction for this long is closed on both sides.
    #[serde(with = "duration")]
    pub websocket_idle_timeout: Duration,
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Time allowed for a client to send its request head (slowloris guard).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// A connection whose socket accepts no bytes for this long is cut (a
    /// stalled tab must not hold memory or a slot forever).
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// New `/events` connections per second allowed from one client address
    /// (sustained; bursts up to twice this). `0` = unlimited. Loopback
    /// peers are exempt (they are local proxies or tools, not browsers).
    pub events_connects_per_second: u32,
    /// Header a trusted proxy in front writes the client address into (e.g.
    /// `x-forwarded-for`; the rightmost entry is used). Empty = the socket's
    /// peer address. Set it behind nginx, or every browser shares nginx's
    /// address for `events_connects_per_second`. Honoured only from a peer
    /// in `trusted_proxies`.
    pub client_ip_header: String,
    /// Peers whose forwarding headers are believed: addresses and CIDR
    /// ranges, comma-separated (`"127.0.0.1, 10.0.0.0/8"`). From any other
    /// peer, `X-Forwarded-For` is replaced by the peer's address and
    /// `Forwarded` / `X-Real-IP` are removed before proxying, and
    /// `client_ip_header` is ignored. Empty (default): nobody is trusted.
    pub trusted_proxies: TrustedProxies,
}

/// `server.trusted_proxies`: written as one comma-separated string (so it
/// works from the environment and `--set` too), held parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parse `"a, b/n"`; the error names the entry.
    pub fn parse(s: &str) -> Result<TrustedProxies, String> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<ipnet::IpNet>()
                    .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("`{e}` is not an address or CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `peer` may speak for its clients.
    pub fn contains(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|n| n.contains(&peer))
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        s.serialize_str(&list.join(", "))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustedProxies::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            events_connects_per_second: 50,
            client_ip_header: String::new(),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_request_body: 10 * 1024 * 1024,
            response_timeout: Duration::from_secs(30),
            max_websockets: 10_000,
            websocket_idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Load `path` (if given), then apply `SSEMUX_*` variables from `env`,
    /// then `overrides` (`key.path=value`), then validate.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_parts(&text, env, overrides)
    }

    /// Like [`Config::load`] with the file's text already read.
    pub fn from_parts(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let known = known_keys();
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut deprecated = Vec::new();
        let mut retired = |key: &str, instead: &str, how: &str| {
            deprecated.push(format!(
                "`{key}` ({how}) is no longer used and is ignored; {instead}"
            ));
        };
        for (key, instead) in RETIRED {
            if take_path(&mut table, key).is_some() {
                retired(key, instead, "in the file");
            }
            if env.contains_key(&env_name(key)) {
                retired(key, instead, &env_name(key));
            }
        }
        for key in &known {
            let var = env_name(key);
            if let Some(v) = env.get(&var) {
                set_path(&mut table, key, v);
            }
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            let k = k.trim();
            if let Some((key, instead)) = RETIRED.iter().find(|(key, _)| *key == k) {
                retired(key, instead, "--set");
                continue;
            }
            if !known.iter().any(|kk| kk == k) {
                return Err(ConfigError::UnknownKey(k.to_string()));
            }
            set_path(&mut table, k, v);
        }
        let mut cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| typed_error(&e.to_string()))?;
        cfg.deprecated = deprecated;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reject values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                why: why.into(),
            })
        };
        if let Err(why) = BackendUrl::parse(&self.backend) {
            return bad("backend", &why);
        }
        for (key, p) in [
            ("events_path", &self.events_path),
            ("auth.me_path", &self.auth.me_path),
            ("upstream.events_path", &self.upstream.events_path),
            ("admin.metrics_path", &self.admin.metrics_path),
            ("admin.healthz_path", &self.admin.healthz_path),
            ("admin.readyz_path", &self.admin.readyz_path),
        ] {
            if !p.starts_with('/') {
                return bad(key, "must start with `/`");
            }
        }
        // Empty turns the read path off (a backend without watermarks).
        if !self.watermark.read_path.is_empty() && !self.watermark.read_path.starts_with('/') {
            return bad(
                "watermark.read_path",
                "must start with `/` (or be empty: off)",
            );
        }
        if self.hub.ring_size == 0 {
            return bad("hub.ring_size", "must be at least 1");
        }
        if self.hub.max_lag.is_zero() {
            return bad("hub.max_lag", "must be more than 0");
        }
        if self.hub.max_lag_bytes < 1024 {
            return bad("hub.max_lag_bytes", "must be at least 1024");
        }
        if self.hub.max_tabs_per_user == 0 {
            return bad("hub.max_tabs_per_user", "must be at least 1");
        }
        if self.proxy.websocket_idle_timeout.is_zero() {
            return bad("proxy.websocket_idle_timeout", "must be > 0");
        }
        if !self.server.client_ip_header.is_empty()
            && http::HeaderName::from_bytes(self.server.client_ip_header.as_bytes()).is_err()
        {
            return bad("server.client_ip_header", "not a valid header name");
        }
        if self.server.write_timeout.is_zero() {
            return bad("server.write_timeout", "must be more than 0");
        }
        if self.hub.upstream_down_after.is_zero() {
            return bad("hub.upstream_down_after", "must be more than 0");
        }
        if self.hub.keepalive.is_zero() {
            return bad("hub.keepalive", "must be more than 0");
        }
        if self.upstream.backoff_min.is_zero() {
            return bad("upstream.backoff_min", "must be more than 0");
        }
        if self.upstream.backoff_max < self.upstream.backoff_min {
            return bad(
                "upstream.backoff_max",
                "must be at least upstream.backoff_min",
            );
        }
        if self.upstream.idle_timeout.is_zero() {
            return bad("upstream.idle_timeout", "must be more than 0");
        }
        if self.upstream.probe_interval < self.upstream.backoff_min {
            return bad(
                "upstream.probe_interval",
                "must be at least upstream.backoff_min",
            );
        }
        if self.upstream.h2_streams_per_connection == 0 {
            return bad("upstream.h2_streams_per_connection", "must be at least 1");
        }
        if self.upstream.max_event_bytes < 64 {
            return bad("upstream.max_event_bytes", "must be at least 64");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert", "tls.cert and tls.key must be set together");
        }
        self.validate_identity()?;
        self.validate_key()?;
        for (key, name, may_be_empty) in [
            ("hub.resync_event", &self.hub.resync_event, false),
            (
                "hub.upstream_down_event",
                &self.hub.upstream_down_event,
                true,
            ),
            ("hub.upstream_up_event", &self.hub.upstream_up_event, true),
        ] {
            if !(crate::trigger::valid_name(name) || (may_be_empty && name.is_empty())) {
                return bad(
                    key,
                    "must be an event name of A-Z a-z 0-9 . _ : - (at most 128)",
                );
            }
        }
        if self.hub.resync_data.contains(['\r', '\n']) {
            return bad("hub.resync_data", "must be one line");
        }
        if let Some((i, e)) = translate::first_bad(&self.translate) {
            let event = &self.translate.rules[i].event;
            return Err(ConfigError::Invalid {
                key: format!("translate.rules[{i}]"),
                why: format!("(the rule for `{event}`) {e}"),
            });
        }
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let bad = |key: &str, why: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                why,
            })
        };
        if a.id_field.is_empty() {
            return bad("auth.id_field", "must not be empty".into());
        }
        if a.mode == IdentityMode::Jwt {
            let j = &a.jwt;
            let given = [
                j.key_file.is_some(),
                j.jwks_file.is_some(),
                !j.jwks_path.is_empty(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return bad(
                    "auth.jwt.key_file",
                    "with auth.mode = \"jwt\", set exactly one of auth.jwt.key_file, auth.jwt.jwks_file, auth.jwt.jwks_path".into(),
                );
            }
            if !j.jwks_path.is_empty() && !j.jwks_path.starts_with('/') {
                return bad("auth.jwt.jwks_path", "must start with `/`".into());
            }
            if j.identity_claim.is_empty() {
                return bad("auth.jwt.identity_claim", "must not be empty".into());
            }
        }
        if let Presentation::In(Place::Cookies) = a.present_as
            && a.credentials.0.iter().any(|p| *p != Place::Cookies)
        {
            return bad(
                "auth.present_as",
                "`cookies` presents a whole Cookie header; for a credential from elsewhere name the cookie (`cookie:NAME`)".into(),
            );
        }
        Ok(())
    }

    fn validate_key(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                why,
            })
        };
        let params = &self.key.params;
        for (i, p) in params.iter().enumerate() {
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(
                    "key.params",
                    format!("parameter name `{}` must use A-Z a-z 0-9 _ -", p.name),
                );
            }
            if ["tab", "lastEventId", "user"].contains(&p.name.as_str()) {
                return bad(
                    "key.params",
                    format!("`{}` is a name ssemux uses itself", p.name),
                );
            }
            if params[..i].iter().any(|q| q.name == p.name) {
                return bad("key.params", format!("`{}` is listed twice", p.name));
            }
            if self.auth.credentials.query_names().any(|n| n == p.name) {
                return bad(
                    "key.params",
                    format!(
                        "`{}` is a credential source; it keys the stream already",
                        p.name
                    ),
                );
            }
            if p.max_len == 0 {
                return bad(
                    "key.params",
                    format!("`{}`: max_len must be at least 1", p.name),
                );
            }
        }
        for name in placeholders(&self.upstream.events_path)? {
            if name != "user" && !params.iter().any(|p| p.name == name) {
                return bad(
                    "upstream.events_path",
                    format!("`{{{name}}}` is neither `{{user}}` nor a [[key.params]] name"),
                );
            }
        }
        Ok(())
    }

    /// The backend base URL, checked.
    pub fn backend(&self) -> Result<BackendUrl, ConfigError> {
        BackendUrl::parse(&self.backend).map_err(|why| ConfigError::Invalid {
            key: "backend".into(),
            why,
        })
    }

    /// `path` (which may carry a query) appended to the backend base URL,
    /// keeping the base's own path prefix.
    pub fn backend_url(&self, path: &str) -> Result<http::Uri, ConfigError> {
        join_url(&self.backend, path).map_err(|why| ConfigError::Invalid {
            key: "backend".into(),
            why,
        })
    }

    /// The configuration as TOML (every key, defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// The `{name}` placeholders of an `upstream.events_path` template.
pub fn placeholders(template: &str) -> Result<Vec<&str>, ConfigError> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(ConfigError::Invalid {
                key: "upstream.events_path".into(),
                why: "a `{` is not closed".into(),
            });
        };
        out.push(&after[..close]);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(ConfigError::Invalid {
            key: "upstream.events_path".into(),
            why: "a `}` has no `{`".into(),
        });
    }
    Ok(out)
}

/// `base` (absolute URL, maybe with a path prefix) + `path`.
pub fn join_url(base: &str, path: &str) -> Result<http::Uri, String> {
    BackendUrl::parse(base)?.join(path)
}

/// Every scalar key as a dotted path (`hub.grace`), derived from the defaults
/// so the list cannot drift from the struct.
pub fn known_keys() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(Config::default()) {
        collect_keys("", &t, &mut out);
    }
    // Optional keys have no default value to discover them by.
    out.push("upstream.extra_ca_pem".into());
    out.push("tls.cert".into());
    out.push("tls.key".into());
    out.push("admin.listen".into());
    out.push("auth.jwt.key_file".into());
    out.push("auth.jwt.jwks_file".into());
    out.push("hub.resume_key_file".into());
    out.sort();
    out.dedup();
    out
}

fn collect_keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => collect_keys(&path, inner, out),
            // Arrays of tables (translation rules) are file-only.
            toml::Value::Array(_) => {}
            _ => out.push(path),
        }
    }
}

/// `hub.max_tabs_per_user` → `SSEMUX_HUB_MAX_TABS_PER_USER`.
pub fn env_name(key: &str) -> String {
    format!("SSEMUX_{}", key.replace('.', "_").to_ascii_uppercase())
}

fn set_path(table: &mut toml::Table, key: &str, raw: &str) {
    // A value is typed by its key, not by how it looks: `123` is a fine
    // cookie name, and only numeric or boolean keys take numbers or booleans.
    let value = if key_takes_scalar(key) {
        scalar(raw)
    } else {
        toml::Value::String(raw.trim().to_string())
    };
    put_path(table, key, value);
}

fn put_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut cur = table;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), value);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
}

fn take_path(table: &mut toml::Table, key: &str) -> Option<toml::Value> {
    let (parent, last) = match key.rsplit_once('.') {
        Some((p, l)) => (
            p.split('.')
                .try_fold(table, |t, k| t.get_mut(k)?.as_table_mut())?,
            l,
        ),
        None => (table, key),
    };
    parent.remove(last)
}

/// Whether `key`'s default value is a number or a boolean (optional keys,
/// which have no default, are all paths or addresses: strings).
fn key_takes_scalar(key: &str) -> bool {
    let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(Config::default()) else {
        return true;
    };
    let mut cur = &defaults;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        match (cur.get(part), parts.peek().is_none()) {
            (Some(toml::Value::Table(t)), false) => cur = t,
            (Some(v), true) => {
                return matches!(v, toml::Value::Integer(_) | toml::Value::Boolean(_));
            }
            _ => return false,
        }
    }
    false
}

/// An override value for a numeric or boolean key: integers and booleans
/// keep their type; anything else stays a string (and fails to load with the
/// key named).
fn scalar(raw: &str) -> toml::Value {
    let raw = raw.trim();
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = Config::default();
        cfg.validate().expect("defaults valid");
        let again = Config::from_parts(&cfg.to_toml(), none(), &[]).expect("round trip");
        assert_eq!(again, cfg);
    }

    #[test]
    fn override_values_are_typed_by_their_key() {
        let env = vec![("SSEMUX_AUTH_SESSION_COOKIE".to_string(), "123".to_string())];
        let cfg = Config::from_parts("", env, &["hub.ring_size=32".into()]).expect("loads");
        assert_eq!(cfg.auth.session_cookie, "123");
        assert_eq!(cfg.hub.ring_size, 32);
        let err = Config::from_parts("", none(), &["hub.ring_size=many".into()]);
        assert!(err.is_err());
    }

    #[test]
    fn backend_urls_the_proxy_cannot_honour_are_refused() {
        for bad in ["http://u:p@backend:8080", "http://backend:8080/?x=1"] {
            let err = Config::from_parts("", none(), &[format!("backend={bad}")])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("backend"), "{bad}: {err}");
        }
        Config::from_parts("", none(), &["backend=https://backend:8443/prefix".into()])
            .expect("a path prefix is fine");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration::parse("2m"), Ok(Duration::from_secs(120)));
        assert!(duration::parse("ten").is_err());
        assert!(duration::parse("5y").is_err());
    }

    #[test]
    fn env_and_flags_override_file() {
        let file = "[hub]\ngrace = \"3s\"\nring_size = 8\n";
        let env = vec![
            ("SSEMUX_HUB_RING_SIZE".to_string(), "16".to_string()),
            ("SSEMUX_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let cfg = Config::from_parts(file, env, &["hub.grace=5s".into()]).expect("valid");
        assert_eq!(cfg.hub.grace, Duration::from_secs(5));
        assert_eq!(cfg.hub.ring_size, 16);
        assert_eq!(cfg.listen.port(), 9999);
    }

    #[test]
    fn a_retired_key_is_ignored_with_a_warning() {
        let cfg = Config::from_parts("[hub]\nmax_lag_frames = 77\n", none(), &[]).expect("loads");
        assert_eq!(cfg.hub, HubConfig::default());
        assert_eq!(cfg.deprecated.len(), 1, "{:?}", cfg.deprecated);
        assert!(cfg.deprecated[0].contains("hub.max_lag_bytes"));
        let env = vec![("SSEMUX_HUB_BROADCAST_BUFFER".to_string(), "88".to_string())];
        let cfg = Config::from_parts("", env, &[]).expect("loads");
        assert_eq!(cfg.deprecated.len(), 1, "{:?}", cfg.deprecated);
        assert!(cfg.deprecated[0].contains("SSEMUX_HUB_BROADCAST_BUFFER"));
        let cfg =
            Config::from_parts("", none(), &["hub.broadcast_buffer=99".into()]).expect("loads");
        assert_eq!(cfg.deprecated.len(), 1);
        assert!(cfg.deprecated[0].contains("--set"));
        assert!(Config::default().deprecated.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_parts("[hub]\ngrace = \"soon\"\n", none(), &[]).unwrap_err();
        assert!(e.to_string().contains("grace"), "{e}");
        let e = Config::from_parts("[hub]\nbogus = 1\n", none(), &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_parts("backend = \"ftp://x\"\n", none(), &[]).unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
        let e = Config::from_parts("", none(), &["hub.nope=1".into()]).unwrap_err();
        assert!(e.to_string().contains("hub.nope"), "{e}");
        let e = Config::from_parts("[hub]\nring_size = 0\n", none(), &[]).unwrap_err();
        assert!(e.to_string().contains("hub.ring_size"), "{e}");
    }

    #[test]
    fn key_values_never_carry_control_characters() {
        let p = KeyParam {
            name: "app".into(),
            pattern: Some(KeyPattern::new(".+").expect("pattern")),
            max_len: 64,
            required: true,
        };
        assert!(p.accepts("notes"));
        assert!(
            !p.accepts("x\u{1f}y"),
            "a separator could forge another key"
        );
        assert!(!p.accepts(&"x".repeat(65)));
    }

    #[test]
    fn origins_name_flag_env_or_line() {
        let text = "listen = \"127.0.0.1:1\"\n[hub]\n# grace = \"1s\"\ngrace = \"soon\"\n\n[[translate.rules]]\nevent = \"a\"\n[[translate.rules]]\nevent = \"b\"\n";
        let none = BTreeMap::new();
        assert_eq!(origin("hub.grace", text, &none, &[]), Some(Origin::File(4)));
        assert_eq!(origin("listen", text, &none, &[]), Some(Origin::File(1)));
        assert_eq!(
            origin("translate.rules[1]", text, &none, &[]),
            Some(Origin::File(8))
        );
        assert_eq!(origin("hub.ring_size", text, &none, &[]), None);
        let env: BTreeMap<_, _> = [("SSEMUX_HUB_GRACE".to_string(), "x".to_string())].into();
        assert_eq!(
            origin("hub.grace", text, &env, &[]),
            Some(Origin::Env("SSEMUX_HUB_GRACE".into(), "x".into()))
        );
        assert_eq!(
            origin("hub.grace", text, &env, &["hub.grace=2s".into()]),
            Some(Origin::Flag("hub.grace=2s".into()))
        );
        let e = Config::from_parts(text, none.clone(), &[]).unwrap_err();
        assert_eq!(e.key(), Some("hub.grace"), "{e}");
        let bad_rule = "[[translate.rules]]\nevent = \"a\"\n[[translate.rules]]\nevent = \"b\"\ntriggers = [{ name = \"x y\" }]\n";
        let e = Config::from_parts(bad_rule, none.clone(), &[]).unwrap_err();
        assert_eq!(e.key(), Some("translate.rules[1]"), "{e}");
        assert!(e.to_string().contains("`b`"), "{e}");
        assert_eq!(
            origin("translate.rules[1]", bad_rule, &none, &[]),
            Some(Origin::File(3))
        );
    }

    #[test]
    fn urls_join_with_prefix() {
        assert_eq!(
            join_url("http://h:1", "/api/v1/me").map(|u| u.to_string()),
            Ok("http://h:1/api/v1/me".to_string())
        );
        assert_eq!(
            join_url("https://h/base/", "/x?y=1").map(|u| u.to_string()),
            Ok("https://h/base/x?y=1".to_string())
        );
    }

    #[test]
    fn env_names() {
        assert_eq!(
            env_name("hub.max_tabs_per_user"),
            "SSEMUX_HUB_MAX_TABS_PER_USER"
        );
        assert!(known_keys().contains(&"upstream.idle_timeout".to_string()));
    }
}
