//! TLS: the browser-facing listener's certificate and ALPN (h2, then
//! http/1.1), with rustls on the ring provider. Owns loading the PEM files
//! into an acceptor; it never reads or writes application bytes and never
//! decides anything about a request. A key or certificate that cannot be
//! loaded is an error at startup, never a panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// Why the TLS acceptor could not be built. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("tls.cert {path}: {why}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("tls.key {path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the pair (key does not match, unsupported algorithm).
    #[error("tls: {0}")]
    Config(String),
}

/// ALPN protocols offered, most preferred first. h2 lets a browser put all
/// of an origin's tabs on one connection instead of six.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// An acceptor serving the chain in `cert` with the key in `key` (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            why: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_path_buf(),
            why: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    #[test]
    fn loads_the_test_pair() {
        assert!(acceptor(&data("server.pem"), &data("server.key")).is_ok());
    }

    #[test]
    fn errors_name_the_file() {
        let e = acceptor(&data("missing.pem"), &data("server.key"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("tls.cert") && e.contains("missing.pem"), "{e}");
        // A certificate where the key should be.
        let e = acceptor(&data("server.pem"), &data("server.pem"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("tls.key"), "{e}");
    }
}
