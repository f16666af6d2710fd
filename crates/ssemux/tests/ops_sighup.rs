//! SIGHUP against the real binary: the file's new translation rules apply to
//! an open tab stream; a file that does not validate is refused with a log
//! line and the running rules stay.

use std::process::Stdio;
use std::time::Duration;

use ssemux_mock_upstream::MockBackend;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn rules(trigger: &str) -> String {
    format!(
        "[[translate.rules]]\nevent = \"inbound\"\ntriggers = [{{ name = \"{trigger}\", data_field = \"peer\" }}]\n"
    )
}

/// Read the stream until `needle` shows up; panics after [`WAIT`].
async fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` in time; got {seen}"))
            .expect("read");
        assert!(n > 0, "stream ended; got {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Wait for a log line containing `needle`.
async fn log_line(lines: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.recv().await {
            if l.contains(needle) {
                return l;
            }
        }
        panic!("ssemux exited before logging `{needle}`");
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with `{needle}` in time"))
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_refuses_a_bad_file() {
    let backend = MockBackend::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("mock backend");
    let dir = std::env::temp_dir().join(format!("ssemux-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let file = dir.join("ssemux.toml");
    std::fs::write(&file, rules("first-rule")).expect("write config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_ssemux"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--backend", &backend.url()])
        .arg("--config")
        .arg(&file)
        .env("SSEMUX_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ssemux");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut r = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = r.next_line().await {
            let _ = tx.send(l);
        }
    });
    let serving = log_line(&mut lines, "ssemux serving").await;
    let v: serde_json::Value = serde_json::from_str(&serving).expect("json log");
    let addr = v["fields"]["listen"]
        .as_str()
        .expect("listen field")
        .to_string();

    let cookie = format!("session={}", backend.create_session("alice"));
    let mut tab = TcpStream::connect(&addr).await.expect("connect");
    tab.write_all(
        format!("GET /events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut seen = String::new();
    read_until(&mut tab, &mut seen, "retry:").await;
    assert!(
        backend
            .wait_until(WAIT, |b| b.open_streams("alice") == 1)
            .await
    );
    backend.send_message("bob", "alice", "one");
    read_until(&mut tab, &mut seen, "event: first-rule").await;

    let pid = child.id().expect("running").to_string();
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP");
    };
    std::fs::write(&file, rules("second-rule")).expect("rewrite config");
    hup();
    log_line(&mut lines, "configuration reloaded").await;
    backend.send_message("bob", "alice", "two");
    read_until(&mut tab, &mut seen, "event: second-rule").await;

    // A trigger name with a space: refused, with the key named.
    std::fs::write(&file, rules("bad rule")).expect("rewrite config");
    hup();
    let refused = log_line(&mut lines, "reload refused").await;
    assert!(refused.contains("translate"), "{refused}");
    seen.clear();
    backend.send_message("carol", "alice", "three");
    read_until(&mut tab, &mut seen, "event: second-rule").await;
    assert!(seen.contains("carol"));
    assert_eq!(
        backend.streams_opened_total(),
        1,
        "the upstream was reopened"
    );

    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
