//! The SSE encoder under arbitrary ids, event names and data: never panics,
//! every accepted frame uses only `id`/`event`/`data` lines, and parsing it
//! gives back exactly what was encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssemux_sse::{Item, Parser, encode_comment, encode_event};

fuzz_target!(|input: (Option<String>, Option<String>, String)| {
    let (id, event, data) = input;
    let comment = encode_comment(&data);
    let mut p = Parser::new(1 << 20);
    p.push(&comment);
    assert!(p.next_item().is_none(), "a comment produced an item");

    let Ok(frame) = encode_event(id.as_deref(), event.as_deref(), &data) else {
        let bad = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains(['\r', '\n', '\0']));
        assert!(bad(&id) || bad(&event) || event.as_deref() == Some(""));
        return;
    };
    let text = std::str::from_utf8(&frame).expect("encoder wrote UTF-8");
    let body = text.strip_suffix("\n\n").expect("frame ends with a blank line");
    for line in body.split('\n') {
        assert!(
            line.starts_with("id: ") || line.starts_with("event: ") || line.starts_with("data: "),
            "{line:?}"
        );
        assert!(!line.contains(['\r', '\0']));
    }
    let mut p = Parser::new(usize::MAX);
    p.push(&frame);
    let Some(Ok(Item::Event(ev))) = p.next_item() else {
        panic!("no event parsed from {text:?}");
    };
    assert!(p.next_item().is_none());
    assert_eq!(ev.event, event.unwrap_or_else(|| "message".into()));
    let want = data
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\0', "\u{FFFD}");
    assert_eq!(ev.data, want);
    assert_eq!(ev.last_event_id, id.unwrap_or_default());
});
