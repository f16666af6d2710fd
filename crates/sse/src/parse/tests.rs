use super::*;

type Out = Vec<Result<Item, ParseError>>;

const CAP: usize = 1024;

fn drain(p: &mut Parser, out: &mut Out) {
    while let Some(item) = p.next_item() {
        out.push(item);
    }
}

fn parse_chunks(cap: usize, chunks: &[&[u8]]) -> Out {
    let mut p = Parser::new(cap);
    let mut out = Vec::new();
    for chunk in chunks {
        p.push(chunk);
        drain(&mut p, &mut out);
    }
    out
}

fn parse(input: &[u8]) -> Out {
    parse_chunks(CAP, &[input])
}

fn ev(event: &str, data: &str, last_event_id: &str, has_id: bool) -> Result<Item, ParseError> {
    Ok(Item::Event(Event {
        event: event.to_owned(),
        data: data.to_owned(),
        last_event_id: last_event_id.to_owned(),
        has_id,
    }))
}

fn msg(data: &str) -> Result<Item, ParseError> {
    ev("message", data, "", false)
}

/// Exercises nearly every rule at once, including a BOM, CR/CRLF/LF, a
/// multi-byte character, invalid UTF-8 and an oversize line (cap 64).
const SAMPLE: &[u8] = b"\xEF\xBB\xBF: hello\r\nretry: 2500\r\nid: 1\r\nevent: ping\r\ndata: a\r\n\
data:  b\r\n\r\ndata: caf\xC3\xA9 \xF0\x9F\x98\x80\rdata\r\rid: 2\0x\ndata: bad \xFF\xFE\n\n\
id\nfoo: bar\ndata: c\r\n\r\nevent: x\n\n\
data: 0123456789012345678901234567890123456789012345678901234567890123456789\n\n\
data: tail\r\n\r\ndata: unfinished";
const SAMPLE_CAP: usize = 64;

fn sample_expected() -> Out {
    vec![
        Ok(Item::Retry(2500)),
        ev("ping", "a\n b", "1", true),
        ev("message", "caf\u{e9} \u{1F600}\n", "1", false),
        ev("message", "bad \u{FFFD}\u{FFFD}", "1", false),
        ev("message", "c", "", true),
        Err(ParseError::Oversize { limit: SAMPLE_CAP }),
        msg("tail"),
    ]
}

#[test]
fn sample_whole() {
    assert_eq!(parse_chunks(SAMPLE_CAP, &[SAMPLE]), sample_expected());
}

#[test]
fn sample_every_split_point() {
    let expected = sample_expected();
    for i in 0..=SAMPLE.len() {
        let (a, b) = SAMPLE.split_at(i);
        assert_eq!(parse_chunks(SAMPLE_CAP, &[a, b]), expected, "split at {i}");
    }
}

#[test]
fn sample_every_pair_of_split_points() {
    let expected = sample_expected();
    for i in 0..=SAMPLE.len() {
        for j in i..=SAMPLE.len() {
            let chunks = [&SAMPLE[..i], &SAMPLE[i..j], &SAMPLE[j..]];
            assert_eq!(
                parse_chunks(SAMPLE_CAP, &chunks),
                expected,
                "split at {i},{j}"
            );
        }
    }
}

#[test]
fn sample_one_byte_at_a_time() {
    let chunks: Vec<&[u8]> = SAMPLE.chunks(1).collect();
    assert_eq!(parse_chunks(SAMPLE_CAP, &chunks), sample_expected());
}

#[test]
fn bom_stripped_once() {
    assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), vec![msg("a")]);
    // A second BOM is part of the field name, making it an unknown field.
    assert_eq!(
        parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"),
        vec![msg("b")]
    );
    // A BOM later in the stream is not special either.
    assert_eq!(parse(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"), vec![msg("a")]);
}

#[test]
fn partial_bom_is_kept_as_input() {
    // If the held-back EF BB were dropped, "data: a" would be dispatched.
    assert_eq!(parse(b"\xEF\xBBdata: a\n\n"), vec![]);
    assert_eq!(
        parse_chunks(CAP, &[b"\xEF", b"\xBB", b"data: a\n\n"]),
        vec![]
    );
    // Bytes that merely start like a BOM still reach the parser.
    assert_eq!(
        parse_chunks(CAP, &[b"\xEF", b"\n\ndata: a\n\n"]),
        vec![msg("a")]
    );
}

#[test]
fn line_endings() {
    assert_eq!(parse(b"data: a\ndata: b\n\n"), vec![msg("a\nb")]);
    assert_eq!(parse(b"data: a\rdata: b\r\r"), vec![msg("a\nb")]);
    assert_eq!(parse(b"data: a\r\ndata: b\r\n\r\n"), vec![msg("a\nb")]);
    assert_eq!(
        parse(b"data: a\r\ndata: b\rdata: c\n\r\n"),
        vec![msg("a\nb\nc")]
    );
    // CR CR LF: the LF after the second CR is an extra blank line, not data.
    assert_eq!(parse(b"data: a\r\r\ndata: b\n\n"), vec![msg("a"), msg("b")]);
}

#[test]
fn crlf_split_across_chunks_is_one_terminator() {
    assert_eq!(
        parse_chunks(CAP, &[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]),
        vec![msg("a\nb")]
    );
    // A CR at a chunk end followed by CR is two terminators.
    assert_eq!(
        parse_chunks(CAP, &[b"data: a\r", b"\rdata: b\n\n"]),
        vec![msg("a"), msg("b")]
    );
}

#[test]
fn cr_terminated_line_is_processed_without_waiting() {
    let mut p = Parser::new(CAP);
    p.push(b"data: a\r\r");
    assert_eq!(p.next_item(), Some(msg("a")));
}

#[test]
fn multi_line_and_empty_data() {
    assert_eq!(parse(b"data: a\ndata:\ndata: b\n\n"), vec![msg("a\n\nb")]);
    assert_eq!(parse(b"data:\n\n"), vec![msg("")]);
    assert_eq!(parse(b"data\ndata\n\n"), vec![msg("\n")]);
}

#[test]
fn data_without_colon_is_empty_value() {
    assert_eq!(parse(b"data\n\n"), vec![msg("")]);
}

#[test]
fn only_one_leading_space_removed() {
    assert_eq!(
        parse(b"data:nospace\ndata:  two\ndata: a: b\n\n"),
        vec![msg("nospace\n two\na: b")]
    );
}

#[test]
fn event_type() {
    assert_eq!(
        parse(b"event: ping\ndata: a\n\n"),
        vec![ev("ping", "a", "", false)]
    );
    assert_eq!(parse(b"event:\ndata: a\n\n"), vec![msg("a")]);
    // The type resets after each dispatch.
    assert_eq!(
        parse(b"event: ping\ndata: a\n\ndata: b\n\n"),
        vec![ev("ping", "a", "", false), msg("b")]
    );
}

#[test]
fn id_with_nul_ignored() {
    assert_eq!(
        parse(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n"),
        vec![
            ev("message", "a", "1", true),
            ev("message", "b", "1", false)
        ]
    );
}

#[test]
fn id_persists_to_later_events() {
    let mut p = Parser::new(CAP);
    p.push(b"id: 7\ndata: a\n\ndata: b\n\n");
    let mut out = Vec::new();
    drain(&mut p, &mut out);
    assert_eq!(
        out,
        vec![
            ev("message", "a", "7", true),
            ev("message", "b", "7", false)
        ]
    );
    assert_eq!(p.last_event_id(), "7");
}

#[test]
fn empty_id_resets() {
    assert_eq!(
        parse(b"id: 7\ndata: a\n\nid\ndata: b\n\nid: 8\n\nid:\ndata: c\n\n"),
        vec![
            ev("message", "a", "7", true),
            ev("message", "b", "", true),
            ev("message", "c", "", true),
        ]
    );
}

#[test]
fn id_without_data_still_updates() {
    let mut p = Parser::new(CAP);
    p.push(b"id: 9\n\ndata: a\n\n");
    assert_eq!(p.next_item(), Some(ev("message", "a", "9", false)));
    assert_eq!(p.last_event_id(), "9");
}

#[test]
fn last_event_id_commits_at_blank_line() {
    let mut p = Parser::new(CAP);
    p.push(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
    assert_eq!(p.last_event_id(), "1");
    p.push(b"\n");
    assert_eq!(p.last_event_id(), "2");
}

#[test]
fn retry_valid_and_invalid() {
    assert_eq!(parse(b"retry: 1500\n"), vec![Ok(Item::Retry(1500))]);
    assert_eq!(parse(b"retry:0\n"), vec![Ok(Item::Retry(0))]);
    for bad in [
        &b"retry: 1a\n"[..],
        b"retry: \n",
        b"retry\n",
        b"retry: -1\n",
        b"retry:  5\n",
        b"retry: 5 \n",
        b"retry: 1.5\n",
    ] {
        assert_eq!(parse(bad), vec![], "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(
        parse(b"retry: 99999999999999999999999\n"),
        vec![Ok(Item::Retry(u64::MAX))]
    );
}

#[test]
fn retry_is_reported_in_stream_order() {
    assert_eq!(
        parse(b"data: a\n\nretry: 10\ndata: b\n\n"),
        vec![msg("a"), Ok(Item::Retry(10)), msg("b")]
    );
}

#[test]
fn comments_ignored() {
    assert_eq!(
        parse(b": hi\n:\ndata: a\n: mid: x\n\n:only\n\n"),
        vec![msg("a")]
    );
}

#[test]
fn unknown_fields_ignored() {
    assert_eq!(
        parse(b"foo: bar\nDATA: x\nData: y\n data: z\nfoo\ndata: a\n\n"),
        vec![msg("a")]
    );
}

#[test]
fn event_without_data_not_dispatched() {
    assert_eq!(
        parse(b"event: x\n\nid: 3\nevent: y\n\ndata: a\n\n"),
        vec![ev("message", "a", "3", false)]
    );
}

#[test]
fn incomplete_event_not_dispatched() {
    assert_eq!(parse(b"data: a\n"), vec![]);
    assert_eq!(parse(b"data: a"), vec![]);
    assert_eq!(parse(b"data: a\r"), vec![]);
}

#[test]
fn invalid_utf8_is_lossy() {
    assert_eq!(
        parse(b"event: p\xFFq\ndata: a\xC3(b\xF0\x9F\x98\n\n"),
        vec![ev("p\u{FFFD}q", "a\u{FFFD}(b\u{FFFD}", "", false)]
    );
}

#[test]
fn multibyte_char_split_across_chunks() {
    assert_eq!(
        parse_chunks(CAP, &[b"data: \xF0\x9F", b"\x98", b"\x80\n\n"]),
        vec![msg("\u{1F600}")]
    );
}

#[test]
fn oversize_line_skipped_next_event_parsed() {
    assert_eq!(
        parse_chunks(
            16,
            &[b"data: 0123456789abcdefXYZ\ndata: more\n\ndata: ok\n\n"]
        ),
        vec![Err(ParseError::Oversize { limit: 16 }), msg("ok")]
    );
}

#[test]
fn oversize_accumulated_event_skipped_once() {
    // Each line fits (16 bytes) but the data adds up past the cap.
    assert_eq!(
        parse_chunks(
            16,
            &[b"data: 0123456789\ndata: 0123456789\ndata: 0123456789\ndata: x\n\ndata: ok\n\n"]
        ),
        vec![Err(ParseError::Oversize { limit: 16 }), msg("ok")]
    );
}

#[test]
fn two_oversize_lines_in_one_event_reported_once() {
    assert_eq!(
        parse_chunks(
            8,
            &[
                b"data: 0123456789
foo: 0123456789
: 0123456789
data: 01",
                b"23456789

data: ok

"
            ]
        ),
        vec![Err(ParseError::Oversize { limit: 8 }), msg("ok")]
    );
}

#[test]
fn oversize_reported_again_for_next_event() {
    assert_eq!(
        parse_chunks(
            8,
            &[b"data: 0123456789

data: 0123456789

data: ok

"]
        ),
        vec![
            Err(ParseError::Oversize { limit: 8 }),
            Err(ParseError::Oversize { limit: 8 }),
            msg("ok")
        ]
    );
}

#[test]
fn event_exactly_at_cap_is_kept() {
    // Data alone: 8 + 8 bytes including the newlines.
    assert_eq!(
        parse_chunks(
            16,
            &[b"data: 0123456
data: 0123456

"]
        ),
        vec![msg("0123456\n0123456")]
    );
    assert_eq!(
        parse_chunks(
            16,
            &[b"data: 01234567
data: 0123456

"]
        ),
        vec![Err(ParseError::Oversize { limit: 16 })]
    );
    // Line is 16 bytes, data is 10 bytes + newline.
    assert_eq!(
        parse_chunks(16, &[b"data: 0123456789\n\n"]),
        vec![msg("0123456789")]
    );
    // Data 4 + 1, event 5, id 6: exactly 16.
    assert_eq!(
        parse_chunks(16, &[b"data: abcd\nevent: ping1\nid: 123456\n\n"]),
        vec![ev("ping1", "abcd", "123456", true)]
    );
    assert_eq!(
        parse_chunks(16, &[b"data: abcd\nevent: ping1\nid: 1234567\n\n"]),
        vec![Err(ParseError::Oversize { limit: 16 })]
    );
}

#[test]
fn oversize_partial_line_across_chunks() {
    assert_eq!(
        parse_chunks(
            16,
            &[b"data: 0123", b"456789ab", b"cdef\n", b"\ndata: ok\n\n"]
        ),
        vec![Err(ParseError::Oversize { limit: 16 }), msg("ok")]
    );
}

#[test]
fn megabyte_line_without_newline_stays_bounded() {
    const LIMIT: usize = 64 * 1024;
    const CHUNK: usize = 4096;
    let mut p = Parser::new(LIMIT);
    let mut out = Vec::new();
    p.push(b"data: ");
    let block = vec![b'x'; CHUNK];
    for _ in 0..(1 << 20) / CHUNK {
        p.push(&block);
        assert!(
            p.buffered_bytes() <= LIMIT + CHUNK,
            "{}",
            p.buffered_bytes()
        );
        assert!(p.line.capacity() <= 2 * (LIMIT + CHUNK));
        drain(&mut p, &mut out);
    }
    assert_eq!(out, vec![Err(ParseError::Oversize { limit: LIMIT })]);
    p.push(b"\n\ndata: after\n\n");
    drain(&mut p, &mut out);
    assert_eq!(
        out,
        vec![Err(ParseError::Oversize { limit: LIMIT }), msg("after")]
    );
    assert_eq!(p.buffered_bytes(), 0);
}

#[test]
fn buffered_bytes_counts_pending_items() {
    let mut p = Parser::new(CAP);
    p.push(b"data: abc\n\ndata: de");
    // Queued event "message"/"abc" plus the partial line.
    assert_eq!(p.buffered_bytes(), 7 + 3 + 8);
    assert_eq!(p.next_item(), Some(msg("abc")));
    assert_eq!(p.buffered_bytes(), 8);
}

#[test]
fn any_line_over_cap_is_oversize() {
    // Comments count too: 16 bytes fit, 17 do not.
    assert_eq!(
        parse_chunks(16, &[b":23456789abcdefg\ndata: a\n\n"]),
        vec![msg("a")]
    );
    assert_eq!(
        parse_chunks(16, &[b":23456789abcdefgh\ndata: a\n\ndata: b\n\n"]),
        vec![Err(ParseError::Oversize { limit: 16 }), msg("b")]
    );
}

#[test]
fn event_field_counts_towards_cap() {
    // 11 data bytes + 7 event bytes = 18 > 16, though each line fits.
    assert_eq!(
        parse_chunks(16, &[b"data: 0123456789\nevent: abcdefg\n\ndata: ok\n\n"]),
        vec![Err(ParseError::Oversize { limit: 16 }), msg("ok")]
    );
}

#[test]
fn held_line_does_not_grow_past_cap_on_big_chunk() {
    let mut p = Parser::new(16);
    p.push(b"data: 0123");
    let mut big = vec![b'x'; 1 << 20];
    big.push(b'\n');
    p.push(&big);
    assert!(p.line.capacity() <= 64, "{}", p.line.capacity());
    p.push(b"\ndata: ok\n\n");
    let mut out = Vec::new();
    drain(&mut p, &mut out);
    assert_eq!(
        out,
        vec![Err(ParseError::Oversize { limit: 16 }), msg("ok")]
    );
}
