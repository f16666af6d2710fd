use super::*;
use crate::parse::{Event, Item, Parser};

fn parse_all(bytes: &[u8]) -> Vec<Item> {
    let mut p = Parser::new(1 << 20);
    p.push(bytes);
    let mut out = Vec::new();
    while let Some(item) = p.next_item() {
        out.push(item.expect("no oversize at this cap"));
    }
    out
}

/// What the parser must return for `data`: line terminators become LF, NUL
/// becomes U+FFFD.
fn normalise(data: &str) -> String {
    data.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\0', "\u{FFFD}")
}

fn one_event(id: Option<&str>, event: Option<&str>, data: &str) -> Event {
    let bytes = encode_event(id, event, data).expect("valid fields");
    let items = parse_all(&bytes);
    match items.as_slice() {
        [Item::Event(ev)] => ev.clone(),
        other => panic!("expected one event for {data:?}, got {other:?}"),
    }
}

#[test]
fn encodes_exact_frame() {
    assert_eq!(
        encode_event(Some("1"), Some("ping"), "a").as_deref(),
        Ok(&b"id: 1\nevent: ping\ndata: a\n\n"[..])
    );
    assert_eq!(
        encode_event(None, None, "").as_deref(),
        Ok(&b"data: \n\n"[..])
    );
    assert_eq!(
        encode_event(None, None, "a\r\nb\rc\nd\0").as_deref(),
        Ok(&b"data: a\ndata: b\ndata: c\ndata: d\xEF\xBF\xBD\n\n"[..])
    );
}

#[test]
fn injection_in_data_cannot_create_fields() {
    let data = "a\nevent: evil\nid: 9\r\nretry: 1\rdata: x\0y\n\nid: 10\r\n\r\nz";
    let bytes = encode_event(None, None, data).expect("data is always encodable");
    let items = parse_all(&bytes);
    assert_eq!(
        items,
        vec![Item::Event(Event {
            event: "message".into(),
            data: normalise(data),
            last_event_id: String::new(),
            has_id: false,
        })]
    );
    assert!(normalise(data).contains("x\u{FFFD}y"));
}

#[test]
fn invalid_event_name_rejected() {
    for name in ["", "a\nb", "a\rb", "a\0b", "\n", "ping\r\n"] {
        assert_eq!(
            encode_event(None, Some(name), "x"),
            Err(EncodeError::InvalidEventName),
            "{name:?}"
        );
    }
}

#[test]
fn invalid_id_rejected() {
    for id in ["a\nb", "a\rb", "a\0b", "\r\n"] {
        assert_eq!(
            encode_event(Some(id), None, "x"),
            Err(EncodeError::InvalidId),
            "{id:?}"
        );
    }
    // An empty id is valid: it resets the client's last event id.
    let ev = one_event(Some(""), None, "x");
    assert!(ev.has_id);
    assert_eq!(ev.last_event_id, "");
}

#[test]
fn comment_sanitised() {
    assert_eq!(&encode_comment("ka")[..], b": ka\n\n");
    assert_eq!(&encode_comment("")[..], b": \n\n");
    let c = encode_comment("a\r\nb\nc\rd\0e\n\ndata: x");
    assert_eq!(&c[..], b": a b c d e  data: x\n\n");
    assert_eq!(parse_all(&c), vec![]);
}

#[test]
fn retry_frame() {
    assert_eq!(&encode_retry(3000)[..], b"retry: 3000\n\n");
    assert_eq!(parse_all(&encode_retry(0)), vec![Item::Retry(0)]);
    assert_eq!(
        parse_all(&encode_retry(u64::MAX)),
        vec![Item::Retry(u64::MAX)]
    );
}

const TABLE: &[&str] = &[
    "",
    "plain",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "a\nb",
    "a\rb",
    "a\r\nb",
    "\n",
    "\r",
    "\r\n",
    "\n\r",
    "\r\r\n\n",
    "line\n",
    "\n\nevent: evil\n\n",
    "x\0y",
    "\0",
    ": comment",
    "data: nested",
    "id: 5",
    "caf\u{e9} \u{1F600}",
    "\u{FEFF}bom",
    "\u{FFFD}",
    "tab\there",
];

#[test]
fn round_trip_table() {
    for data in TABLE {
        let ev = one_event(None, None, data);
        assert_eq!(ev.data, normalise(data), "{data:?}");
        for name in TABLE
            .iter()
            .filter(|s| !s.is_empty() && !s.bytes().any(is_unsafe))
        {
            let ev = one_event(Some(name), Some(name), data);
            assert_eq!(ev.event, *name);
            assert_eq!(ev.last_event_id, *name);
            assert!(ev.has_id);
            assert_eq!(ev.data, normalise(data));
        }
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is tiny, so the modulo bias does not matter here.
        (self.next() % n as u64) as usize
    }

    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            " ",
            ":",
            "\n",
            "\r",
            "\r\n",
            "\0",
            "\u{e9}",
            "\u{1F600}",
            "data:",
            "id: 1",
            "event: x",
            "retry: 5",
            "\u{FEFF}",
            "\t",
            ":",
        ];
        let len = self.below(8);
        (0..len).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    fn maybe_string(&mut self) -> Option<String> {
        (self.below(3) != 0).then(|| self.string())
    }
}

#[test]
fn round_trip_random() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut last_id = String::new();
    let mut rejected = 0;
    for _ in 0..5000 {
        let id = rng.maybe_string();
        let event = rng.maybe_string();
        let data = rng.string();
        let result = encode_event(id.as_deref(), event.as_deref(), &data);
        let bad_event = event
            .as_deref()
            .is_some_and(|e| e.is_empty() || e.bytes().any(is_unsafe));
        let bad_id = id.as_deref().is_some_and(|i| i.bytes().any(is_unsafe));
        let bytes = match result {
            Err(e) => {
                let want = if bad_event {
                    EncodeError::InvalidEventName
                } else {
                    EncodeError::InvalidId
                };
                assert!(bad_event || bad_id, "rejected valid input: {e}");
                assert_eq!(e, want);
                rejected += 1;
                continue;
            }
            Ok(bytes) => bytes,
        };
        assert!(!bad_event && !bad_id, "accepted {id:?} {event:?}");
        if let Some(id) = &id {
            last_id.clone_from(id);
        }
        let want = Event {
            event: event.unwrap_or_else(|| "message".into()),
            data: normalise(&data),
            last_event_id: last_id.clone(),
            has_id: id.is_some(),
        };
        stream.extend_from_slice(&bytes);
        expected.push(Item::Event(want));
    }
    // Both outcomes must actually be exercised.
    assert!(
        rejected > 100 && expected.len() > 1000,
        "{rejected} {}",
        expected.len()
    );

    // The frames back to back, in odd-sized chunks: no frame bleeds into the next.
    let mut p = Parser::new(1 << 20);
    let mut got = Vec::new();
    for chunk in stream.chunks(7) {
        p.push(chunk);
        while let Some(item) = p.next_item() {
            got.push(item.expect("no oversize"));
        }
    }
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
    assert_eq!(p.last_event_id(), last_id);
}
