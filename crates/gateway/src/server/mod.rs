//! Server: one gateway instance — the wiring of every part from the
//! configuration, reload, and serving the listener until shutdown. It owns
//! the connections (`accept`), the routing (`router`), the admin endpoints
//! (`admin`), TLS and the write deadline; it holds handles to every other
//! part and no state of theirs.

mod accept;
mod admin;
mod client_ip;
pub mod deadline;
mod router;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use self::tls::TlsAcceptor;
use crate::backend::{BackendClient, ClientConfig, backend_client};
use crate::config::{Config, HttpVersion, IdentityMode};
use crate::events::auth::{Auth, Recheck};
use crate::events::hub::Hub;
use crate::events::jwt::JwtVerifier;
use crate::events::limit::ConnectLimiter;
use crate::events::resume::ResumeKey;
use crate::events::{Events, Streams};
use crate::metrics::{Metrics, Sample};
use crate::proxy::{Proxy, WebsocketSetup};
use crate::upstream::connector::Connector;
use crate::upstream::h1_conn::H1Connector;
use crate::upstream::h2_conn::H2Connector;
use crate::upstream::{SharedRules, Upstream};
use crate::watermark::Watermarks;
use crate::watermark::read::ReadPath;

/// A gateway that cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The backend client could not be built (TLS roots, CA file).
    #[error("backend client: {0}")]
    Client(String),
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] self::tls::TlsError),
    /// The JWT keys could not be loaded.
    #[error(transparent)]
    Jwt(#[from] crate::events::jwt::JwtSetupError),
    /// The resume key could not be loaded.
    #[error(transparent)]
    Resume(#[from] crate::events::resume::ResumeKeyError),
}

/// What a configuration reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Sections applied to the running gateway.
    pub applied: Vec<&'static str>,
    /// Sections that differ from the running ones but only take effect on
    /// restart.
    pub need_restart: Vec<&'static str>,
}

/// One running gateway: every part, wired.
pub struct Gateway {
    cfg: Config,
    events: Events,
    read: ReadPath,
    proxy: Proxy,
    metrics: Metrics,
    /// The rules the upstream tasks translate with (swapped on reload).
    rules: SharedRules,
    /// The configuration last applied (startup, then reloads).
    live: std::sync::Mutex<Config>,
    tls: Option<TlsAcceptor>,
    /// `https` with TLS, for X-Forwarded-Proto.
    scheme: &'static str,
    /// Set once [`Gateway::serve`] holds its listener.
    listening: AtomicBool,
    /// Used by the readiness probe.
    client: BackendClient,
}

impl Gateway {
    /// Build every part from the configuration.
    pub fn new(cfg: Config) -> Result<Arc<Gateway>, GatewayError> {
        cfg.validate()?;
        let backend = cfg.backend()?;
        let client_cfg = ClientConfig {
            connect_timeout: cfg.upstream.connect_timeout,
            extra_ca_pem: cfg.upstream.extra_ca_pem.clone(),
            ..ClientConfig::default()
        };
        // Proxied requests, identity calls and watermark posts: one pool.
        // The users' streams never share it (see `upstream_connector`).
        let client: BackendClient =
            backend_client(&client_cfg).map_err(|e| GatewayError::Client(e.to_string()))?;
        let metrics = Metrics::new();
        let watermarks = Watermarks::new(
            client.clone(),
            // Off (empty): the URL is never posted to.
            cfg.backend_url(match cfg.watermark.read_path.as_str() {
                "" => "/",
                p => p,
            })?,
            &cfg.watermark,
            metrics.clone(),
        );
        let connector = upstream_connector(&cfg, &client_cfg)?;
        let tls = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => Some(self::tls::acceptor(cert, key)?),
            _ => None,
        };
        let auth = Auth::new(
            client.clone(),
            cfg.backend_url(&cfg.auth.me_path)?,
            cfg.auth.clone(),
            metrics.clone(),
        );
        let auth = Arc::new(if cfg.auth.mode == IdentityMode::Jwt {
            let j = &cfg.auth.jwt;
            let jwks_url = match j.jwks_path.as_str() {
                "" => None,
                p => Some(cfg.backend_url(p)?),
            };
            auth.with_jwt(JwtVerifier::new(
                j,
                client.clone(),
                jwks_url,
                cfg.auth.timeout,
            )?)
        } else {
            auth
        });
        let upstream = Upstream::new(
            connector,
            Arc::new(cfg.translate.clone()),
            cfg.upstream.clone(),
            Some(watermarks.clone()),
        )
        .with_metrics(metrics.clone())
        .with_connect_rate(cfg.upstream.connects_per_second)
        .with_circuit(cfg.upstream.circuit_after, cfg.upstream.probe_interval)
        .with_presentation(cfg.auth.present_as.clone());
        // In `upstream` mode the stream's own answer is the check.
        let upstream =
            if cfg.auth.recheck_interval.is_zero() || cfg.auth.mode == IdentityMode::Upstream {
                upstream
            } else {
                upstream.with_recheck(Arc::new(Recheck(auth.clone())), cfg.auth.recheck_interval)
            };
        let rules = upstream.rules_handle();
        // Shared by a deployment's instances when configured, so a tab
        // resumes on any of them; this process's own otherwise.
        let resume = match (&cfg.hub.resume_key_file, cfg.hub.resume) {
            (_, false) => None,
            (Some(path), true) => Some(Arc::new(ResumeKey::from_file(path)?)),
            (None, true) => Some(Arc::new(ResumeKey::random()?)),
        };
        let streams = Streams {
            key: cfg.key.clone(),
            template: cfg.upstream.events_path.clone(),
            backend: backend.clone(),
        };
        let shutdown = CancellationToken::new();
        let ws_tls = if backend.is_https() {
            Some(
                crate::backend::tls_config(cfg.upstream.extra_ca_pem.as_deref())
                    .map_err(|e| GatewayError::Client(e.to_string()))?,
            )
        } else {
            None
        };
        let proxy = Proxy::new(
            backend,
            &cfg.proxy,
            &cfg.server.trusted_proxies,
            client.clone(),
        )
        .with_websockets(WebsocketSetup {
            tls: ws_tls,
            connect_timeout: cfg.upstream.connect_timeout,
            max: cfg.proxy.max_websockets,
            idle_timeout: cfg.proxy.websocket_idle_timeout,
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        })
        .ok_or_else(|| {
            GatewayError::Client(format!("cannot relay WebSocket to {}", cfg.backend))
        })?;
        let events = Events {
            hub_cfg: cfg.hub.clone(),
            auth: auth.clone(),
            hub: Hub::with_resume(cfg.hub.clone(), upstream, resume),
            connects: ConnectLimiter::new(cfg.server.events_connects_per_second),
            watermarks: watermarks.clone(),
            metrics: metrics.clone(),
            shutdown,
            streams,
        };
        let read = ReadPath {
            auth,
            proxy: proxy.clone(),
            watermarks,
            limiter: ConnectLimiter::new(cfg.watermark.reads_per_second),
        };
        Ok(Arc::new(Gateway {
            live: std::sync::Mutex::new(cfg.clone()),
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            metrics,
            rules,
            listening: AtomicBool::new(false),
            client,
            cfg,
            events,
            read,
            proxy,
        }))
    }

    /// The hub (for tests and metrics).
    pub fn hub(&self) -> &Hub {
        &self.events.hub
    }

    /// Entries and bytes in the identity cache (for tests and sizing).
    pub fn auth_cache_size(&self) -> (usize, usize) {
        self.events.auth.cache_size()
    }

    /// The watermark state (for tests and metrics).
    pub fn watermarks(&self) -> &Watermarks {
        &self.events.watermarks
    }

    /// Cancel this token to shut the gateway down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.events.shutdown.clone()
    }

    /// This gateway's metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus text exposition, with the hub's gauges sampled now.
    pub fn metrics_text(&self) -> String {
        let hub = self.hub();
        self.metrics.render(Sample {
            tabs: hub.total_tabs(),
            channels: hub.channels(),
            channels_in_grace: hub.channels_in_grace(),
        })
    }

    /// Apply a new configuration to the running gateway: the translation
    /// rules take effect for the next upstream event, the tab limits
    /// (`hub.max_tabs_per_user`, `hub.max_total_tabs`) for the next tab; open
    /// streams keep running. Sections that cannot change at run time are reported, not
    /// applied. A configuration that does not validate changes nothing.
    pub fn reload(&self, new: &Config) -> Result<Reloaded, crate::config::ConfigError> {
        new.validate()?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Reloaded::default();
        if new.translate != live.translate {
            self.rules.store(Arc::new(new.translate.clone()));
            live.translate = new.translate.clone();
            out.applied.push("translate");
        }
        if (new.hub.max_tabs_per_user, new.hub.max_total_tabs)
            != (live.hub.max_tabs_per_user, live.hub.max_total_tabs)
        {
            self.hub()
                .set_limits(new.hub.max_tabs_per_user, new.hub.max_total_tabs);
            live.hub.max_tabs_per_user = new.hub.max_tabs_per_user;
            live.hub.max_total_tabs = new.hub.max_total_tabs;
            out.applied.push("hub limits");
        }
        let l = &*live;
        for (section, same) in [
            ("listen", new.listen == l.listen),
            ("backend", new.backend == l.backend),
            ("events_path", new.events_path == l.events_path),
            ("auth", new.auth == l.auth),
            ("upstream", new.upstream == l.upstream),
            ("hub", new.hub == l.hub),
            ("key", new.key == l.key),
            ("watermark", new.watermark == l.watermark),
            ("proxy", new.proxy == l.proxy),
            ("server", new.server == l.server),
            ("tls", new.tls == l.tls),
            ("admin", new.admin == l.admin),
        ] {
            if !same {
                out.need_restart.push(section);
            }
        }
        Ok(out)
    }
}

/// How the users' streams reach the backend (`upstream.http_version`):
/// HTTP/1.1, a connection per user, plain or TLS (`auto`, `http1`); or h2
/// connections of their own, `upstream.h2_streams_per_connection` streams
/// each (`http2`). Either way a backend's stream limit cannot starve a user,
/// and proxied requests never queue behind the streams.
fn upstream_connector(
    cfg: &Config,
    client_cfg: &ClientConfig,
) -> Result<Arc<dyn Connector>, GatewayError> {
    // Each stream names its own path (the template filled per channel).
    let url = cfg.backend_url("/")?;
    let u = &cfg.upstream;
    if u.http_version == HttpVersion::Http2 {
        let h2 = H2Connector::new(
            client_cfg,
            url,
            u.response_timeout,
            u.h2_streams_per_connection,
        )
        .map_err(|e| GatewayError::Client(e.to_string()))?;
        return Ok(Arc::new(h2));
    }
    let tls = match url.scheme_str() {
        Some("https") => Some(
            crate::backend::tls_config(u.extra_ca_pem.as_deref())
                .map_err(|e| GatewayError::Client(e.to_string()))?,
        ),
        _ => None,
    };
    H1Connector::new(&url, tls, u.connect_timeout, u.response_timeout)
        .map(|c| Arc::new(c) as Arc<dyn Connector>)
        .ok_or_else(|| GatewayError::Client(format!("cannot stream from {url}")))
}
