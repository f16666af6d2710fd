//! Response and request body types shared by every module that speaks HTTP.
//! Owns nothing but type aliases and tiny constructors; must never buffer a
//! streamed body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Error type carried by boxed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type ssemux hands to hyper, both as server responses and as
/// client requests to the backend.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body with all bytes known up front.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short `text/plain` response; used for every error ssemux produces itself
/// so that clients never see an HTML error page.
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{msg}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
