//! Backend client: owns the connector (TCP, rustls, ALPN), the connection pool
//! and the trust roots used to reach the backend. Every module that talks to
//! the backend shares one [`BackendClient`].
//!
//! Must never install or rely on a process-wide rustls crypto provider (the
//! ring provider is passed explicitly), never disable certificate
//! verification, and never decide *where* to connect: callers supply the URI.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use http::HeaderValue;
use http::uri::{Authority, Scheme};

use crate::body::Body;

/// The configured backend base URL, checked once when the configuration is
/// loaded: `http://` or `https://`, a host, no `user:password@`, no query
/// (the proxy forwards to scheme://host:port/path only; anything else would
/// be silently lost), and an optional path prefix put in front of every path
/// (`https://chat.internal/app` + `/x?y` → `https://chat.internal/app/x?y`).
#[derive(Debug, Clone)]
pub struct BackendUrl {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// Path prefix without a trailing `/`; empty for none.
    pub(crate) prefix: String,
}

impl BackendUrl {
    /// Check and split `base`; the error says what is wrong with it.
    pub fn parse(base: &str) -> Result<BackendUrl, String> {
        let uri: http::Uri = base
            .parse()
            .map_err(|_| "must be an absolute http:// or https:// URL".to_string())?;
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            _ => return Err("must be an absolute http:// or https:// URL".into()),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or("must be an absolute http:// or https:// URL")?
            .clone();
        if authority.as_str().contains('@') {
            return Err("must not contain user:password@".into());
        }
        if uri.query().is_some() {
            return Err("must not have a ?query".into());
        }
        if HeaderValue::from_str(authority.as_str()).is_err() {
            return Err("has a host that is not a valid header value".into());
        }
        Ok(BackendUrl {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// `path` (which may carry a query) on the backend, after the prefix.
    pub fn join(&self, path: &str) -> Result<http::Uri, String> {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path}", self.prefix))
            .build()
            .map_err(|e| e.to_string())
    }

    /// Whether the backend is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

/// HTTP client to the backend: http and https (rustls with ring, native roots
/// or an extra CA PEM file), h1 and h2 via ALPN, pooled. Cheap to clone; clones
/// share the pool.
pub type BackendClient = Client<HttpsConnector<HttpConnector>, Body>;

/// How the backend client connects and pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Limit for establishing the TCP connection (DNS excluded).
    pub connect_timeout: Duration,
    /// A PEM file of CA certificates for a backend with a private CA.
    ///
    /// When set, these CAs are the trust roots for the backend *instead of*
    /// the platform's roots (like nginx's `proxy_ssl_trusted_certificate`):
    /// the backend is one known service, so pinning its CA is the safer reading.
    pub extra_ca_pem: Option<PathBuf>,
    /// Idle pooled connections are closed after this long. Keep it below the
    /// backend's own keep-alive timeout, or a request can race the backend
    /// closing the connection it was sent on.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per backend host. A burst (every user
    /// logging in after a restart) opens many connections at once; without a
    /// cap each stays, with its buffers, until the idle timeout.
    pub pool_max_idle: usize,
    /// Speak h2 only (ALPN `h2` over TLS, prior knowledge over plain http):
    /// the upstream streams' own clients with `upstream.http_version = "http2"`.
    pub http2_only: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            extra_ca_pem: None,
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 64,
            http2_only: false,
        }
    }
}

/// Why a [`BackendClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or is not PEM.
    #[error("CA file {}: {source}", path.display())]
    CaRead {
        /// The configured file.
        path: PathBuf,
        /// What went wrong reading or decoding it.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no certificate at all.
    #[error("CA file {}: no CERTIFICATE block found", path.display())]
    CaEmpty {
        /// The configured file.
        path: PathBuf,
    },
    /// A certificate in the CA file is not usable as a trust anchor.
    #[error("CA file {}: {source}", path.display())]
    CaInvalid {
        /// The configured file.
        path: PathBuf,
        /// Why rustls rejected it.
        source: rustls::Error,
    },
    /// rustls refused the configuration (protocol versions vs. provider).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// TCP keep-alive for backend connections: a long SSE response through the
/// proxy can be silent for minutes, and a dead peer must still be noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Build the backend client described by `cfg`.
pub fn backend_client(cfg: &ClientConfig) -> Result<BackendClient, ClientError> {
    let tls = tls_config(cfg.extra_ca_pem.as_deref())?;
    let mut http = HttpConnector::new();
    // The https wrapper hands https URIs to this connector too.
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));

    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if cfg.http2_only {
        https.enable_http2().wrap_connector(http)
    } else {
        https.enable_all_versions().wrap_connector(http)
    };

    Ok(Client::builder(TokioExecutor::new())
        .http2_only(cfg.http2_only)
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle)
        // Without a pool timer the idle timeout is never enforced.
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

/// The TLS client configuration every connection to the backend uses: ring,
/// safe protocol versions, and as trust roots the CA file if one is given
/// (instead of the platform's), else the platform's. No ALPN: each client
/// sets its own.
pub fn tls_config(extra_ca_pem: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    Ok(match extra_ca_pem {
        Some(path) => builder
            .with_root_certificates(load_ca_file(path)?)
            .with_no_client_auth(),
        None => match builder.clone().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            Err(e) => {
                // Not fatal: an http backend needs no roots, and an https one
                // then fails per request with a logged certificate error (502)
                // instead of the whole gateway refusing to start.
                tracing::warn!(error = %e, "no platform CA certificates; https backends will be rejected");
                builder
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            }
        },
    })
}

fn load_ca_file(path: &Path) -> Result<RootCertStore, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ClientError::CaRead {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ClientError::CaEmpty {
            path: path.to_owned(),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| ClientError::CaInvalid {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// Where a dedicated connection to `authority` goes: the host (an IPv6
/// literal without the brackets `Authority` keeps) and the port (the
/// scheme's default when none is written).
pub fn socket_target(authority: &Authority, https: bool) -> (String, u16) {
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    (host, port)
}

/// A TLS connector for a dedicated HTTP/1.1 connection to `host` (ALPN
/// `http/1.1` only: one long stream, or an upgrade, where h2 would need
/// framing or extended CONNECT), and the name its certificate must carry.
pub fn h1_tls(
    mut cfg: rustls::ClientConfig,
    host: &str,
) -> Option<(
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
)> {
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_an_error_not_a_panic() {
        let cfg = ClientConfig {
            extra_ca_pem: Some(PathBuf::from("/nonexistent/ssemux-ca.pem")),
            ..ClientConfig::default()
        };
        assert!(matches!(
            backend_client(&cfg),
            Err(ClientError::CaRead { .. })
        ));
    }

    #[tokio::test]
    async fn builds_without_extra_ca() {
        assert!(backend_client(&ClientConfig::default()).is_ok());
    }
}
