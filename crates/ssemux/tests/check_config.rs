//! The shipped example configuration (`deploy/ssemux.toml`) is accepted by
//! `ssemux check-config`, documents every key and holds the defaults.

use std::path::PathBuf;
use std::process::Command;

use ssemux_gateway::{Config, known_keys};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/ssemux.toml")
}

#[test]
fn check_config_accepts_the_example() {
    let out = Command::new(env!("CARGO_BIN_EXE_ssemux"))
        .arg("check-config")
        .arg(example())
        // Variables would override the file; the check is about the file.
        .env_clear()
        .output()
        .expect("run ssemux check-config");
    assert!(
        out.status.success(),
        "check-config refused the example: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_a_bad_key() {
    let dir = std::env::temp_dir().join(format!("ssemux-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[hub]\ngrace = \"soon\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ssemux"))
        .arg("check-config")
        .arg(&bad)
        .env_clear()
        .output()
        .expect("run ssemux check-config");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grace"));
}

#[test]
fn example_holds_the_defaults_and_mentions_every_key() {
    let text = std::fs::read_to_string(example()).expect("read example");
    let cfg = Config::from_parts(&text, Vec::new(), &[]).expect("example parses");
    assert_eq!(cfg, Config::default(), "example drifted from the defaults");
    // Every key appears in its section, set or commented out.
    let mut section = String::new();
    let mut seen = Vec::new();
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if l.starts_with("[[") {
            section = String::from("translate.rules");
        } else if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, _)) = l.split_once(" = ") {
            let k = k.trim();
            if k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                seen.push(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
    }
    let missing: Vec<String> = known_keys()
        .into_iter()
        .filter(|k| !seen.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys not documented in the example: {missing:?}"
    );
}
