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
        // The example leaves the (required) backend to the deployment.
        .args(["--backend", "http://127.0.0.1:8081"])
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
    // The defaults, but set up for deploy/nginx.conf on the same host.
    let mut expected = Config::default();
    expected.server.client_ip_header = "x-forwarded-for".into();
    expected.server.trusted_proxies =
        ssemux_gateway::TrustedProxies::parse("127.0.0.1, ::1").expect("parses");
    assert_eq!(cfg, expected, "example drifted from the defaults");
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

/// `ssemux <args>` with a clean environment plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ssemux"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run ssemux")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssemux-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let f = dir.join(name);
    std::fs::write(&f, text).expect("write");
    f
}

#[test]
fn errors_say_where_the_bad_value_came_from() {
    let f = temp_file(
        "where.toml",
        "backend = \"http://127.0.0.1:9\"\n\n[hub]\ngrace = \"soon\"\n",
    );
    let path = f.to_str().expect("utf8 path");
    let out = run(&["check-config", path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{path}:4: key `hub.grace`")),
        "{err}"
    );
    // A value from the environment or a flag is blamed on it, not the file.
    let ok = temp_file("ok.toml", "backend = \"http://127.0.0.1:9\"\n");
    let ok = ok.to_str().expect("utf8 path");
    let out = run(&["check-config", ok], &[("SSEMUX_HUB_RING_SIZE", "zero")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("SSEMUX_HUB_RING_SIZE=zero: "), "{err}");
    let out = run(&["check-config", ok, "--set", "hub.ring_size=0"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("--set hub.ring_size=0: "), "{err}");
    // A bad rule is named by its place in the list and its event.
    let rules = temp_file(
        "rules.toml",
        "backend = \"http://127.0.0.1:9\"\n[[translate.rules]]\nevent = \"a\"\n\n[[translate.rules]]\nevent = \"b\"\ntriggers = [{ name = \"no spaces\" }]\n",
    );
    let out = run(&["check-config", rules.to_str().expect("utf8")], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5: key `translate.rules[1]`") && err.contains("`b`"),
        "{err}"
    );
}

#[test]
fn check_config_is_quiet_checks_named_files_and_wants_a_backend() {
    let ok = temp_file("quiet.toml", "backend = \"http://127.0.0.1:9\"\n");
    let ok = ok.to_str().expect("utf8 path");
    let out = run(&["check-config", ok], &[]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "quiet unless --print");
    let out = run(&["check-config", ok, "--print"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[hub]"));
    // Files it names are read: a missing certificate fails the check.
    let out = run(
        &[
            "check-config",
            ok,
            "--set",
            "tls.cert=/nonexistent/c.pem",
            "--set",
            "tls.key=/nonexistent/k.pem",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No backend anywhere: refused, saying how to give one.
    let none = temp_file("nobackend.toml", "[hub]\ngrace = \"5s\"\n");
    let none = none.to_str().expect("utf8 path");
    for args in [vec!["check-config", none], vec!["serve", "--config", none]] {
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--backend"),
            "{args:?}"
        );
    }
    let out = run(
        &["check-config", none, "--backend", "http://127.0.0.1:9"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["check-config", none],
        &[("SSEMUX_BACKEND", "http://127.0.0.1:9")],
    );
    assert!(out.status.success());
    // An unknown log format is refused, not ignored.
    let out = run(&["--log-format", "yaml", "check-config", ok], &[]);
    assert_eq!(out.status.code(), Some(2));
}
