//! ssemux gateway library. The folders are the stages of the data path:
//!
//! - `server/`: accepting connections (plain or TLS), the write deadline,
//!   connect limits, routing, the admin endpoints, the wiring of one gateway;
//! - `events/`: `GET /events` — auth → hub → channel → tab (body and the
//!   lean tab connection);
//! - `upstream/`: one backend stream per user — task loop, connectors,
//!   backoff, pacer, translate — publishing into the user's channel;
//! - `watermark/`: the read path and the automatic read-watermark advance;
//! - `proxy/`: every other request, forwarded to the backend;
//! - `h1/`: the HTTP/1.1 pieces both lean paths share.
//!
//! Leaves used by all: `config`, `metrics`, `trigger`, `cookie`,
//! `credential`, `body`, `backend`.
//! Every module's top comment says why it exists and what it must never do.

mod backend;
pub mod body;
mod config;
mod cookie;
mod credential;
mod events;
mod h1;
mod metrics;
mod proxy;
mod server;
mod trigger;
mod upstream;
mod watermark;

pub use backend::{BackendClient, BackendUrl, ClientConfig, ClientError, backend_client};
pub use config::{
    AdminConfig, AuthConfig, Config, ConfigError, GapPolicy, HttpVersion, HubConfig, IdentityMode,
    JwtAlgorithm, JwtConfig, KeyConfig, KeyParam, Origin, ProxyConfig, RedirectMeans, ServerConfig,
    TlsConfig, TrustedProxies, UpstreamConfig, WatermarkConfig, env_name, join_url, known_keys,
    origin as config_origin,
};
pub use cookie::{MAX_COOKIE_BYTES, cookie_count, cookie_header, cookie_value};
pub use credential::{Credential, Place, Presentation, Presented, Sources};
pub use events::auth::{AuthError, Identity};
pub use events::channel::{Attach, Channel, Follower, Lag, RecvError, Subject, TryRecvError};
pub use events::hub::{Hub, HubError, Subscription};
pub use events::tab::{TabHold, TabSettings, stream as tab_stream};
pub use events::tab_conn::respond as tab_respond;
pub use metrics::Metrics;
pub use proxy::{Proxy, WebsocketSetup};
pub use server::{Gateway, GatewayError, Reloaded};
pub use trigger::{LOGOUT, MAX_DATA_BYTES, RESYNC, Trigger, clean_data, valid_name};
pub use upstream::connector::{ByteStream, ConnectError, ConnectRequest, Connector};
pub use upstream::translate::{Rule, RuleError, Rules, Translation, TriggerRule, translate};
pub use upstream::{End, Upstream};
