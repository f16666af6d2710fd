//! Property tests of the SSE wire format: what the encoder writes, the parser
//! reads back unchanged; no value can add a field; and how the bytes are cut
//! into chunks never changes what the parser produces.
//!
//! Case counts are kept moderate so the suite runs in seconds in CI.

use proptest::prelude::*;
use ssemux_sse::{EncodeError, Event, Item, ParseError, Parser, encode_comment, encode_event};

/// Everything a parser produces for `chunks`, in order.
fn parse_chunks<'a>(
    cap: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<Item, ParseError>> {
    let mut p = Parser::new(cap);
    let mut out = Vec::new();
    for c in chunks {
        p.push(c);
        while let Some(item) = p.next_item() {
            out.push(item);
        }
    }
    out
}

fn events(items: &[Result<Item, ParseError>]) -> Vec<Event> {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(Item::Event(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Cut `bytes` at the (sorted, deduplicated) positions `cuts`.
fn split_at_cuts(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(bytes[start..c].to_vec());
        start = c;
    }
    out.push(bytes[start..].to_vec());
    out
}

/// Text that is likely to contain SSE-significant characters.
fn nasty_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\r\n".to_string()),
        Just("\0".to_string()),
        Just(":".to_string()),
        Just(" ".to_string()),
        Just("data: x".to_string()),
        Just("event: logout".to_string()),
        Just("id: 9".to_string()),
        Just("retry: 1".to_string()),
        Just("\u{FEFF}".to_string()),
        Just("é".to_string()),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

/// A single-line field value: anything but CR, LF and NUL.
fn line_value() -> impl Strategy<Value = String> {
    nasty_text().prop_map(|s| s.replace(['\r', '\n', '\0'], ""))
}

/// What the parser must give back for `data` after encoding: each line
/// terminator becomes `\n`, NUL becomes U+FFFD.
fn expected_data(data: &str) -> String {
    data.replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\0', "\u{FFFD}")
}

/// Raw bytes that look like an SSE stream often enough to reach every branch.
fn sse_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"id: a\0b".to_vec()),
        Just(b"retry: ".to_vec()),
        Just(b"retry: 12".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(vec![0xEF, 0xBB, 0xBF]),
        Just(vec![0xEF, 0xBB]),
        Just(vec![0xFF, 0xFE, 0x80]),
        Just(b"x".repeat(40)),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// `cases` per property; no failure files (CI runs from a clean clone).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// parse(encode(x)) == x, for every value the encoder accepts.
    #[test]
    fn encode_then_parse_round_trips(
        id in prop::option::of(line_value()),
        event in prop::option::of(line_value().prop_filter("non-empty", |s| !s.is_empty())),
        data in nasty_text(),
    ) {
        let bytes = encode_event(id.as_deref(), event.as_deref(), &data).expect("valid parts");
        let items = parse_chunks(1 << 20, [&bytes[..]]);
        prop_assert_eq!(items.len(), 1, "one frame → one item: {:?}", items);
        let ev = events(&items).pop().expect("an event");
        prop_assert_eq!(ev.event, event.clone().unwrap_or_else(|| "message".into()));
        prop_assert_eq!(ev.data, expected_data(&data));
        prop_assert_eq!(ev.last_event_id, id.clone().unwrap_or_default());
        prop_assert_eq!(ev.has_id, id.is_some());
    }

    /// No value can make the encoder emit a field other than id, event and
    /// data, nor end a frame early: the frame has exactly one blank line, at
    /// the end, and every other line starts with a known field name.
    #[test]
    fn encoded_frames_only_have_allowed_fields(
        id in prop::option::of(nasty_text()),
        event in prop::option::of(nasty_text()),
        data in nasty_text(),
    ) {
        match encode_event(id.as_deref(), event.as_deref(), &data) {
            Ok(bytes) => {
                let text = std::str::from_utf8(&bytes).expect("utf-8 out");
                prop_assert!(text.ends_with("\n\n"));
                let body = &text[..text.len() - 2];
                prop_assert!(!body.contains('\r') && !body.contains('\0'));
                for line in body.split('\n') {
                    prop_assert!(
                        line.starts_with("id: ") || line.starts_with("event: ") || line.starts_with("data: "),
                        "line {:?} in {:?}", line, text
                    );
                }
                prop_assert_eq!(body.matches("\nid: ").count() + usize::from(body.starts_with("id: ")), usize::from(id.is_some()));
            }
            Err(EncodeError::InvalidEventName) => {
                let e = event.unwrap_or_default();
                prop_assert!(e.is_empty() || e.contains(['\r', '\n', '\0']));
            }
            Err(EncodeError::InvalidId) => {
                prop_assert!(id.unwrap_or_default().contains(['\r', '\n', '\0']));
            }
        }
    }

    /// A stream of many encoded frames, cut anywhere, parses to the same
    /// events in the same order.
    #[test]
    fn many_frames_any_chunking(
        frames in prop::collection::vec((line_value(), nasty_text()), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut stream = Vec::new();
        for (n, (name, data)) in frames.iter().enumerate() {
            let name = if name.is_empty() { "e" } else { name.as_str() };
            let id = format!("ep-{n}");
            stream.extend_from_slice(&encode_event(Some(&id), Some(name), data).expect("valid"));
            stream.extend_from_slice(&encode_comment(data));
        }
        let chunks = split_at_cuts(&stream, &cuts);
        let got = events(&parse_chunks(1 << 20, chunks.iter().map(Vec::as_slice)));
        prop_assert_eq!(got.len(), frames.len());
        for (n, (ev, (name, data))) in got.iter().zip(&frames).enumerate() {
            let name = if name.is_empty() { "e" } else { name.as_str() };
            prop_assert_eq!(&ev.event, name);
            prop_assert_eq!(&ev.data, &expected_data(data));
            prop_assert_eq!(&ev.last_event_id, &format!("ep-{n}"));
        }
    }

    /// Chunking never changes what the parser produces, for arbitrary input,
    /// with a small cap (oversize paths) and a large one.
    #[test]
    fn chunking_never_changes_the_items(
        bytes in sse_like_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
        small_cap in 8usize..96,
    ) {
        for cap in [small_cap, 1 << 20] {
            let whole = parse_chunks(cap, [&bytes[..]]);
            let chunks = split_at_cuts(&bytes, &cuts);
            let cut = parse_chunks(cap, chunks.iter().map(Vec::as_slice));
            prop_assert_eq!(&cut, &whole, "cap {}", cap);
            let one_by_one = parse_chunks(cap, bytes.chunks(1));
            prop_assert_eq!(&one_by_one, &whole, "cap {} byte by byte", cap);
        }
    }

    /// Memory stays bounded by the cap whatever arrives, and every event
    /// handed out respects it.
    #[test]
    fn parser_memory_is_bounded_by_the_cap(
        bytes in sse_like_bytes(),
        cap in 8usize..96,
    ) {
        let mut p = Parser::new(cap);
        for chunk in bytes.chunks(7) {
            p.push(chunk);
            // The held line, the event being built and the one event a
            // 7-byte chunk can complete (its data plus the id it carries) are
            // each bounded by the cap.
            prop_assert!(p.buffered_bytes() <= 3 * cap + 32, "{} > cap {}", p.buffered_bytes(), cap);
            while let Some(item) = p.next_item() {
                if let Ok(Item::Event(e)) = item {
                    // "message" is the parser's default name, not input.
                    let name = if e.event == "message" { 0 } else { e.event.len() };
                    prop_assert!(e.data.len() + name <= cap, "{:?} cap {}", e, cap);
                }
            }
        }
    }

    /// Comments never turn into anything but one comment frame.
    #[test]
    fn comments_stay_comments(text in nasty_text()) {
        let bytes = encode_comment(&text);
        prop_assert!(parse_chunks(1 << 20, [&bytes[..]]).is_empty());
        let s = std::str::from_utf8(&bytes).expect("utf-8");
        prop_assert!(s.starts_with(": ") && s.ends_with("\n\n"));
        prop_assert!(!s[..s.len() - 2].contains(['\n', '\r', '\0']));
    }
}
