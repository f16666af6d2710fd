// posta demo page glue, shared by the htmx 2 and htmx 4 pages.
//
// Owns what htmx attributes cannot express: the connection badge, leaving
// for the sign-in page when the session is gone, posting the read watermark
// when a thread is shown, and the send box (cleared once sent, an error
// shown when not). It never renders chat data (the server's fragments do)
// and never keeps a stream of its own (the htmx SSE extension does; a
// failed stream is probed once to tell "signed out" from "down").
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

  // ---- signed out -------------------------------------------------------
  // docs/events.md: on `logout` a page goes to its sign-in page; so does a
  // stream the gateway refuses with 401 (the session is gone, e.g. after a
  // demo restart). Everything else (503, unreachable) stays and reconnects.
  // Why the page left is kept for this window (`logout` or `401`), like the
  // badge history: for tests and the curious, on the page it went to.
  var leaving = false;
  function toSignIn(why, where) {
    if (leaving) return;
    leaving = true;
    setState("disconnected");
    try {
      sessionStorage.setItem("ssemuxSignedOut", why);
    } catch (e) {
      // Storage may be off; leaving matters, the note does not.
    }
    window.location.assign(where || body.dataset.login || "/");
  }
  on("sse:logout", function () {
    toSignIn("logout"); // htmx 2: the badge listens
  });
  on("logout", function () {
    toSignIn("logout"); // htmx 4: dispatched on #live
  });

  // EventSource and htmx 2 hide the status of a refused stream: ask once,
  // one question at a time. A 401 may name the backend's login page.
  var probing = false;
  function checkSignedIn() {
    if (probing || leaving) return;
    probing = true;
    fetch("/events", {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/event-stream" },
    })
      .then(
        function (r) {
          if (r.body) r.body.cancel().catch(function () {});
          if (r.status === 401) toSignIn("401", r.headers.get("Location"));
        },
        function () {
          // Unreachable: not a sign-out; the stream's own retries go on.
        }
      )
      .then(function () {
        probing = false;
      });
  }

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
    on("htmx:sse:error", function (e) {
      setState("reconnecting");
      // A status: the gateway answered, and not with a stream.
      if (e.detail && e.detail.status) checkSignedIn();
    });
    // The first connect is a plain htmx request: a refusal there never
    // becomes a stream (and is not retried), so look at its answer.
    on("htmx:after:request", function (e) {
      var ctx = e.detail && e.detail.ctx;
      var elt = ctx && ctx.sourceElement;
      if (!elt || elt.id !== "live" || !ctx.response || ctx.response.status < 300) return;
      setState("disconnected");
      checkSignedIn();
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
      var closed = src && src.readyState === 2;
      setState(closed ? "disconnected" : "reconnecting");
      if (closed) checkSignedIn();
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
  // clear the box once the backend took it, and otherwise say why not next
  // to it, leaving the text where it is to try again.
  function sendError(text, link) {
    var p = document.getElementById("send-error");
    if (!p) return;
    p.textContent = text || "";
    if (link) {
      var a = document.createElement("a");
      a.href = body.dataset.login || "/";
      a.textContent = link;
      p.appendChild(document.createTextNode(" "));
      p.appendChild(a);
    }
    p.hidden = !text;
  }

  // Blank (only spaces): not sent at all. Capturing on the document runs
  // before htmx's own submit listener on the form, so htmx never sees it.
  document.addEventListener(
    "submit",
    function (e) {
      var form = e.target;
      if (!form || form.id !== "send") return;
      var input = form.querySelector("input[name=text]");
      if (input && input.value.trim() === "") {
        e.preventDefault();
        e.stopImmediatePropagation();
        sendError("Type a message first: a blank one is not sent.");
        input.focus();
      }
    },
    true
  );
  on("input", function (e) {
    if (e.target && e.target.closest && e.target.closest("#send")) sendError("");
  });

  // `status` 0: no answer at all (network error, gateway gone).
  function sent(form, status, answer) {
    var input = form.querySelector("input[name=text]");
    if (status >= 200 && status < 300) {
      form.reset();
      sendError("");
      if (input) input.focus();
      return;
    }
    if (status === 0) {
      sendError("Not sent: the server could not be reached. Try again.");
    } else if (status === 401 || status === 403) {
      sendError("Not sent: you are signed out (" + status + ").", "Sign in again");
    } else {
      var why = String(answer || "").trim().slice(0, 120);
      sendError("Not sent (" + status + (why ? ": " + why : "") + ").");
    }
  }
  // htmx 2: after every answer and after a network error (status 0).
  on("htmx:afterRequest", function (e) {
    var d = e.detail || {};
    if (!d.elt || d.elt.id !== "send" || !d.xhr) return;
    sent(d.elt, d.xhr.status, d.xhr.responseText);
  });
  // htmx 4: `finally` comes in every case; without a response it failed.
  on("htmx:finally:request", function (e) {
    var ctx = e.detail && e.detail.ctx;
    var elt = ctx && ctx.sourceElement;
    if (!elt || elt.id !== "send") return;
    sent(elt, ctx.response ? ctx.response.status : 0, ctx.text);
  });
})();
