//! Configuration reload, called directly: new translation rules apply to the
//! next upstream event on streams that stay open, tab limits to the next
//! tab; a configuration that does not validate changes nothing; sections that need a restart are named.

mod common;

use common::{Env, WAIT};
use ssemux_gateway::Config;
use ssemux_gateway::{Rule, Rules, TriggerRule};

fn rules_inbound_to(name: &str) -> Rules {
    Rules {
        rules: vec![Rule {
            event: "inbound".into(),
            when: None,
            pass: false,
            rename: None,
            coalesce: false,
            triggers: vec![TriggerRule {
                name: name.into(),
                data_field: Some("peer".into()),
                data: None,
            }],
        }],
    }
}

#[tokio::test]
async fn new_rules_apply_to_open_streams_and_bad_ones_are_refused() {
    let env = Env::start(&[]).await;
    let alice = env.cookie("alice");
    let mut tab = env.tab(&alice).await;
    assert!(
        env.backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    env.backend.send_message("bob", "alice", "one");
    assert_eq!(
        tab.until("thread-updated")
            .await
            .last()
            .map(|e| e.data.clone()),
        Some("bob".into())
    );

    // The file as an operator would edit it; same backend, new rules.
    let mut cfg = Config::from_parts("", Vec::new(), &[format!("backend={}", env.backend.url())])
        .expect("config");
    cfg.translate = rules_inbound_to("new-message");
    let r = env.gateway.reload(&cfg).expect("reload accepted");
    assert_eq!(r.applied, vec!["translate"]);
    assert!(r.need_restart.is_empty(), "{:?}", r.need_restart);

    env.backend.send_message("carol", "alice", "two");
    let seen = tab.until("new-message").await;
    assert_eq!(seen.last().map(|e| e.data.as_str()), Some("carol"));
    assert!(
        seen.iter().all(|e| e.event != "thread-updated"),
        "old rules still in use: {seen:?}"
    );
    // Same stream, same upstream: nothing was reopened.
    assert_eq!(env.backend.streams_opened_total(), 1);

    // A trigger name htmx cannot parse: refused, the rules in force stay.
    let mut bad = cfg.clone();
    bad.translate = rules_inbound_to("new message");
    let err = env.gateway.reload(&bad).expect_err("bad rules refused");
    assert!(err.to_string().contains("translate"), "{err}");
    env.backend.send_message("bob", "alice", "three");
    assert_eq!(
        tab.until("new-message")
            .await
            .last()
            .map(|e| e.data.as_str()),
        Some("bob")
    );

    // Tab limits apply to the next tab; the open one stays.
    let mut limited = cfg.clone();
    limited.hub.max_tabs_per_user = 1;
    let r = env.gateway.reload(&limited).expect("reload");
    assert_eq!(r.applied, vec!["hub limits"]);
    assert!(r.need_restart.is_empty(), "{:?}", r.need_restart);
    assert_eq!(
        common::Tab::open(env.addr, "/events", &alice, None)
            .await
            .err(),
        Some(http::StatusCode::TOO_MANY_REQUESTS)
    );
    env.backend.send_message("bob", "alice", "four");
    assert_eq!(
        tab.until("new-message")
            .await
            .last()
            .map(|e| e.data.as_str()),
        Some("bob")
    );
    env.gateway.reload(&cfg).expect("limits back");
    let _second = env.tab(&alice).await;

    // A section that cannot change at run time is reported, not applied.
    let mut later = cfg.clone();
    later.hub.grace = std::time::Duration::from_secs(99);
    let r = env.gateway.reload(&later).expect("reload");
    assert!(r.applied.is_empty());
    assert_eq!(r.need_restart, vec!["hub"]);
}
