// posta demo page glue, shared by the htmx 2 and htmx 4 pages.
//
// Owns what htmx attributes cannot express: the connection badge, posting
// the read watermark when a thread is shown, and clearing the send box. It
// never renders chat data (the server's fragments do) and never opens its
// own stream (the htmx SSE extension does).
(function () {
  "use strict";

  var body = document.body;
  var tab = body.dataset.tab;
  var htmx4 = body.dataset.htmx === "4";
  var badge = document.getElementById("conn");
  if (!badge || !tab) return; // the sign-in page has neither

  // ---- connection badge -------------------------------------------------
  // Every state the badge took, oldest first: lets a test (or a curious
  // user in the console) see a short-lived state that a poll would miss.
  var history = (window.ssemuxBadgeLog = ["connecting"]);
  var LABEL = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    resyncing: "Resyncing…",
    degraded: "Backend unreachable…",
    paused: "Paused",
    disconnected: "Disconnected",
  };

  function setState(state) {
    if (badge.dataset.state === state) return;
    badge.dataset.state = state;
    badge.textContent = LABEL[state];
    history.push(state);
  }

  var on = function (name, fn) {
    document.addEventListener(name, fn);
  };

  if (htmx4) {
    // A snappy return from the background; errors still back off from here.
    htmx.config.sse = Object.assign({ reconnectDelay: 200 }, htmx.config.sse);
    on("htmx:sse:after:connection", function (e) {
      setState("connected");
      var c = e.detail && e.detail.connection;
      // htmx 4 resumes with Last-Event-ID once it has seen an id; before
      // that, nothing tells the gateway what we missed.
      if (!c || !c.lastEventId) refreshAll();
    });
    on("htmx:sse:before:connection", function (e) {
      var c = e.detail && e.detail.connection;
      if (c && c.attempt > 0) setState("reconnecting");
    });
    on("htmx:sse:error", function () {
      setState("reconnecting");
    });
    on("htmx:sse:close", function () {
      setState("disconnected");
    });
    // htmx 4 drops the stream of a hidden tab and reconnects on return.
    on("visibilitychange", function () {
      if (document.hidden) setState("paused");
    });
  } else {
    // The extension replaces a failed EventSource with a new one, which
    // starts without Last-Event-ID; the browser's own reconnects keep it.
    var lastSource = null;
    var sawId = false;
    on("htmx:sseMessage", function (e) {
      if (e.detail && e.detail.lastEventId) sawId = true;
    });
    on("htmx:sseOpen", function (e) {
      setState("connected");
      var src = e.detail && e.detail.source;
      var resumed = sawId && src === lastSource;
      lastSource = src;
      if (!resumed) {
        sawId = false;
        refreshAll();
      }
    });
    on("htmx:sseError", function (e) {
      var src = e.detail && e.detail.source;
      // CONNECTING: the browser retries by itself. CLOSED: it gave up
      // (an error status); the extension retries later with backoff.
      setState(src && src.readyState === 2 ? "disconnected" : "reconnecting");
    });
    on("htmx:sseClose", function () {
      setState("disconnected");
    });
  }

  // The gateway's stream to the backend is down: the page is connected, but
  // no update can arrive until the gateway says the backend is back.
  function upstreamDown() {
    setState("degraded");
  }
  function upstreamUp() {
    if (badge.dataset.state === "degraded") setState("connected");
  }
  on("sse:upstream-down", upstreamDown); // htmx 2: the badge listens
  on("upstream-down", upstreamDown); // htmx 4: dispatched on #live
  on("sse:upstream-up", upstreamUp);
  on("upstream-up", upstreamUp);

  // A resync means our view may be stale until the fragments that listen
  // for it have been re-fetched: yellow until the contact list is replaced.
  var contactsAtResync = null;
  function resync() {
    contactsAtResync = document.getElementById("contacts");
    setState("resyncing");
  }
  on("sse:resync", resync); // htmx 2: re-dispatched on each listener
  on("resync", resync); // htmx 4: dispatched on #live, bubbles

  // Re-render everything that listens for `resync`, exactly as if the
  // stream had sent one. Used when the stream (re)opens without a
  // `Last-Event-ID` to resume from: events between the page's render (or the
  // drop) and this open were never going to reach us, so only a fresh
  // render makes the page current.
  function refreshAll() {
    if (htmx4) {
      htmx.trigger(document.getElementById("live"), "resync", { data: "page" });
    } else {
      document.querySelectorAll('[hx-trigger*="sse:resync"]').forEach(function (elt) {
        htmx.trigger(elt, "sse:resync", { data: "page" });
      });
    }
  }

  // ---- read watermark ---------------------------------------------------
  // Highest rowId posted per peer, so a re-render posts only news.
  var posted = {};
  var shownThread = null;

  function postRead(peer, rowId) {
    posted[peer] = rowId;
    fetch("/api/v1/contacts/read", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Tab-Id": tab },
      body: JSON.stringify({ peer: peer, rowId: rowId }),
    }).catch(function () {
      // Not posted after all: let the next render try again.
      if (posted[peer] === rowId) delete posted[peer];
    });
  }

  function onDomChange() {
    if (contactsAtResync && document.getElementById("contacts") !== contactsAtResync) {
      contactsAtResync = null;
      if (badge.dataset.state === "resyncing") setState("connected");
    }
    var thread = document.getElementById("thread");
    var list = document.getElementById("messages");
    if (!thread || !list) return;
    var peer = list.dataset.peer;
    var max = 0;
    list.querySelectorAll("[data-row-id]").forEach(function (li) {
      max = Math.max(max, Number(li.dataset.rowId) || 0);
    });
    // Opening a thread always posts (it makes the peer active for this
    // tab even when the thread is empty); later renders only when it grew.
    var opened = thread !== shownThread;
    if (opened || !(peer in posted) || max > posted[peer]) {
      shownThread = thread;
      postRead(peer, max);
    }
    if (list.dataset.scrolled !== "1" && list.parentElement) {
      list.dataset.scrolled = "1";
      list.parentElement.scrollTop = list.parentElement.scrollHeight;
    }
  }
  new MutationObserver(onDomChange).observe(body, { childList: true, subtree: true });

  // A freshly opened thread was rendered before its listeners existed; an
  // event in between would be lost. Once it has settled (listeners
  // attached), fetch it once more.
  var settledThread = null;
  function afterSettle() {
    var thread = document.getElementById("thread");
    if (!thread || thread === settledThread) return;
    settledThread = thread;
    var box = thread.querySelector(".messages-box");
    if (box) htmx.trigger(box, "reload");
  }
  on("htmx:afterSettle", afterSettle);
  on("htmx:after:settle", afterSettle);

  // ---- send box ---------------------------------------------------------
  // The message shows up through the stream like everyone else's; here we
  // only clear the box once the backend took it.
  function afterRequest(e) {
    var d = e.detail || {};
    var elt = d.elt || (d.ctx && d.ctx.sourceElement);
    if (!elt || elt.id !== "send") return;
    var ok = d.ctx ? d.ctx.response && d.ctx.response.status < 400 : d.successful;
    if (ok) {
      elt.reset();
      var input = elt.querySelector("input[name=text]");
      if (input) input.focus();
    }
  }
  on("htmx:afterRequest", afterRequest);
  on("htmx:after:request", afterRequest);
})();
