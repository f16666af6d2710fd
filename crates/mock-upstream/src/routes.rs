//! HTTP routing and request handling for every route of the mock.
//!
//! Owns the mapping from requests to state operations and the shape of every
//! response. It must never panic on client input (bad input is a 4xx with a
//! short text body), never hold state locks itself, and never answer admin
//! routes to anything but a direct loopback peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::{Value, json};

use crate::assets::{self, Asset};
use crate::state::State;
use crate::stream::EventStream;
use crate::ui;
use crate::users::{contacts_of, is_valid_user};
use crate::wire::{SESSION_COOKIE, cookie, pair, parse_pairs, percent_decode};

/// Response body: a small buffered body, or an events stream.
pub type MockBody = Either<Full<Bytes>, EventStream>;

/// Request bodies above this are refused; nothing legitimate comes close.
const MAX_BODY: usize = 64 * 1024;

/// Cap for `/__admin/emit-batch`: a load generator's one-tick batch of a few
/// thousand short lines fits with room to spare.
const MAX_BATCH_BODY: usize = 4 * 1024 * 1024;

const FORM: &str = "application/x-www-form-urlencoded";

type Res = Response<MockBody>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Res {
    let mut res = Response::new(Either::Left(Full::new(body.into())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn text(status: StatusCode, msg: &'static str) -> Res {
    respond(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

fn json_res(status: StatusCode, v: &Value) -> Res {
    respond(status, "application/json", v.to_string())
}

fn html(body: String) -> Res {
    respond(StatusCode::OK, "text/html; charset=utf-8", body)
}

/// A refusal of bad input: status plus a short text body. Kept small so
/// helpers can return it in a `Result` cheaply.
struct Reject(StatusCode, &'static str);

impl From<Reject> for Res {
    fn from(Reject(status, msg): Reject) -> Res {
        text(status, msg)
    }
}

fn unauthorized() -> Res {
    text(StatusCode::UNAUTHORIZED, "not signed in")
}

fn bad(msg: &'static str) -> Reject {
    Reject(StatusCode::BAD_REQUEST, msg)
}

fn bad_request(msg: &'static str) -> Res {
    text(StatusCode::BAD_REQUEST, msg)
}

/// Answers one request. `peer` is the TCP peer, used only for the admin gate.
pub async fn handle<B>(state: Arc<State>, req: Request<B>, peer: SocketAddr) -> Res
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path == "/__admin" || path.starts_with("/__admin/") {
        if !admin_allowed(req.headers(), peer) {
            return text(StatusCode::NOT_FOUND, "not found");
        }
        return admin(&state, req, &path).await;
    }
    match (method, path.as_str()) {
        (Method::GET, "/") => index(&state, req.headers(), flavor(&req)),
        (Method::POST, "/login") => login(&state, req).await,
        (Method::POST, "/logout") => logout(&state, req.headers(), flavor(&req)),
        (Method::GET, "/api/v1/me") => match session_user(&state, req.headers()) {
            Some(user) => json_res(StatusCode::OK, &json!({ "id": user })),
            None => unauthorized(),
        },
        (Method::GET, "/api/v1/events") => events(&state, req.headers()),
        (Method::POST, "/api/v1/messages") => send_message(&state, req).await,
        (Method::POST, "/api/v1/contacts/read") => mark_read(&state, req).await,
        (Method::GET, "/fragments/sidebar") => match session_user(&state, req.headers()) {
            Some(me) => html(sidebar_html(&state, &me, flavor(&req))),
            None => unauthorized(),
        },
        (Method::GET, p) if p.starts_with("/fragments/thread/") => thread(
            &state,
            req.headers(),
            &p["/fragments/thread/".len()..],
            flavor(&req),
        ),
        (Method::GET, p) if p.starts_with("/static/") => static_asset(&p["/static/".len()..]).await,
        (
            _,
            "/"
            | "/login"
            | "/logout"
            | "/api/v1/me"
            | "/api/v1/events"
            | "/api/v1/messages"
            | "/api/v1/contacts/read"
            | "/fragments/sidebar",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// A proxy in front always adds `X-Forwarded-For`, so its absence plus a
/// loopback peer means the caller is a local process talking to us directly.
fn admin_allowed(headers: &HeaderMap, peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback() && !headers.contains_key("x-forwarded-for")
}

fn session_token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty())
}

fn session_user(state: &State, headers: &HeaderMap) -> Option<String> {
    state.session_user(session_token(headers)?)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start()
        .to_ascii_lowercase()
}

fn is_form(headers: &HeaderMap) -> bool {
    content_type(headers).starts_with(FORM)
}

async fn read_body<B>(body: B) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    read_body_capped(body, MAX_BODY).await
}

async fn read_body_capped<B>(body: B, cap: usize) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, cap).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(_) => Err(Reject(
            StatusCode::BAD_REQUEST,
            "could not read request body",
        )),
    }
}

/// Fields of a JSON object body or an url-encoded form body.
enum Input {
    Json(serde_json::Map<String, Value>),
    Form(Vec<(String, String)>),
}

impl Input {
    async fn read<B>(req: Request<B>) -> Result<Input, Reject>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared_json = content_type(req.headers()).contains("json");
        let bytes = read_body(req.into_body()).await?;
        // `curl -d '{..}'` labels JSON as a form; a form field can never start
        // with `{`, so the body's first byte settles it unless JSON was declared.
        let looks_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let form = !declared_json && !looks_json;
        if form {
            let s = std::str::from_utf8(&bytes).map_err(|_| bad("form is not UTF-8"))?;
            let pairs = parse_pairs(s).ok_or(bad("malformed form"))?;
            Ok(Input::Form(pairs))
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => Ok(Input::Json(m)),
                Ok(_) => Err(bad("expected a JSON object")),
                Err(_) => Err(bad("malformed JSON")),
            }
        }
    }

    fn is_form(&self) -> bool {
        matches!(self, Input::Form(_))
    }

    fn str(&self, key: &str) -> Option<&str> {
        match self {
            Input::Json(m) => m.get(key)?.as_str(),
            Input::Form(p) => pair(p, key),
        }
    }

    fn u64(&self, key: &str) -> Option<u64> {
        match self {
            Input::Json(m) => m.get(key)?.as_u64(),
            Input::Form(p) => pair(p, key)?.trim().parse().ok(),
        }
    }
}

fn session_cookie(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Path=/; SameSite=Lax"
    ))
    .ok()
}

fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static("session=; HttpOnly; Path=/; SameSite=Lax; Max-Age=0")
}

fn see_other(to: &'static str) -> Res {
    let mut res = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    res.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    res
}

async fn login<B>(state: &State, req: Request<B>) -> Res
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let input = match Input::read(req).await {
        Ok(i) => i,
        Err(r) => return r.into(),
    };
    let Some(user) = input.str("user").map(str::trim) else {
        return bad_request("missing user");
    };
    if !is_valid_user(user) {
        return text(StatusCode::UNAUTHORIZED, "unknown user");
    }
    let token = state.create_session(user);
    let Some(cookie) = session_cookie(&token) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "bad session token");
    };
    let mut res = if input.is_form() {
        // The sign-in form carries the page's htmx flavour so the redirect
        // lands on the same one.
        see_other(home(ui::Flavor::from_param(input.str("htmx"))))
    } else {
        json_res(StatusCode::OK, &json!({ "id": user }))
    };
    res.headers_mut().insert(SET_COOKIE, cookie);
    res
}

fn logout(state: &State, headers: &HeaderMap, flavor: ui::Flavor) -> Res {
    if let Some(token) = session_token(headers) {
        state.revoke_session(token);
    }
    let mut res = if is_form(headers) {
        see_other(home(flavor))
    } else {
        json_res(StatusCode::OK, &json!({}))
    };
    res.headers_mut().insert(SET_COOKIE, cleared_cookie());
    res
}

fn events(state: &Arc<State>, headers: &HeaderMap) -> Res {
    let Some(user) = session_user(state, headers) else {
        return unauthorized();
    };
    // Browsers omit an empty id; treat an empty header the same way.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    state.record_request(&user, last_event_id);
    if state.is_closed() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if let Some(status) = state.refusal() {
        return respond(status, "text/plain; charset=utf-8", "refused by mock\n");
    }
    let stream = EventStream::open(state, &user, last_event_id);
    let mut res = Response::new(Either::Right(stream));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

async fn send_message<B>(state: &State, req: Request<B>) -> Res
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(me) = session_user(state, req.headers()) else {
        return unauthorized();
    };
    let input = match Input::read(req).await {
        Ok(i) => i,
        Err(r) => return r.into(),
    };
    let Some(to) = input.str("to") else {
        return bad_request("missing to");
    };
    if !is_valid_user(to) {
        return bad_request("unknown recipient");
    }
    let Some(text_) = input.str("text") else {
        return bad_request("missing text");
    };
    // Nothing to show but an empty bubble.
    if text_.trim().is_empty() {
        return bad_request("empty message");
    }
    let row_id = state.send_message(&me, to, text_);
    json_res(StatusCode::OK, &json!({ "rowId": row_id }))
}

async fn mark_read<B>(state: &State, req: Request<B>) -> Res
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(me) = session_user(state, req.headers()) else {
        return unauthorized();
    };
    let input = match Input::read(req).await {
        Ok(i) => i,
        Err(r) => return r.into(),
    };
    let Some(peer) = input.str("peer") else {
        return bad_request("missing peer");
    };
    if !is_valid_user(peer) {
        return bad_request("unknown peer");
    }
    let Some(row_id) = input.u64("rowId") else {
        return bad_request("rowId must be a non-negative integer");
    };
    let stored = state.mark_read(&me, peer, row_id);
    json_res(StatusCode::OK, &json!({ "peer": peer, "rowId": stored }))
}

fn sidebar_contacts(state: &State, me: &str) -> Vec<(&'static str, usize)> {
    state.with_chat(|chat| contacts_of(me).map(|p| (p, chat.unread(me, p))).collect())
}

fn sidebar_html(state: &State, me: &str, flavor: ui::Flavor) -> String {
    let counts = sidebar_contacts(state, me);
    let contacts: Vec<ui::Contact<'_>> = counts
        .iter()
        .map(|&(peer, unread)| ui::Contact { peer, unread })
        .collect();
    ui::sidebar(flavor, &contacts)
}

fn index(state: &State, headers: &HeaderMap, flavor: ui::Flavor) -> Res {
    let Some(me) = session_user(state, headers) else {
        return html(ui::login_page(flavor));
    };
    let counts = sidebar_contacts(state, &me);
    let contacts: Vec<ui::Contact<'_>> = counts
        .iter()
        .map(|&(peer, unread)| ui::Contact { peer, unread })
        .collect();
    // One id per page load: the gateway keys the tab's open thread by it.
    let tab = format!("{:016x}", fastrand::u64(..));
    html(ui::app_page(flavor, &me, &tab, &contacts))
}

fn thread(state: &State, headers: &HeaderMap, raw_peer: &str, flavor: ui::Flavor) -> Res {
    let Some(me) = session_user(state, headers) else {
        return unauthorized();
    };
    let Some(peer) = percent_decode(raw_peer).filter(|p| is_valid_user(p)) else {
        return bad_request("unknown peer");
    };
    let body = state.with_chat(|chat| {
        ui::thread(
            flavor,
            &ui::ThreadView {
                me: &me,
                peer: &peer,
                messages: chat.thread(&me, &peer),
                my_watermark: chat.watermark(&me, &peer),
                peer_watermark: chat.watermark(&peer, &me),
            },
        )
    });
    html(body)
}

/// The htmx flavour a page or fragment request asks for (`?htmx=4`); a
/// malformed query just means the default.
fn flavor<B>(req: &Request<B>) -> ui::Flavor {
    let q = parse_pairs(req.uri().query().unwrap_or("")).unwrap_or_default();
    ui::Flavor::from_param(pair(&q, "htmx"))
}

/// Where sign-in and sign-out land.
fn home(flavor: ui::Flavor) -> &'static str {
    match flavor {
        ui::Flavor::Htmx2 => "/",
        ui::Flavor::Htmx4 => "/?htmx=4",
    }
}

/// `GET /static/<name>`: one of the UI's fixed assets, read from disk off
/// the async threads.
async fn static_asset(name: &str) -> Res {
    let name = name.to_owned();
    let asset = match tokio::task::spawn_blocking(move || assets::load(&name)).await {
        Ok(a) => a,
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "asset read failed"),
    };
    match asset {
        Asset::Found(bytes, ctype) => {
            let mut res = respond(StatusCode::OK, ctype, bytes);
            res.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            res
        }
        Asset::Unknown => text(StatusCode::NOT_FOUND, "not found"),
        Asset::Missing(why) => respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", why),
        Asset::Unreadable(why) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            why,
        ),
    }
}

fn query(req: &Request<impl Body>) -> Result<Vec<(String, String)>, Reject> {
    parse_pairs(req.uri().query().unwrap_or("")).ok_or(bad("malformed query"))
}

fn query_ms(q: &[(String, String)], default: u64) -> Result<Duration, Reject> {
    match pair(q, "ms") {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| bad("ms must be a non-negative integer")),
    }
}

async fn admin<B>(state: &State, req: Request<B>, path: &str) -> Res
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let q = match query(&req) {
        Ok(q) => q,
        Err(r) => return r.into(),
    };
    let ok = || json_res(StatusCode::OK, &json!({ "ok": true }));
    match (req.method().clone(), path) {
        (Method::GET, "/__admin/stats") => json_res(StatusCode::OK, &state.stats_json()),
        (Method::POST, "/__admin/drop") => {
            state.drop_streams();
            ok()
        }
        (Method::POST, "/__admin/refuse") => {
            let status = match pair(&q, "status").map(str::parse::<u16>) {
                None => StatusCode::SERVICE_UNAVAILABLE,
                Some(Ok(n)) if (200..=599).contains(&n) => match StatusCode::from_u16(n) {
                    Ok(s) => s,
                    Err(_) => return bad_request("bad status"),
                },
                Some(_) => return bad_request("status must be 200..=599"),
            };
            match query_ms(&q, 2000) {
                Ok(d) => {
                    state.refuse_streams(status, d);
                    ok()
                }
                Err(r) => r.into(),
            }
        }
        (Method::POST, "/__admin/stall") => match query_ms(&q, 5000) {
            Ok(d) => {
                state.stall_streams(d);
                ok()
            }
            Err(r) => r.into(),
        },
        (Method::POST, "/__admin/restart") => {
            json_res(StatusCode::OK, &json!({ "epoch": state.restart() }))
        }
        (Method::POST, "/__admin/emit") => {
            let Some(user) = pair(&q, "user").filter(|u| is_valid_user(u)) else {
                return bad_request("user must be a known user");
            };
            let Some(event) =
                pair(&q, "event").filter(|e| !e.is_empty() && !e.contains(['\r', '\n']))
            else {
                return bad_request("event must be a non-empty single line");
            };
            let (user, event) = (user.to_owned(), event.to_owned());
            let bytes = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(r) => return r.into(),
            };
            let Ok(data) = std::str::from_utf8(&bytes) else {
                return bad_request("data must be UTF-8");
            };
            json_res(
                StatusCode::OK,
                &json!({ "id": state.emit(&user, &event, data) }),
            )
        }
        (Method::POST, "/__admin/emit-batch") => {
            let bytes = match read_body_capped(req.into_body(), MAX_BATCH_BODY).await {
                Ok(b) => b,
                Err(r) => return r.into(),
            };
            match emit_batch(state, &bytes) {
                Ok(count) => json_res(StatusCode::OK, &json!({ "count": count })),
                Err(r) => r.into(),
            }
        }
        (
            _,
            "/__admin/stats"
            | "/__admin/drop"
            | "/__admin/refuse"
            | "/__admin/stall"
            | "/__admin/restart"
            | "/__admin/emit"
            | "/__admin/emit-batch",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `POST /__admin/emit-batch`: one event per line, `user<TAB>event<TAB>data`,
/// so a load generator can emit a whole tick's events in one request. Every
/// line is checked before any is emitted: a bad batch emits nothing.
fn emit_batch(state: &State, body: &[u8]) -> Result<usize, Reject> {
    let text = std::str::from_utf8(body).map_err(|_| bad("batch must be UTF-8"))?;
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, '\t');
        let (Some(user), Some(event), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("each line must be user<TAB>event<TAB>data"));
        };
        if !is_valid_user(user) {
            return Err(bad("user must be a known user"));
        }
        if event.is_empty() || event.contains('\r') {
            return Err(bad("event must be a non-empty single line"));
        }
        events.push((user, event, data));
    }
    for (user, event, data) in &events {
        state.emit(user, event, data);
    }
    Ok(events.len())
}
