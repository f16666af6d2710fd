//! Property tests of the downstream contract: whatever the backend sends,
//! what reaches a tab is valid SSE with only the `id`, `event` and `data`
//! fields, trigger names from the safe alphabet and one-line, non-empty data.
//!
//! The first properties drive `translate` and the channel's encoding
//! directly; the last runs the real upstream task (parser → translate →
//! channel) over arbitrary bytes through a scripted connector.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use proptest::prelude::*;
use ssemux_gateway::{
    ByteStream, Channel, ConnectError, ConnectRequest, Connector, Lag, MAX_DATA_BYTES, Rule, Rules,
    Translation, Trigger, TriggerRule, Upstream, UpstreamConfig, valid_name,
};
use ssemux_sse::{Item, Parser};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Check one tab's byte stream: only allowed fields, every event with an id,
/// a valid name and one line of non-empty data. Returns the parsed events.
fn check_downstream(bytes: &[u8]) -> Result<Vec<ssemux_sse::Event>, TestCaseError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(!text.contains('\r') && !text.contains('\0'), "{:?}", text);
    for line in text.split('\n') {
        prop_assert!(
            line.is_empty()
                || line.starts_with("id: ")
                || line.starts_with("event: ")
                || line.starts_with("data: ")
                || line.starts_with(": ")
                || line.starts_with("retry: "),
            "field not allowed downstream: {:?}",
            line
        );
    }
    let mut p = Parser::new(1 << 20);
    p.push(bytes);
    let mut out = Vec::new();
    while let Some(item) = p.next_item() {
        match item {
            Ok(Item::Event(e)) => {
                prop_assert!(valid_name(&e.event), "bad trigger name {:?}", e.event);
                prop_assert!(!e.data.is_empty() && !e.data.contains('\n'), "{:?}", e);
                prop_assert!(e.data.len() <= MAX_DATA_BYTES, "{}", e.data.len());
                prop_assert!(e.has_id, "every trigger carries an id: {:?}", e);
                out.push(e);
            }
            Ok(Item::Retry(_)) => {}
            Err(e) => prop_assert!(false, "downstream oversize: {}", e),
        }
    }
    Ok(out)
}

/// Rules that exercise data fields of every JSON type, fixed data and the
/// default contract.
fn rules() -> Rules {
    let mut r = Rules::default();
    r.rules.push(Rule {
        event: "custom".into(),
        when: None,
        coalesce: false,
        pass: false,
        rename: None,
        triggers: vec![
            TriggerRule {
                name: "row".into(),
                data_field: Some("rowId".into()),
                data: None,
            },
            TriggerRule {
                name: "any.field_x:y-z".into(),
                data_field: Some("x".into()),
                data: Some("fallback".into()),
            },
            TriggerRule {
                name: "fixed".into(),
                data_field: None,
                data: Some("a\r\nb\0".into()),
            },
        ],
    });
    r
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        evil_string().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("peer".to_string()),
                    Just("rowId".to_string()),
                    Just("x".to_string()),
                    any::<String>()
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn evil_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\r\n".to_string()),
        Just("\0".to_string()),
        Just("\u{2028}".to_string()),
        Just("\u{85}".to_string()),
        Just("data: x".to_string()),
        Just("event: logout".to_string()),
        Just("id: 1".to_string()),
        Just("retry: 1".to_string()),
        Just(": ".to_string()),
        Just("é".repeat(200)),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("inbound".to_string()),
        Just("outbound-state".to_string()),
        Just("read-watermark-changed".to_string()),
        Just("resync".to_string()),
        Just("custom".to_string()),
        any::<String>(),
    ]
}

/// One upstream SSE frame written the way a sloppy or hostile backend might:
/// data split over lines, CR terminators, junk fields, a stray `id`.
fn upstream_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        event_name(),
        arb_json(),
        prop::option::of(evil_string()),
        any::<u8>(),
    )
        .prop_map(|(event, json, id, style)| {
            let eol: &[u8] = match style % 3 {
                0 => b"\n",
                1 => b"\r",
                _ => b"\r\n",
            };
            let mut out = Vec::new();
            if let Some(id) = id {
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(id.replace(['\r', '\n'], "").as_bytes());
                out.extend_from_slice(eol);
            }
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(event.replace(['\r', '\n'], "").as_bytes());
            out.extend_from_slice(eol);
            if style & 4 != 0 {
                out.extend_from_slice(b"evil: field");
                out.extend_from_slice(eol);
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json.to_string().as_bytes());
            out.extend_from_slice(eol);
            out.extend_from_slice(eol);
            out
        })
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

    /// translate + the channel's one-time encoding: arbitrary JSON and event
    /// names only ever yield safe frames, whose parsed form is the trigger.
    #[test]
    fn any_translation_encodes_to_safe_sse(
        inputs in prop::collection::vec((event_name(), arb_json()), 1..8),
        raw_data in evil_string(),
    ) {
        let rules = rules();
        let ch = Channel::with_epoch("alice", "ep", 64, Lag::default());
        let mut rx = ch.attach(None).rx;
        let mut expected: Vec<Trigger> = Vec::new();
        for (event, json) in &inputs {
            for data in [json.to_string(), raw_data.clone()] {
                match ssemux_gateway::translate(&rules, event, &data) {
                    Translation::Triggers(ts) => {
                        ch.publish(&ts);
                        expected.extend(ts);
                    }
                    Translation::Unmatched => {}
                }
            }
        }
        let mut wire = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            wire.extend_from_slice(&frame.bytes);
        }
        let got = check_downstream(&wire)?;
        // The model of coalescing: a tab that takes everything at once
        // gets each idempotent trigger only at its last copy, the rest as
        // published; the id is each one's place in the sequence.
        let kept: Vec<(usize, &Trigger)> = expected
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !(t.coalesce
                    && expected[i + 1..]
                        .iter()
                        .any(|u| u.coalesce && u.name == t.name && u.data == t.data))
            })
            .collect();
        prop_assert_eq!(got.len(), kept.len());
        for (ev, (n, t)) in got.iter().zip(&kept) {
            prop_assert_eq!(&ev.event, &t.name);
            prop_assert_eq!(&ev.data, &t.data);
            prop_assert_eq!(&ev.last_event_id, &format!("ep-{}", n + 1));
        }
    }

    /// Pass-through: whatever name (as the parser yields it) and data the
    /// upstream sends, the tab parses back the same name and the same data
    /// (line ends as LF, NUL as U+FFFD, as the SSE parser normalises them),
    /// and no line of it is anything but `id`, `event` or `data`.
    #[test]
    fn passed_events_arrive_as_sent_and_cannot_start_a_field(
        name in "[A-Za-z0-9._:-]{1,20}|message",
        data in evil_string(),
    ) {
        let rules = Rules { rules: vec![Rule::pass("*")] };
        let ch = Channel::with_epoch("alice", "ep", 64, Lag::default());
        let mut rx = ch.attach(None).rx;
        let Translation::Triggers(ts) = ssemux_gateway::translate(&rules, &name, &data) else {
            return Err(TestCaseError::fail("a wildcard pass rule matches everything"));
        };
        ch.publish(&ts);
        let frame = rx.try_recv().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let text = std::str::from_utf8(&frame.bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!text.contains('\r') && !text.contains('\0'), "{:?}", text);
        for line in text.split('\n') {
            prop_assert!(
                line.is_empty() || line.starts_with("id: ") || line.starts_with("event: ")
                    || line.starts_with("data: "),
                "field not allowed: {:?}", line
            );
        }
        let mut p = Parser::new(1 << 20);
        p.push(&frame.bytes);
        let Some(Ok(Item::Event(ev))) = p.next_item() else {
            return Err(TestCaseError::fail(format!("no event in {text:?}")));
        };
        let want = data.replace("\r\n", "\n").replace('\r', "\n").replace('\0', "\u{FFFD}");
        prop_assert_eq!(&ev.event, &name);
        prop_assert_eq!(&ev.data, &want);
        prop_assert_eq!(&ev.last_event_id, "ep-1");
    }

    /// clean_data: one line, never empty, capped, for any text.
    #[test]
    fn clean_data_is_always_one_safe_line(raw in evil_string()) {
        let d = ssemux_gateway::clean_data(&raw);
        prop_assert!(!d.is_empty() && d.len() <= MAX_DATA_BYTES);
        prop_assert!(!d.chars().any(char::is_control), "{:?}", d);
        prop_assert!(ssemux_sse::encode_event(Some("e-1"), Some("x"), &d).is_ok());
    }
}

proptest! {
    // Each case runs a real upstream task on a runtime: fewer cases.
    #![proptest_config(config(64))]

    /// The whole upstream path over arbitrary bytes, arbitrarily chunked:
    /// tabs only ever receive safe SSE, and the chunking does not change
    /// which triggers they receive.
    #[test]
    fn any_upstream_bytes_reach_tabs_as_safe_sse(
        frames in prop::collection::vec(upstream_frame(), 0..10),
        junk in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(1usize..64, 0..16),
    ) {
        let mut stream = frames.concat();
        stream.extend_from_slice(&junk);
        stream.extend_from_slice(b"\n\n");
        let whole = run_upstream(vec![Bytes::from(stream.clone())]);
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        if cuts.is_empty() {
            chunks.push(Bytes::from(stream.clone()));
            rest = &[];
        }
        for c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*c).min(rest.len()));
            chunks.push(Bytes::copy_from_slice(head));
            rest = tail;
        }
        let cut = run_upstream(chunks);
        let whole_events = check_downstream(&whole)?;
        let cut_events = check_downstream(&cut)?;
        let strip = |v: &[ssemux_sse::Event]| -> Vec<(String, String)> {
            v.iter().map(|e| (e.event.clone(), e.data.clone())).collect()
        };
        prop_assert_eq!(strip(&whole_events), strip(&cut_events));
    }
}

/// A connector that serves `chunks` once, then signals and never connects
/// again.
struct Scripted {
    chunks: Mutex<Option<Vec<Bytes>>>,
    done: Arc<Notify>,
}

impl Connector for Scripted {
    fn connect(
        &self,
        _req: ConnectRequest,
    ) -> BoxFuture<'static, Result<ByteStream, ConnectError>> {
        let first = self.chunks.lock().ok().and_then(|mut c| c.take());
        let done = self.done.clone();
        Box::pin(async move {
            match first {
                Some(chunks) => {
                    let s = futures_util::stream::iter(chunks.into_iter().map(Ok));
                    Ok(Box::pin(s) as ByteStream)
                }
                None => {
                    done.notify_one();
                    std::future::pending().await
                }
            }
        })
    }
}

/// Run one upstream task over `chunks`; return every byte a tab received.
fn run_upstream(chunks: Vec<Bytes>) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let done = Arc::new(Notify::new());
        let connector = Scripted {
            chunks: Mutex::new(Some(chunks)),
            done: done.clone(),
        };
        let settings = UpstreamConfig {
            idle_timeout: Duration::from_secs(45),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            backoff_reset_after: Duration::from_secs(60),
            max_event_bytes: 256,
            ..UpstreamConfig::default()
        };
        let up = Upstream::new(Arc::new(connector), Arc::new(rules()), settings, None);
        let ch = Channel::with_epoch("alice", "ep", 4096, Lag::default());
        ch.add_credential("session=x");
        let mut rx = ch.attach(None).rx;
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (ch, cancel) = (ch.clone(), cancel.clone());
            async move { up.run(ch, cancel).await }
        });
        // Paused clock: auto-advances only when everything is idle, so this
        // bound cannot fire while bytes are still being processed.
        let finished = tokio::time::timeout(Duration::from_secs(60), done.notified()).await;
        assert!(finished.is_ok(), "upstream never finished the script");
        cancel.cancel();
        let _ = task.await;
        let mut wire = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            wire.extend_from_slice(&frame.bytes);
        }
        wire
    })
}
