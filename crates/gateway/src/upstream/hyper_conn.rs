//! The hyper connector: the per-user stream through the shared, pooled
//! backend client (used for `https://` backends). It never retries, never
//! follows a redirect and never judges an answer other than through
//! [`super::connector`]'s checks.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::BodyDataStream;

use super::connector::{
    ByteStream, ConnectError, ConnectRequest, Connector, check_content_type, check_status,
};
use crate::backend::BackendClient;
use crate::body::{self, BoxError};

/// The HTTP connector: `GET <backend><events_path>` with the user's cookie.
pub struct HttpConnector {
    client: BackendClient,
    url: Uri,
    response_timeout: Duration,
}

impl HttpConnector {
    /// A connector for `url` (the full events URL).
    pub fn new(client: BackendClient, url: Uri, response_timeout: Duration) -> Self {
        HttpConnector {
            client,
            url,
            response_timeout,
        }
    }
}

impl Connector for HttpConnector {
    fn connect(&self, req: ConnectRequest) -> BoxFuture<'static, Result<ByteStream, ConnectError>> {
        let client = self.client.clone();
        let url = self.url.clone();
        let wait = self.response_timeout;
        Box::pin(async move {
            let mut builder = Request::get(url)
                .header(header::ACCEPT, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache");
            if let Ok(v) = HeaderValue::from_str(&req.cookie) {
                builder = builder.header(header::COOKIE, v);
            }
            if let Some(id) = req.last_event_id.as_deref() {
                // An id the backend sent but HTTP cannot carry is dropped
                // rather than failing the reconnect; the backend then
                // answers with a resync, which is the honest outcome.
                if let Ok(v) = HeaderValue::from_str(id) {
                    builder = builder.header("last-event-id", v);
                }
            }
            let request = builder
                .body(body::empty())
                .map_err(|e| ConnectError::Transport(e.to_string()))?;
            let resp = tokio::time::timeout(wait, client.request(request))
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(|e| ConnectError::Transport(e.to_string()))?;
            check_status(resp.status())?;
            check_content_type(
                resp.headers()
                    .get(header::CONTENT_TYPE)
                    .map_or(&[][..], |v| v.as_bytes()),
            )?;
            let stream = BodyDataStream::new(resp.into_body())
                .map(|r| r.map_err(|e| Box::new(e) as BoxError));
            Ok(Box::pin(stream) as ByteStream)
        })
    }
}
