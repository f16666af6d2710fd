//! Translate: upstream event → zero or more htmx triggers, by the rules in the
//! config. A pure function: it never does I/O, never encodes SSE bytes and
//! never keeps state between calls.

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
    /// Upstream `event:` name this rule matches.
    pub event: String,
    /// Triggers emitted, in order.
    pub triggers: Vec<TriggerRule>,
}

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
                Rule {
                    event: "inbound".into(),
                    triggers: vec![peer("thread-updated"), peer("contact-changed")],
                },
                Rule {
                    event: "outbound-state".into(),
                    triggers: vec![peer("thread-updated"), peer("contact-changed")],
                },
                Rule {
                    event: "read-watermark-changed".into(),
                    triggers: vec![peer("contact-changed")],
                },
                Rule {
                    event: "resync".into(),
                    triggers: vec![TriggerRule {
                        name: RESYNC.into(),
                        data_field: None,
                        data: Some("1".into()),
                    }],
                },
            ],
        }
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
}

/// Check every rule once at load time so translation never has to.
pub fn validate(rules: &Rules) -> Result<(), RuleError> {
    for rule in &rules.rules {
        if rule.event.is_empty() {
            return Err(RuleError::EmptyEvent);
        }
        for t in &rule.triggers {
            if !valid_name(&t.name) {
                return Err(RuleError::BadName(t.name.clone()));
            }
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

/// Translate one upstream event. `data` is the upstream `data:` text,
/// normally JSON; a non-JSON body only loses its `data_field` lookups.
pub fn translate(rules: &Rules, event: &str, data: &str) -> Translation {
    let Some(rule) = rules.rules.iter().find(|r| r.event == event) else {
        return Translation::Unmatched;
    };
    let json: Option<serde_json::Value> = if rule.triggers.iter().any(|t| t.data_field.is_some()) {
        serde_json::from_str(data).ok()
    } else {
        None
    };
    let triggers = rule
        .triggers
        .iter()
        // Rules are validated at load, but a rule set built in code may not be.
        .filter(|t| valid_name(&t.name))
        .map(|t| {
            let from_field = t.data_field.as_deref().and_then(|f| {
                match json.as_ref().and_then(|j| j.get(f))? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                }
            });
            let raw = from_field
                .or_else(|| t.data.clone())
                .unwrap_or_else(|| "1".to_string());
            Trigger {
                name: t.name.clone(),
                data: clean_data(&raw),
            }
        })
        .collect();
    Translation::Triggers(triggers)
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
            rules: vec![Rule {
                event: "x".into(),
                triggers: vec![TriggerRule {
                    name: "row".into(),
                    data_field: Some("rowId".into()),
                    data: None,
                }],
            }],
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
                rules: vec![Rule {
                    event: "x".into(),
                    triggers: vec![TriggerRule {
                        name: bad.into(),
                        data_field: None,
                        data: None,
                    }],
                }],
            };
            assert_eq!(validate(&rules), Err(RuleError::BadName(bad.into())));
            assert_eq!(translate(&rules, "x", "{}"), Translation::Triggers(vec![]));
        }
        for good in ["thread-updated", "a.b_c:d-E9"] {
            assert!(valid_name(good));
        }
    }
}
