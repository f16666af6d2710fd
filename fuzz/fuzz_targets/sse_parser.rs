//! The upstream SSE parser under arbitrary bytes and arbitrary chunking:
//! never panics, produces the same items however the bytes are cut, and
//! keeps its buffers bounded by the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssemux_sse::{Item, ParseError, Parser};

fn run(cap: usize, chunks: &[&[u8]]) -> Vec<Result<Item, ParseError>> {
    let mut p = Parser::new(cap);
    let mut out = Vec::new();
    for c in chunks {
        p.push(c);
        while let Some(item) = p.next_item() {
            if let Ok(Item::Event(e)) = &item {
                // "message" is the parser's default name, not input.
                let name = if e.event == "message" { 0 } else { e.event.len() };
                assert!(e.data.len() + name <= cap, "{e:?}");
                assert!(!e.last_event_id.contains('\0'));
            }
            out.push(item);
        }
        // Once the items are taken, only the held line and the event being
        // built remain, each bounded by the cap. (Items not yet taken are
        // not bounded by it: each event carries its own copy of the last
        // id, so one chunk of many tiny events after a long id queues that
        // id many times over; see docs/security.md.)
        assert!(
            p.buffered_bytes() <= 2 * cap + 16,
            "buffered {} with cap {cap}",
            p.buffered_bytes()
        );
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&head, rest)) = input.split_first() else {
        return;
    };
    let cap = 8 + usize::from(head & 0x7f) * 4;
    let step = usize::from(head >> 5) + 1;
    let whole = run(cap, &[rest]);
    let cut: Vec<&[u8]> = rest.chunks(step).collect();
    assert_eq!(run(cap, &cut), whole, "chunks of {step}");
    let bytewise: Vec<&[u8]> = rest.chunks(1).collect();
    assert_eq!(run(cap, &bytewise), whole, "byte by byte");
});
