//! Per-tab memory budget: what one idle tab costs the gateway, as a size
//! assertion. The tab's whole serving state (the boxed response body with its
//! parked `next_chunk` future, the hub subscription, the channel credential,
//! the pending-frame queue) is measured as live heap bytes with a counting
//! allocator, so any growth of the future or the structs it holds fails here.
//!
//! Kept to one test in this binary: the allocator counts every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use ssemux_gateway::Config;
use ssemux_gateway::Gateway;
use ssemux_gateway::Metrics;
use ssemux_gateway::Rules;
use ssemux_gateway::{
    ByteStream, ConnectError, ConnectRequest, Connector, Upstream, UpstreamConfig,
};
use ssemux_gateway::{Hub, HubConfig, Subscription};
use ssemux_gateway::{TabHold, TabSettings, tab_stream};

/// Live heap bytes of one idle tab may not exceed this. Measured at 680 B
/// when written (the boxed body with its parked future ≈ 740 B, the attach
/// ≈ 50 B); the headroom is for small additions. Raising it needs a reason:
/// it multiplies by every open tab. (The connection's own buffers — hyper's,
/// the kernel's — and the per-user channel are not in this number.)
const TAB_HEAP_BUDGET: isize = 1024;

/// Bytes of the future that streams an idle tab's response on its
/// connection (`tab_conn::respond`), which is most of the tab's task. It
/// holds no buffer of its own while the tab is idle; measured at 304 B when
/// written (debug and release alike).
const RESPOND_FUTURE_BUDGET: usize = 384;

/// Tabs measured; enough that one-off allocations (channel, maps) vanish
/// in the average.
const TABS: isize = 1000;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// An upstream that never connects: the tabs stay idle, nothing arrives.
struct Never;

impl Connector for Never {
    fn connect(
        &self,
        _req: ConnectRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ByteStream, ConnectError>> + Send + 'static>> {
        Box::pin(std::future::pending())
    }
}

fn hub() -> Hub {
    let settings = HubConfig {
        grace: Duration::from_secs(10),
        ring_size: 256,
        max_tabs_per_user: 100_000,
        max_total_tabs: 100_000,
        ..HubConfig::default()
    };
    let upstream = Upstream::new(
        Arc::new(Never),
        Arc::new(Rules::default()),
        UpstreamConfig {
            idle_timeout: Duration::from_secs(45),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            max_event_bytes: 64 * 1024,
            ..UpstreamConfig::default()
        },
        None,
    );
    Hub::new(settings, upstream)
}

/// One metrics registry shared by every tab, as the gateway shares its own.
fn metrics() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// A gateway, used only for a shutdown token of the type `tab_stream` takes
/// (this package does not depend on tokio-util directly). Its own hub is
/// never used, so its backend address does not matter.
fn gateway() -> Arc<Gateway> {
    let cfg = Config::from_parts("", Vec::new(), &["backend=http://127.0.0.1:9".to_string()])
        .expect("config");
    Gateway::new(cfg).expect("gateway")
}

fn open_tab(hub: &Hub, gw: &Arc<Gateway>) -> ssemux_gateway::body::Body {
    let subscription: Subscription = hub
        .subscribe("alice", "session=abcdef0123456789")
        .expect("subscribe");
    let attach = subscription.channel().attach(None);
    tab_stream(
        TabHold {
            subscription,
            mark: None,
        },
        attach,
        TabSettings {
            keepalive: Duration::from_secs(15),
            retry_ms: 2000,
            metrics: metrics().clone(),
        },
        gw.shutdown_token(),
    )
}

/// Drive a tab to its idle state: the frames it sends on connect (`retry:`
/// and whatever else is ready at once) taken, then the body parked waiting
/// for the broadcast or the keepalive timer. The parked future lives inside
/// the body, which is what an idle tab holds.
async fn park(body: &mut ssemux_gateway::body::Body) {
    // Bounded: a fresh tab sends a handful of frames at most before idling.
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(1), body.frame()).await {
            Err(_) => return,
            Ok(Some(Ok(frame))) => assert!(frame.is_data()),
            Ok(Some(Err(e))) => panic!("tab body failed: {e}"),
            Ok(None) => panic!("an idle tab's stream ended"),
        }
    }
    panic!("an idle tab kept sending frames");
}

#[tokio::test(flavor = "current_thread")]
async fn idle_tab_heap_stays_within_budget() {
    let hub = hub();
    let gw = gateway();
    // The first tab creates the channel and its upstream task: not per-tab.
    let mut first = open_tab(&hub, &gw);
    park(&mut first).await;
    // Warm up lazily-grown tables (credential list, timer wheel) a little.
    let mut warm = Vec::new();
    for _ in 0..16 {
        let mut b = open_tab(&hub, &gw);
        park(&mut b).await;
        warm.push(b);
    }
    // Where one tab's bytes go (printed for the record, not asserted).
    {
        let l0 = LIVE.load(Ordering::SeqCst);
        let subscription = hub
            .subscribe("alice", "session=abcdef0123456789")
            .expect("subscribe");
        let l1 = LIVE.load(Ordering::SeqCst);
        let attach = subscription.channel().attach(None);
        let l2 = LIVE.load(Ordering::SeqCst);
        let mut b = tab_stream(
            TabHold {
                subscription,
                mark: None,
            },
            attach,
            TabSettings {
                keepalive: Duration::from_secs(15),
                retry_ms: 2000,
                metrics: metrics().clone(),
            },
            gw.shutdown_token(),
        );
        let l3 = LIVE.load(Ordering::SeqCst);
        park(&mut b).await;
        let l4 = LIVE.load(Ordering::SeqCst);
        println!(
            "one tab: subscribe {} B, attach {} B, stream {} B, first poll {} B",
            l1 - l0,
            l2 - l1,
            l3 - l2,
            l4 - l3
        );
        warm.push(b);
    }
    let mut tabs = Vec::with_capacity(TABS as usize);
    let before = LIVE.load(Ordering::SeqCst);
    for _ in 0..TABS {
        let mut b = open_tab(&hub, &gw);
        park(&mut b).await;
        tabs.push(b);
    }
    let after = LIVE.load(Ordering::SeqCst);
    // The Vec holding the bodies is the test's, not the tab's.
    let per_tab =
        (after - before) / TABS - std::mem::size_of::<ssemux_gateway::body::Body>() as isize;
    println!("idle tab live heap: {per_tab} bytes (budget {TAB_HEAP_BUDGET})");
    assert!(
        per_tab <= TAB_HEAP_BUDGET,
        "one idle tab holds {per_tab} heap bytes, over the {TAB_HEAP_BUDGET}-byte budget"
    );
    assert!(per_tab > 0, "measurement broken: {per_tab}");
    assert_eq!(hub.tabs("alice"), 1 + warm.len() + TABS as usize);

    let (mut near, _far) = tokio::io::duplex(64);
    let respond = ssemux_gateway::tab_respond(&mut near, http::Response::new(first));
    let size = std::mem::size_of_val(&respond);
    println!("respond future: {size} bytes (budget {RESPOND_FUTURE_BUDGET})");
    assert!(
        size <= RESPOND_FUTURE_BUDGET,
        "the tab connection's streaming future is {size} bytes, over the {RESPOND_FUTURE_BUDGET}-byte budget"
    );
    drop(respond);
    drop(tabs);
    drop(warm);
}
