//! Floor: the raw fan-out floor — the least work that can put the same SSE
//! bytes on the same tab sockets. No HTTP library, no hub, no replay: read the
//! request line for the user, write a fixed response head, then copy each
//! pre-encoded event to the user's sockets.
//!
//! Owns the floor server (`ssemux-bench floor`). It must never be mistaken
//! for a product: it has no auth, no limits beyond bounded buffers, and no
//! recovery. It must never panic on what a client sends.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
/// Largest request head read before the path is known.
const MAX_HEAD: usize = 8192;
/// Events queued per socket; a tab that far behind is cut off.
const QUEUE: usize = 4096;
/// Most queued events written together.
const BATCH: usize = 64;

type Subs = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>>;

/// Run the floor: tabs on `listen` (`GET /events/<user>`), events on
/// `control` (lines `<user> <payload>`; payload is sent as the data of a
/// `thread-updated` and a `contact-changed` event, or of one `resync` when the
/// line is `<user> resync`).
pub async fn serve(listen: SocketAddr, control: SocketAddr) -> anyhow::Result<()> {
    let tabs = TcpListener::bind(listen).await?;
    let ctl = TcpListener::bind(control).await?;
    let subs: Subs = Arc::default();
    println!("floor listening on {listen}, control on {control}");
    let s2 = subs.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = ctl.accept().await else {
                continue;
            };
            tokio::spawn(control_conn(sock, s2.clone()));
        }
    });
    loop {
        let (sock, _) = match tabs.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Out of fds: back off briefly instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(tab_conn(sock, subs.clone()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn tab_conn(mut sock: TcpStream, subs: Subs) {
    let _ = sock.set_nodelay(true);
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let Some(user) = path.strip_prefix(b"/events/") else {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let user = String::from_utf8_lossy(user).into_owned();
    if sock.write_all(HEAD).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    lock(&subs).entry(user).or_default().push(tx);
    let (mut rd, mut wr) = sock.into_split();
    // Ends when the client closes (read returns 0) or a write fails.
    let reader = async {
        let mut b = [0u8; 64];
        while let Ok(n) = rd.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    };
    // Everything queued goes out in one `writev`, as ssemux's tabs do: a
    // floor that paid a syscall per event would not be a floor.
    let writer = async {
        let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(b) => batch.push(b),
                    Err(_) => break,
                }
            }
            if write_batch(&mut wr, &mut batch).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    // Our sender is pruned on the next publish (it reports closed).
}

// Write all of `batch` (emptied), as few syscalls as the socket allows.
async fn write_batch<W: AsyncWrite + Unpin>(
    wr: &mut W,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..].iter().map(|b| IoSlice::new(b)).collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < batch.len() {
            let len = batch[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                batch[first].advance(n);
                n = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}

fn encode(payload: &str) -> Bytes {
    if payload == "resync" {
        return Bytes::from_static(b"event: resync\ndata: 1\n\n");
    }
    Bytes::from(format!(
        "event: thread-updated\ndata: {payload}\n\nevent: contact-changed\ndata: {payload}\n\n"
    ))
}

async fn control_conn(sock: TcpStream, subs: Subs) {
    let mut lines = BufReader::new(sock).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some((user, payload)) = line.split_once(' ') else {
            continue;
        };
        let frame = encode(payload.trim());
        let mut map = lock(&subs);
        if let Some(list) = map.get_mut(user) {
            list.retain(|tx| !tx.is_closed() && tx.try_send(frame.clone()).is_ok());
        }
    }
}
