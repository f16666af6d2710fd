//! Translation of arbitrary upstream events (any name, any data, JSON or
//! not) followed by the channel's one-time encoding: never panics, and every
//! frame a tab would get is safe SSE with a valid trigger name and one line
//! of non-empty data.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ssemux_gateway::{
    Channel, MAX_DATA_BYTES, Rule, Rules, Translation, TriggerRule, translate, valid_name,
};
use ssemux_sse::{Item, Parser};

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut r = Rules::default();
        r.rules.push(Rule {
            event: "custom".into(),
            triggers: vec![
                TriggerRule {
                    name: "row".into(),
                    data_field: Some("rowId".into()),
                    data: None,
                },
                TriggerRule {
                    name: "x.y_z:w-1".into(),
                    data_field: Some("x".into()),
                    data: Some("fallback\r\n".into()),
                },
            ],
        });
        r
    })
}

fuzz_target!(|input: (String, String)| {
    let (event, data) = input;
    let ch = Channel::with_epoch("u", "ep", 8, 64);
    let mut rx = ch.attach(None).rx;
    // The fuzzer finds event names slowly: also try the data under each
    // known name.
    let mut names = vec![event.as_str()];
    names.extend(rules().rules.iter().map(|r| r.event.as_str()));
    for name in names {
        if let Translation::Triggers(ts) = translate(rules(), name, &data) {
            for t in &ts {
                assert!(valid_name(&t.name));
                assert!(!t.data.is_empty() && t.data.len() <= MAX_DATA_BYTES);
                assert!(!t.data.chars().any(char::is_control), "{:?}", t.data);
            }
            ch.publish(&ts);
        }
    }
    let mut wire = Vec::new();
    while let Ok(f) = rx.try_recv() {
        wire.extend_from_slice(&f.bytes);
    }
    let text = std::str::from_utf8(&wire).expect("UTF-8");
    for line in text.split('\n') {
        assert!(
            line.is_empty()
                || line.starts_with("id: ")
                || line.starts_with("event: ")
                || line.starts_with("data: "),
            "{line:?}"
        );
    }
    let mut p = Parser::new(1 << 20);
    p.push(&wire);
    while let Some(item) = p.next_item() {
        let Ok(Item::Event(e)) = item else {
            panic!("unexpected item");
        };
        assert!(valid_name(&e.event) && e.has_id && !e.data.contains('\n'));
    }
});
