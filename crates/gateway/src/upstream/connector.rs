//! The connector seam: what the upstream task asks for (one stream for one
//! user's credential and position) and how an answer is judged, whichever
//! client read it. Both real connectors and the tests' scripted ones sit
//! behind [`Connector`]; this module never opens a socket itself.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::Stream;
use http::StatusCode;

use crate::body::BoxError;
use crate::credential::{Credential, Presented};

/// Bytes of an upstream response body as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// What the upstream task asks the connector for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The user whose stream this is.
    pub user: String,
    /// Path and query of the stream on the backend (the base URL's prefix
    /// and the `upstream.events_path` template filled for this channel),
    /// without the credential.
    pub path: Arc<str>,
    /// The credential, as the backend is to be shown it.
    pub credential: Presented,
    /// Last upstream id seen, sent as `Last-Event-ID`.
    pub last_event_id: Option<String>,
}

/// Why opening the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The backend refused the credentials (401/403).
    #[error("credentials refused ({0})")]
    Unauthorized(StatusCode),
    /// Any other non-2xx status.
    #[error("backend answered {0}")]
    Status(StatusCode),
    /// 2xx but not `text/event-stream`.
    #[error("backend answered with content type {0:?}, not text/event-stream")]
    ContentType(String),
    /// No response head in time.
    #[error("backend did not answer in time")]
    Timeout,
    /// Connection-level failure.
    #[error("transport: {0}")]
    Transport(String),
}

/// How an upstream answer's status is judged, whichever client read it:
/// 401/403 → the credentials were refused, any other non-2xx → retry.
pub fn check_status(status: StatusCode) -> Result<(), ConnectError> {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(ConnectError::Unauthorized(status));
    }
    if !status.is_success() {
        return Err(ConnectError::Status(status));
    }
    Ok(())
}

/// Only `text/event-stream` (any parameters) is parsed as a stream.
pub fn check_content_type(value: &[u8]) -> Result<(), ConnectError> {
    let ctype = String::from_utf8_lossy(value);
    if ctype
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
    {
        return Ok(());
    }
    Err(ConnectError::ContentType(ctype.into_owned()))
}

/// Opens upstream streams. The real one speaks HTTP; tests script it.
pub trait Connector: Send + Sync + 'static {
    /// Open one stream.
    fn connect(&self, req: ConnectRequest) -> BoxFuture<'static, Result<ByteStream, ConnectError>>;
}

/// Whether a credential still belongs to the user, asked of the backend
/// again (bypassing any cache): `Some(false)` when the backend refuses it or
/// names another user, `None` when it could not tell (a backend fault must
/// not log anybody out).
pub trait CredentialCheck: Send + Sync + 'static {
    /// Ask about `credential`, held by a tab of `user`.
    fn still_valid(&self, user: &str, credential: &Credential) -> BoxFuture<'static, Option<bool>>;
}
