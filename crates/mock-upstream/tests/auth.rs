//! Login, `/api/v1/me`, logout and 401s over real sockets.

mod common;

use common::*;
use http::{Method, StatusCode};

fn session_from(reply: &Reply) -> String {
    let sc = reply.header("set-cookie").expect("set-cookie");
    assert!(sc.contains("HttpOnly"), "{sc}");
    assert!(sc.contains("Path=/"), "{sc}");
    assert!(sc.contains("SameSite=Lax"), "{sc}");
    let v = sc
        .strip_prefix("session=")
        .and_then(|s| s.split(';').next())
        .expect("session cookie");
    assert_eq!(v.len(), 32, "{v}");
    assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
    v.to_owned()
}

#[tokio::test]
async fn json_login_me_logout() {
    let mock = start().await;
    let c = client();
    let base = mock.url();

    let r = post_json(&c, &format!("{base}/login"), None, r#"{"user":"alice"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"id": "alice"}));
    let token = session_from(&r);

    let me = get(&c, &format!("{base}/api/v1/me"), Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.header("content-type"), Some("application/json"));
    assert_eq!(me.json(), serde_json::json!({"id": "alice"}));

    let out = send(
        &c,
        request(
            Method::POST,
            &format!("{base}/logout"),
            Some(&token),
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));

    let me = get(&c, &format!("{base}/api/v1/me"), Some(&token)).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn form_login_redirects_and_numbered_users_work() {
    let mock = start().await;
    let c = client();
    let h = [("content-type", "application/x-www-form-urlencoded")];
    let r = send(
        &c,
        request(
            Method::POST,
            &format!("{}/login", mock.url()),
            None,
            &h,
            "user=user42",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), Some("/"));
    let token = session_from(&r);
    let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(&token)).await;
    assert_eq!(me.json(), serde_json::json!({"id": "user42"}));
}

#[tokio::test]
async fn bad_logins_and_missing_sessions_are_refused() {
    let mock = start().await;
    let c = client();
    let login = format!("{}/login", mock.url());

    let r = post_json(&c, &login, None, r#"{"user":"mallory"}"#).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("set-cookie").is_none());
    assert_eq!(
        post_json(&c, &login, None, r#"{"nope":1}"#).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post_json(&c, &login, None, "{not json").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post_json(&c, &login, None, "[1]").await.status,
        StatusCode::BAD_REQUEST
    );
    let h = [("content-type", "application/x-www-form-urlencoded")];
    let r = send(&c, request(Method::POST, &login, None, &h, "user=%zz")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    for path in [
        "/api/v1/me",
        "/api/v1/events",
        "/fragments/sidebar",
        "/fragments/thread/bob",
    ] {
        let url = format!("{}{path}", mock.url());
        assert_eq!(
            get(&c, &url, None).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            get(&c, &url, Some("0123456789abcdef0123456789abcdef"))
                .await
                .status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // Unauthenticated events requests are neither streams nor recorded.
    assert_eq!(mock.streams_opened_total(), 0);
}

#[tokio::test]
async fn library_sessions_match_http_ones() {
    let mock = start().await;
    let c = client();
    let token = mock.create_session("bob");
    let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(&token)).await;
    assert_eq!(me.json(), serde_json::json!({"id": "bob"}));
    mock.revoke_session(&token);
    let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(&token)).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forgetting_sessions_signs_everyone_out_like_a_restart() {
    let mock = start().await;
    let c = client();
    let (alice, bob) = (mock.create_session("alice"), mock.create_session("bob"));
    let mut s = open_events(&c, &mock.url(), &alice, None).await;
    assert!(
        mock.wait_until(SOON, |m| m.open_streams("alice") == 1)
            .await
    );
    mock.forget_sessions();
    for token in [&alice, &bob] {
        let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(token)).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    }
    let r = post_json(
        &c,
        &format!("{}/api/v1/messages", mock.url()),
        Some(&alice),
        r#"{"to":"bob","text":"after the restart"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // An open stream is not ended: only new requests are refused.
    mock.emit("alice", "marker", "m");
    assert_eq!(s.next().await.event, "marker");
    let fresh = mock.create_session("alice");
    let me = get(&c, &format!("{}/api/v1/me", mock.url()), Some(&fresh)).await;
    assert_eq!(me.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let mock = start().await;
    let c = client();
    assert_eq!(
        get(&c, &format!("{}/nope", mock.url()), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = send(
        &c,
        request(
            Method::DELETE,
            &format!("{}/api/v1/me", mock.url()),
            None,
            &[],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
