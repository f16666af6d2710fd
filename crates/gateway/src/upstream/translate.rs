//! Translate: upstream event → zero or more events for the tabs, by the
//! rules in the config: htmx triggers (a name and a short hint), or the
//! event passed through as it came (optionally renamed). A rule matches on
//! the event name (or `*`) and optionally on one JSON field of the data. A
//! pure function: it never does I/O, never encodes SSE bytes and never keeps
//! state between calls.

use serde::{Deserialize, Serialize};

use crate::trigger::{RESYNC, Trigger, clean_data, valid_name};

/// The translation table (`[[translate.rules]]` in the config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// One rule per upstream event name; the first matching rule wins.
    pub rules: Vec<Rule>,
}

/// What one upstream event becomes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Upstream `event:` name this rule matches (`message` for events
    /// without one), or `*` for any.
    pub event: String,
    /// Only when the data is JSON whose top-level `field` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Forward the event's name and data as they came (data byte for byte,
    /// each line its own `data:` line; empty stays empty), before any
    /// triggers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass: bool,
    /// With `pass`: the name the tabs see instead (`message` = unnamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename: Option<String>,
    /// Triggers emitted, in order. A rule with neither `pass` nor triggers
    /// drops the events it matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerRule>,
    /// This rule's triggers are idempotent ("re-fetch X"): a tab that takes
    /// several with the same name and data at once (a burst, a replay)
    /// gets only the last. Never the passed-through event, whose every
    /// instance matters. Off unless set; on in the default rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub coalesce: bool,
}

/// A condition on the upstream data (`when = { field = "type", equals = "new_item" }`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Top-level field of the JSON data.
    pub field: String,
    /// Its value (strings as they are, numbers and booleans as text).
    pub equals: String,
}

/// The wildcard event name.
pub const ANY: &str = "*";

/// One trigger of a rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// Trigger name sent to the tabs.
    pub name: String,
    /// Top-level field of the upstream JSON data whose value becomes the
    /// trigger's data (strings as-is, numbers and booleans as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_field: Option<String>,
    /// Fixed data, or the fallback when `data_field` is missing. Default `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Default for Rules {
    fn default() -> Self {
        let peer = |name: &str| TriggerRule {
            name: name.into(),
            data_field: Some("peer".into()),
            data: None,
        };
        Rules {
            rules: vec![
                Rule::triggers(
                    "inbound",
                    vec![peer("thread-updated"), peer("contact-changed")],
                )
                .coalesced(),
                Rule::triggers(
                    "outbound-state",
                    vec![peer("thread-updated"), peer("contact-changed")],
                )
                .coalesced(),
                Rule::triggers("read-watermark-changed", vec![peer("contact-changed")]).coalesced(),
                Rule::triggers(
                    "resync",
                    vec![TriggerRule {
                        name: RESYNC.into(),
                        data_field: None,
                        data: Some("1".into()),
                    }],
                ),
            ],
        }
    }
}

impl Rule {
    /// A rule turning every `event` into `triggers`.
    pub fn triggers(event: &str, triggers: Vec<TriggerRule>) -> Rule {
        Rule {
            event: event.into(),
            when: None,
            pass: false,
            rename: None,
            triggers,
            coalesce: false,
        }
    }

    /// The same rule with `coalesce` on.
    pub fn coalesced(self) -> Rule {
        Rule {
            coalesce: true,
            ..self
        }
    }

    /// A rule passing every `event` through (`*` for any).
    pub fn pass(event: &str) -> Rule {
        Rule {
            pass: true,
            ..Rule::triggers(event, Vec::new())
        }
    }

    fn matches(&self, event: &str, json: &mut Lazy<'_>) -> bool {
        if self.event != ANY && self.event != event {
            return false;
        }
        let Some(w) = &self.when else {
            return true;
        };
        json.get()
            .and_then(|j| j.get(&w.field))
            .and_then(text_of)
            .is_some_and(|v| v == w.equals)
    }
}

/// The data parsed as JSON at most once, and only if a rule asks.
struct Lazy<'a> {
    data: &'a str,
    parsed: Option<Option<serde_json::Value>>,
}

impl Lazy<'_> {
    fn get(&mut self) -> Option<&serde_json::Value> {
        let data = self.data;
        self.parsed
            .get_or_insert_with(|| serde_json::from_str(data).ok())
            .as_ref()
    }
}

/// A JSON scalar as text (strings as they are); objects, arrays and null: none.
fn text_of(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A rule set that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// The trigger name would break htmx's trigger parser or SSE framing.
    #[error("trigger name `{0}` must be non-empty and use only A-Z a-z 0-9 . _ : -")]
    BadName(String),
    /// A rule without an event name.
    #[error("a rule has an empty `event`")]
    EmptyEvent,
    /// `rename` is not a usable event name, or is given without `pass`.
    #[error("rule for `{0}`: `rename` needs `pass = true` and a name of A-Z a-z 0-9 . _ : -")]
    BadRename(String),
    /// `when` names no field.
    #[error("rule for `{0}`: `when.field` must not be empty")]
    EmptyField(String),
    /// `coalesce` on a rule without triggers: a passed-through event is
    /// never coalesced.
    #[error(
        "rule for `{0}`: `coalesce` applies to its triggers, and it has none (a passed-through event is never coalesced)"
    )]
    CoalesceWithoutTriggers(String),
}

/// Check every rule once at load time so translation never has to.
#[cfg(test)]
pub fn validate(rules: &Rules) -> Result<(), RuleError> {
    first_bad(rules).map_or(Ok(()), |(_, e)| Err(e))
}

/// The first rule that cannot be used: its index in the list, and why.
pub fn first_bad(rules: &Rules) -> Option<(usize, RuleError)> {
    rules
        .rules
        .iter()
        .enumerate()
        .find_map(|(i, r)| check(r).err().map(|e| (i, e)))
}

fn check(rule: &Rule) -> Result<(), RuleError> {
    if rule.event.is_empty() {
        return Err(RuleError::EmptyEvent);
    }
    if let Some(r) = &rule.rename
        && (!rule.pass || !valid_name(r))
    {
        return Err(RuleError::BadRename(rule.event.clone()));
    }
    if rule.when.as_ref().is_some_and(|w| w.field.is_empty()) {
        return Err(RuleError::EmptyField(rule.event.clone()));
    }
    if rule.coalesce && rule.triggers.is_empty() {
        return Err(RuleError::CoalesceWithoutTriggers(rule.event.clone()));
    }
    for t in &rule.triggers {
        if !valid_name(&t.name) {
            return Err(RuleError::BadName(t.name.clone()));
        }
    }
    Ok(())
}

/// Result of translating one upstream event.
#[derive(Debug, PartialEq, Eq)]
pub enum Translation {
    /// A rule matched; these triggers (possibly none) go to the tabs.
    Triggers(Vec<Trigger>),
    /// No rule for this event name: dropped (and counted by the caller).
    Unmatched,
}

/// Translate one upstream event (`event` is `message` for an unnamed one).
/// `data` is the upstream `data:` text; a non-JSON body only fails `when`
/// conditions and loses its `data_field` lookups.
pub fn translate(rules: &Rules, event: &str, data: &str) -> Translation {
    let mut json = Lazy { data, parsed: None };
    let Some(rule) = rules.rules.iter().find(|r| r.matches(event, &mut json)) else {
        return Translation::Unmatched;
    };
    let mut out = Vec::with_capacity(rule.triggers.len() + usize::from(rule.pass));
    if rule.pass {
        out.push(Trigger::pass(rule.rename.as_deref().unwrap_or(event), data));
    }
    // Rules are validated at load, but a rule set built in code may not be.
    for t in rule.triggers.iter().filter(|t| valid_name(&t.name)) {
        let from_field = t
            .data_field
            .as_deref()
            .and_then(|f| json.get().and_then(|j| j.get(f)).and_then(text_of));
        let raw = from_field
            .or_else(|| t.data.clone())
            .unwrap_or_else(|| "1".to_string());
        out.push(Trigger {
            name: t.name.clone(),
            data: clean_data(&raw),
            coalesce: rule.coalesce,
        });
    }
    Translation::Triggers(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::MAX_DATA_BYTES;

    fn names(t: &Translation) -> Vec<(String, String)> {
        match t {
            Translation::Triggers(v) => {
                v.iter().map(|t| (t.name.clone(), t.data.clone())).collect()
            }
            Translation::Unmatched => vec![],
        }
    }

    #[test]
    fn coalescing_is_per_rule_and_never_for_a_passed_event() {
        // The default rules' triggers are idempotent ("re-fetch X").
        let Translation::Triggers(ts) =
            translate(&Rules::default(), "inbound", r#"{"peer":"bob"}"#)
        else {
            panic!("default inbound rule");
        };
        assert!(ts.iter().all(|t| t.coalesce), "{ts:?}");
        // Opt-in: a rule that does not say so is not.
        let plain = Rules {
            rules: vec![Rule::triggers(
                "x",
                vec![TriggerRule {
                    name: "t".into(),
                    data_field: None,
                    data: None,
                }],
            )],
        };
        let Translation::Triggers(ts) = translate(&plain, "x", "") else {
            panic!("x rule");
        };
        assert!(!ts[0].coalesce);
        // A passing rule that coalesces its triggers still sends the event
        // itself every time.
        let mut both = Rule::pass("x").coalesced();
        both.triggers = plain.rules[0].triggers.clone();
        let rules = Rules { rules: vec![both] };
        assert_eq!(validate(&rules), Ok(()));
        let Translation::Triggers(ts) = translate(&rules, "x", "d") else {
            panic!("x rule");
        };
        assert_eq!(
            ts.iter().map(|t| t.coalesce).collect::<Vec<_>>(),
            [false, true]
        );
        // Coalescing a rule with no triggers means nothing: refused.
        let rules = Rules {
            rules: vec![Rule::pass("x").coalesced()],
        };
        assert_eq!(
            validate(&rules),
            Err(RuleError::CoalesceWithoutTriggers("x".into()))
        );
    }

    #[test]
    fn default_contract() {
        let r = Rules::default();
        validate(&r).expect("defaults valid");
        let t = translate(&r, "inbound", r#"{"peer":"bob","rowId":7}"#);
        assert_eq!(
            names(&t),
            vec![
                ("thread-updated".into(), "bob".into()),
                ("contact-changed".into(), "bob".into())
            ]
        );
        let t = translate(
            &r,
            "outbound-state",
            r#"{"peer":"carol","rowId":8,"state":"sent"}"#,
        );
        assert_eq!(names(&t)[0], ("thread-updated".into(), "carol".into()));
        let t = translate(&r, "read-watermark-changed", r#"{"peer":"bob","rowId":8}"#);
        assert_eq!(names(&t), vec![("contact-changed".into(), "bob".into())]);
        let t = translate(&r, "resync", "anything at all");
        assert_eq!(names(&t), vec![("resync".into(), "1".into())]);
        assert_eq!(translate(&r, "typing", "{}"), Translation::Unmatched);
    }

    #[test]
    fn data_is_never_empty_and_never_multiline() {
        let r = Rules::default();
        for data in [
            r#"{"rowId":1}"#,
            r#"{"peer":""}"#,
            r#"{"peer":null}"#,
            "not json",
            "",
        ] {
            for (_, d) in names(&translate(&r, "inbound", data)) {
                assert_eq!(d, "1", "input {data:?}");
            }
        }
        let evil = r#"{"peer":"bob\r\nevent: logout\ndata: x\u0000id: 1"}"#;
        for (_, d) in names(&translate(&r, "inbound", evil)) {
            assert!(!d.contains(['\r', '\n', '\0']), "{d:?}");
            assert!(d.starts_with("bob"));
        }
    }

    #[test]
    fn numbers_and_caps() {
        let rules = Rules {
            rules: vec![Rule::triggers(
                "x",
                vec![TriggerRule {
                    name: "row".into(),
                    data_field: Some("rowId".into()),
                    data: None,
                }],
            )],
        };
        assert_eq!(names(&translate(&rules, "x", r#"{"rowId":42}"#))[0].1, "42");
        let long = format!(r#"{{"rowId":"{}"}}"#, "é".repeat(1000));
        let d = &names(&translate(&rules, "x", &long))[0].1;
        assert!(d.len() <= MAX_DATA_BYTES && d.chars().all(|c| c == 'é'));
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a b", "a/b", "a,b", "a\"b", "a\nb", "événement"] {
            assert!(!valid_name(bad), "{bad:?}");
            let rules = Rules {
                rules: vec![Rule::triggers(
                    "x",
                    vec![TriggerRule {
                        name: bad.into(),
                        data_field: None,
                        data: None,
                    }],
                )],
            };
            assert_eq!(validate(&rules), Err(RuleError::BadName(bad.into())));
            assert_eq!(translate(&rules, "x", "{}"), Translation::Triggers(vec![]));
        }
        for good in ["thread-updated", "a.b_c:d-E9"] {
            assert!(valid_name(good));
        }
    }
}

#[cfg(test)]
mod pass_tests {
    use super::*;

    fn rules(toml_text: &str) -> Rules {
        let r: Rules = toml::from_str(toml_text).expect("rules parse");
        validate(&r).expect("valid");
        r
    }

    fn out(t: Translation) -> Vec<(String, String)> {
        match t {
            Translation::Triggers(v) => v.into_iter().map(|t| (t.name, t.data)).collect(),
            Translation::Unmatched => vec![],
        }
    }

    #[test]
    fn json_field_matching_wildcards_and_pass_through() {
        let r = rules(
            r#"
            [[rules]]
            event = "message"
            when = { field = "type", equals = "item_deleted" }
            pass = true
            rename = "deleted"
            [[rules]]
            event = "message"
            when = { field = "n", equals = "3" }
            triggers = [{ name = "three" }]
            [[rules]]
            event = "noise"
            [[rules]]
            event = "*"
            pass = true
            "#,
        );
        let deleted = r#"{"type":"item_deleted","id":"x"}"#;
        assert_eq!(
            out(translate(&r, "message", deleted)),
            vec![("deleted".into(), deleted.into())]
        );
        assert_eq!(
            out(translate(&r, "message", r#"{"n":3}"#)),
            vec![("three".into(), "1".into())]
        );
        // No rule before the wildcard matches: passed as it came, byte for byte.
        for (ev, data) in [
            ("syncProgress", "75"),
            ("syncMessage", "line one\nline two"),
            ("changed", ""),
            ("message", "not json"),
        ] {
            assert_eq!(
                out(translate(&r, ev, data)),
                vec![(ev.to_string(), data.to_string())]
            );
        }
        // A rule with neither pass nor triggers drops what it matches.
        assert_eq!(translate(&r, "noise", "x"), Translation::Triggers(vec![]));
    }

    #[test]
    fn bad_rules_are_named() {
        for (text, want) in [
            ("[[rules]]\nevent = \"a\"\nrename = \"b\"\n", "rename"),
            (
                "[[rules]]\nevent = \"a\"\npass = true\nrename = \"b c\"\n",
                "rename",
            ),
            (
                "[[rules]]\nevent = \"a\"\nwhen = { field = \"\", equals = \"x\" }\n",
                "when.field",
            ),
        ] {
            let r: Rules = toml::from_str(text).expect("parse");
            let e = validate(&r).expect_err(text).to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
