//! Events: `GET /events`, one tab's multiplexed stream, as the named steps
//! of the data path — check the request, admit the client address, identify
//! the user (auth), subscribe to the user's channel (hub), attach and stream
//! (channel → tab). Each step either hands the next what it needs or gives
//! the answer the tab gets. This module never talks to the backend itself
//! (auth and the upstream do) and never serves another path.

pub mod auth;
pub mod channel;
pub mod hub;
pub mod jwt;
pub mod limit;
pub mod resume;
pub mod tab;
pub mod tab_conn;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tokio_util::sync::CancellationToken;

use self::auth::{Auth, Identity};
use self::channel::Subject;
use self::hub::{Hub, HubError, Subscription};
use self::limit::ConnectLimiter;
use self::tab::{TabHold, TabSettings};
use crate::backend::BackendUrl;
use crate::body::{self, Body};
use crate::config::{HubConfig, KeyConfig};
use crate::cookie;
use crate::credential::{self, query_values};
use crate::metrics::Metrics;
use crate::watermark::{self, Watermarks};

/// Longest a tab's stream waits for its user's first upstream connect.
const FIRST_UPSTREAM_WAIT: Duration = Duration::from_secs(2);

/// The events handler: handles to every part a tab passes through.
pub struct Events {
    /// Keepalive and `retry:` hint of the streams.
    pub hub_cfg: HubConfig,
    /// Identity lookup (shared with the read path).
    pub auth: Arc<Auth>,
    /// User → channel.
    pub hub: Hub,
    /// Connects per second per client address.
    pub connects: ConnectLimiter,
    /// Active peers of open tabs.
    pub watermarks: Watermarks,
    /// Deliveries and resyncs are counted here.
    pub metrics: Metrics,
    /// Ends every stream on graceful shutdown.
    pub shutdown: CancellationToken,
    /// The key parameters, and where streams come from.
    pub streams: Streams,
}

/// How a tab's request names its stream: the key parameters it must carry
/// and the `upstream.events_path` template they fill.
pub struct Streams {
    /// `[key]`.
    pub key: KeyConfig,
    /// `upstream.events_path`, with `{name}` placeholders.
    pub template: String,
    /// The backend base URL (its path prefix goes before the template).
    pub backend: BackendUrl,
}

impl Streams {
    /// The subject of a tab of `user` whose query is `query`, or the `400`
    /// it gets for a key parameter missing or out of pattern.
    fn subject(&self, user: &str, query: &str) -> Result<Subject, Refused> {
        let bad = |why: String| Box::new(body::text(StatusCode::BAD_REQUEST, &why));
        let mut key = user.to_string();
        let mut path = self.template.clone();
        for p in &self.key.params {
            let mut values = query_values(query, &p.name);
            let value = match (values.next(), values.next()) {
                (Some(_), Some(_)) => return Err(bad(format!("`{}` given twice", p.name))),
                (Some(v), None) if p.accepts(&v) => v,
                (Some(_), None) => return Err(bad(format!("invalid `{}`", p.name))),
                (None, _) if p.required => return Err(bad(format!("`{}` is required", p.name))),
                (None, _) => String::new(),
            };
            // A separator no user id or accepted value can contain (ids and
            // values are free of control characters).
            key.push('\u{1f}');
            key.push_str(&value);
            path = path.replace(&format!("{{{}}}", p.name), &credential::encode(&value));
        }
        let path = path.replace("{user}", &credential::encode(user));
        let uri = self
            .backend
            .join(&path)
            .map_err(|_| bad("the stream path cannot be built from this request".into()))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Subject {
            key,
            user: user.to_string(),
            path: path.into(),
            from: None,
        })
    }
}

/// The answer a tab gets instead of a stream (boxed: refusals are rare, and
/// a response is large to carry through every step's result).
type Refused = Box<Response<Body>>;

/// What a tab asked for besides its identity.
struct TabParams {
    /// Its tab id (`tab=`), if it named one.
    tab: Option<String>,
    /// Where it left off (`Last-Event-ID`, else `lastEventId=`).
    last_event_id: Option<String>,
}

impl Events {
    /// Serve one events request from `client` (its address as the server
    /// judged it) to the end of its answer's head; the body is the stream.
    pub async fn serve<B>(&self, req: Request<B>, client: IpAddr) -> Response<Body> {
        match self.open(req, client).await {
            Ok(stream) => stream,
            Err(refused) => *refused,
        }
    }

    async fn open<B>(&self, req: Request<B>, client: IpAddr) -> Result<Response<Body>, Refused> {
        check_request(&req)?;
        self.admit(client)?;
        let query = req.uri().query().unwrap_or("");
        let id = self
            .auth
            .identify_or_refuse(req.headers(), query)
            .await
            .map_err(Box::new)?;
        let params = tab_params(&req)?;
        let mut subject = self.streams.subject(&id.user, query)?;
        // A tab coming back to a channel that is gone (or on another
        // instance) carries where it stood: a new channel resumes there.
        subject.from = params
            .last_event_id
            .as_deref()
            .and_then(|id| resume::split_id(id.trim()).1)
            .zip(self.hub.resume_key())
            .and_then(|(token, key)| key.open(&subject.key, token));
        let subscription = self.subscribe(&subject, &id)?;
        self.stream(subscription, &id, params).await
    }

    /// The per-address connect limit, before any identity lookup: a
    /// reconnect loop costs neither a backend call nor a slot.
    fn admit(&self, client: IpAddr) -> Result<(), Refused> {
        self.connects
            .admit(client)
            .map_err(|wait| Box::new(limit::too_many(wait, "too many connects")))
    }

    /// A hold on the user's channel, or why there is none.
    fn subscribe(&self, subject: &Subject, id: &Identity) -> Result<Subscription, Refused> {
        self.hub.subscribe(subject, &id.credential).map_err(|e| {
            let (status, msg) = match e {
                HubError::TooManyTabs(_) => (StatusCode::TOO_MANY_REQUESTS, "too many tabs"),
                HubError::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "gateway full"),
                // Not a 5xx: EventSource gives up for good on an error
                // status. An empty stream that ends makes the browser come
                // back after `retry:` with its Last-Event-ID, to whichever
                // instance then answers.
                HubError::ShuttingDown => {
                    let retry = ssemux_sse::encode_retry(self.retry_ms());
                    return Box::new(event_stream(body::full(retry)));
                }
            };
            let mut r = body::text(status, msg);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            Box::new(r)
        })
    }

    /// Attach the tab to its channel and build its stream. A user's first
    /// tab opens its stream once the upstream is up (or after a short wait,
    /// then with a `resync` owed): the page refreshes when its stream opens,
    /// and nothing may fall between the two. A channel whose upstream
    /// refused its every credential meanwhile answers `401`, and the refusal
    /// is remembered for the next tab with that credential.
    async fn stream(
        &self,
        subscription: Subscription,
        id: &Identity,
        p: TabParams,
    ) -> Result<Response<Body>, Refused> {
        let mark = self
            .watermarks
            .tab_opened(&id.user, &watermark::tab_key(p.tab.as_deref(), id));
        let attach = subscription.channel().attach(p.last_event_id.as_deref());
        subscription
            .channel()
            .wait_for_upstream(FIRST_UPSTREAM_WAIT)
            .await;
        if subscription.channel().refused_before_up() {
            self.auth.refused_upstream(&id.credential);
            return Err(Box::new(body::text(
                StatusCode::UNAUTHORIZED,
                "not authenticated",
            )));
        }
        let settings = TabSettings {
            keepalive: self.hub_cfg.keepalive,
            retry_ms: self.retry_ms(),
            metrics: self.metrics.clone(),
        };
        let hold = TabHold {
            subscription,
            mark: Some(mark),
        };
        Ok(event_stream(tab::stream(
            hold,
            attach,
            settings,
            self.shutdown.clone(),
        )))
    }

    /// The `retry:` hint for one connection: the configured base plus up to
    /// as much again at random, so tabs cut at the same moment (a deploy, a
    /// network blip) come back spread out instead of in one burst.
    fn retry_ms(&self) -> u64 {
        let base = self.hub_cfg.retry_hint.as_millis() as u64;
        base + fastrand::u64(0..=base)
    }
}

/// Only `GET`, one `Host`, and a `Cookie` header of sane size: one this
/// large is a broken or hostile client, refused before asking the backend.
fn check_request<B>(req: &Request<B>) -> Result<(), Refused> {
    if req.method() != Method::GET {
        let mut r = body::text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Err(Box::new(r));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with two, is
    // refused (a proxy in front and ssemux could disagree about it).
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == http::Version::HTTP_11) {
        return Err(Box::new(body::text(
            StatusCode::BAD_REQUEST,
            "one Host header, please",
        )));
    }
    if req
        .uri()
        .query()
        .is_some_and(|q| q.len() > credential::MAX_CREDENTIAL_BYTES)
    {
        return Err(Box::new(body::text(
            StatusCode::URI_TOO_LONG,
            "query too long",
        )));
    }
    if cookie::cookie_header(req.headers()).is_some_and(|c| c.len() > cookie::MAX_COOKIE_BYTES) {
        return Err(Box::new(body::text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "cookie header too large",
        )));
    }
    Ok(())
}

fn tab_params<B>(req: &Request<B>) -> Result<TabParams, Refused> {
    let query = req.uri().query().unwrap_or("");
    let tab = match query_param(query, "tab") {
        Some(t) if !watermark::valid_tab_id(t) => {
            return Err(Box::new(body::text(
                StatusCode::BAD_REQUEST,
                "invalid tab id",
            )));
        }
        t => t.map(str::to_string),
    };
    // An id that is not text is garbage, not absent: the tab gets `resync`
    // (it has lost its place), never a silent fresh start.
    let last_event_id = match req.headers().get("last-event-id") {
        Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        None => query_param(query, "lastEventId").map(str::to_string),
    };
    Ok(TabParams { tab, last_event_id })
}

/// A `200 text/event-stream` response around `body`.
fn event_stream(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    // nginx in front must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A query parameter's raw value (ids and tab ids never need decoding).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("tab=a&lastEventId=e-1", "lastEventId"),
            Some("e-1")
        );
        assert_eq!(query_param("tab=a", "lastEventId"), None);
        assert_eq!(query_param("", "tab"), None);
    }
}
