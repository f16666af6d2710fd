//! HTML rendering for the chat UI: the page shell, the login form, the
//! sidebar and a thread, in two flavours — htmx 2 with `htmx-ext-sse`, and
//! htmx 4 with its `hx-sse` extension.
//!
//! Owns markup only, and the one place where the two htmx versions differ
//! ([`Flavor`]). First paint and live updates use the same functions: the page
//! embeds [`sidebar`] and the fragment routes answer with [`sidebar`] and
//! [`thread`], which carry their own `hx-trigger`s, so a swapped-in fragment
//! keeps listening. It must never read state or requests, and must never
//! write a caller's string without [`escape`].

use crate::chat::Message;

/// Which htmx build a page runs on. Everything that differs between the two
/// lives in this type's methods; the markup around it is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// htmx 2 + `htmx-ext-sse` (`sse-connect`, `hx-trigger="sse:<event>"`).
    Htmx2,
    /// htmx 4 + `hx-sse` (`hx-sse:connect`; events are dispatched on the
    /// connecting element, so listeners use `from:#live`).
    Htmx4,
}

impl Flavor {
    /// The flavour named by the `htmx` query parameter: `4` picks htmx 4,
    /// anything else (or nothing) htmx 2.
    pub fn from_param(v: Option<&str>) -> Flavor {
        match v {
            Some("4") => Flavor::Htmx4,
            _ => Flavor::Htmx2,
        }
    }

    /// Query string that keeps the flavour on links and fragment URLs.
    fn query(self) -> &'static str {
        match self {
            Flavor::Htmx2 => "",
            Flavor::Htmx4 => "?htmx=4",
        }
    }

    /// Script tags, in load order: htmx first, then its SSE extension, then
    /// the page's own glue (badge, read watermark, send box).
    fn scripts(self) -> &'static str {
        match self {
            Flavor::Htmx2 => {
                "<script src=\"/static/htmx2.js\"></script>\n\
                 <script src=\"/static/htmx-ext-sse.js\"></script>\n\
                 <script src=\"/static/app.js\" defer></script>\n"
            }
            Flavor::Htmx4 => {
                "<script src=\"/static/htmx4.js\"></script>\n\
                 <script src=\"/static/hx-sse.js\"></script>\n\
                 <script src=\"/static/app.js\" defer></script>\n"
            }
        }
    }

    /// Attributes of `<body>`: the tab id header on every htmx request
    /// (htmx 4 inherits only what is marked `:inherited`), and the sign-in
    /// page the script goes to when the session is gone (`data-login`).
    fn body_attrs(self, tab: &str) -> String {
        let headers = escape(&format!("{{\"X-Tab-Id\":\"{tab}\"}}"));
        let tab = escape(tab);
        let login = format!("/{}", self.query());
        match self {
            Flavor::Htmx2 => format!(
                "hx-ext=\"sse\" hx-headers=\"{headers}\" data-tab=\"{tab}\" data-htmx=\"2\" \
                 data-login=\"{login}\""
            ),
            Flavor::Htmx4 => format!(
                "hx-headers:inherited=\"{headers}\" data-tab=\"{tab}\" data-htmx=\"4\" \
                 data-login=\"{login}\""
            ),
        }
    }

    /// Attributes of the element that holds the tab's `/events` stream.
    /// On `logout` the extension closes the stream instead of reconnecting
    /// (the page script then goes to the sign-in page).
    fn live_attrs(self, tab: &str) -> String {
        let url = escape(&format!("/events?tab={tab}"));
        match self {
            Flavor::Htmx2 => format!("sse-connect=\"{url}\" sse-close=\"logout\""),
            // `hx-swap="none"`: an error answer (401, 503) must never be
            // swapped over the page.
            Flavor::Htmx4 => {
                format!("hx-sse:connect=\"{url}\" hx-sse:close=\"logout\" hx-swap=\"none\"")
            }
        }
    }

    /// Attributes of an element that re-fetches a fragment on stream events
    /// and swaps the part `select` picks from it over its own child of that
    /// id. The element itself stays, so its request queue does too: a
    /// trigger arriving while a fetch is in flight queues one more fetch
    /// (`queue last`) instead of being dropped — a dropped one would leave
    /// the view stale until the next event.
    fn refetch(self, url: &str, select: &str, events: &[Listen<'_>]) -> String {
        let sync = match self {
            Flavor::Htmx2 => "this:queue last",
            Flavor::Htmx4 => "queue last",
        };
        format!(
            "hx-get=\"{url}\" hx-trigger=\"{}\" hx-target=\"{select}\" hx-select=\"{select}\" \
             hx-swap=\"outerHTML\" hx-sync=\"{sync}\" hx-disinherit=\"*\"",
            escape(&self.on(events))
        )
    }

    /// `hx-trigger` value firing on any of the named stream events, or on
    /// a `reload` event dispatched on the element itself (the page script
    /// uses it to close the gap between a fragment's render and its
    /// listeners being attached).
    fn on(self, events: &[Listen<'_>]) -> String {
        let mut specs: Vec<String> = events
            .iter()
            .map(|l| {
                let (name, filter) = match *l {
                    Listen::Any(name) => (name, String::new()),
                    // Both versions expose the event's `detail` to filters;
                    // the trigger's data is the peer's name.
                    Listen::Peer(name, peer) => (name, format!("[detail.data==='{peer}']")),
                };
                match self {
                    Flavor::Htmx2 => format!("sse:{name}{filter}"),
                    Flavor::Htmx4 => format!("{name}{filter} from:#live"),
                }
            })
            .collect();
        specs.push("reload".to_owned());
        specs.join(", ")
    }
}

/// A stream event a fragment listens for.
#[derive(Clone, Copy)]
enum Listen<'a> {
    /// Every event of this name.
    Any(&'a str),
    /// Only those whose data is this peer (a thread ignores other threads'
    /// updates).
    Peer(&'a str, &'a str),
}

/// One sidebar entry.
pub struct Contact<'a> {
    /// The peer's user name.
    pub peer: &'a str,
    /// Messages from the peer above my read watermark.
    pub unread: usize,
}

/// A thread as one user sees it.
pub struct ThreadView<'a> {
    /// The viewer.
    pub me: &'a str,
    /// The other party.
    pub peer: &'a str,
    /// Messages between them, oldest first.
    pub messages: &'a [Message],
    /// The viewer's read watermark for `peer`: incoming messages at or below
    /// it are read.
    pub my_watermark: u64,
    /// `peer`'s watermark for the viewer: outgoing messages at or below it
    /// have been seen.
    pub peer_watermark: u64,
}

/// Escapes text for use in element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, head: &str, body_attrs: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<link rel=\"icon\" href=\"data:,\">\n<link rel=\"stylesheet\" href=\"/static/app.css\">\n{head}</head>\n\
         <body {body_attrs}>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// The page shown without a session.
pub fn login_page(flavor: Flavor) -> String {
    let body = format!(
        "<main class=\"login-box\">\n<h1>posta</h1>\n\
         <p>A demo chat behind ssemux. Sign in as <b>alice</b>, <b>bob</b> or <b>carol</b> \
         (no password); use a private window for a second user.</p>\n{}{}</main>\n",
        login_form(flavor),
        flavor_switch(flavor)
    );
    document("posta — sign in", "", "class=\"signed-out\"", &body)
}

/// The sign-in form; posts `user` (and the flavour, so the redirect keeps
/// it) as a form to `/login`.
pub fn login_form(flavor: Flavor) -> String {
    let keep = match flavor {
        Flavor::Htmx2 => "",
        Flavor::Htmx4 => "<input type=\"hidden\" name=\"htmx\" value=\"4\">\n",
    };
    format!(
        "<form class=\"login\" method=\"post\" action=\"/login\">\n{keep}\
         <label>User <input name=\"user\" autocomplete=\"username\" required autofocus></label>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n"
    )
}

/// Links to the same page on the other htmx version.
fn flavor_switch(flavor: Flavor) -> String {
    let link = |f: Flavor, label: &str| {
        if f == flavor {
            format!("<b>{label}</b>")
        } else {
            format!("<a href=\"/{}\">{label}</a>", f.query())
        }
    };
    format!(
        "<span class=\"switch\">{} · {}</span>",
        link(Flavor::Htmx2, "htmx 2"),
        link(Flavor::Htmx4, "htmx 4")
    )
}

/// The signed-in page: header with the connection badge, sidebar and an
/// empty thread pane, all inside the element holding the `/events` stream.
/// `tab` identifies this page load (`?tab=` on the stream, `X-Tab-Id` on
/// requests) so the gateway can tell which peer this tab has open.
pub fn app_page(flavor: Flavor, me: &str, tab: &str, contacts: &[Contact<'_>]) -> String {
    let body = format!(
        "<div id=\"live\" class=\"live\" {live}>\n\
         <header class=\"top me\" data-user=\"{me}\">\
         <span class=\"brand\">posta</span> \
         <span id=\"conn\" class=\"badge\" data-state=\"connecting\" role=\"status\"{outage}>Connecting…</span> \
         <span class=\"who\">Signed in as <b>{me}</b></span> {switch} {logout}</header>\n\
         <main class=\"app\">\n{sidebar}{pane}</main>\n</div>\n",
        live = flavor.live_attrs(tab),
        // htmx 2's extension only listens for names some element asks for;
        // htmx 4 dispatches every event on #live.
        outage = match flavor {
            Flavor::Htmx2 => " hx-trigger=\"sse:upstream-down, sse:upstream-up, sse:logout\"",
            Flavor::Htmx4 => "",
        },
        me = escape(me),
        switch = flavor_switch(flavor),
        logout = logout_form(flavor),
        sidebar = sidebar(flavor, contacts),
        pane = empty_thread_pane(),
    );
    document("posta", flavor.scripts(), &flavor.body_attrs(tab), &body)
}

/// The sign-out button.
pub fn logout_form(flavor: Flavor) -> String {
    format!(
        "<form class=\"logout\" method=\"post\" action=\"/logout{}\">\
         <button type=\"submit\">Sign out</button></form>",
        flavor.query()
    )
}

/// The contact list with unread badges. Re-fetches itself when a contact
/// changed or the stream asks for a resync.
pub fn sidebar(flavor: Flavor, contacts: &[Contact<'_>]) -> String {
    let url = format!("/fragments/sidebar{}", flavor.query());
    let mut out = format!(
        "<nav id=\"sidebar\" class=\"sidebar\" {}>\n<ul id=\"contacts\">\n",
        flavor.refetch(
            &url,
            "#contacts",
            &[Listen::Any("contact-changed"), Listen::Any("resync")]
        ),
    );
    for c in contacts {
        out.push_str(&contact_item(flavor, c));
    }
    out.push_str("</ul>\n</nav>\n");
    out
}

/// One contact row; the badge is present even at zero so updates can swap it.
pub fn contact_item(flavor: Flavor, c: &Contact<'_>) -> String {
    let peer = escape(c.peer);
    let url = format!("/fragments/thread/{peer}{}", flavor.query());
    format!(
        "<li class=\"contact\" data-peer=\"{peer}\">\
         <a href=\"{url}\" hx-get=\"{url}\" hx-target=\"#thread\" hx-swap=\"outerHTML\">{peer}</a> \
         <span class=\"unread\" data-unread=\"{n}\">{n}</span></li>\n",
        n = c.unread
    )
}

/// The thread pane before a contact is chosen.
pub fn empty_thread_pane() -> String {
    "<section id=\"thread\" class=\"thread empty\"><p class=\"hint\">Pick a contact.</p></section>\n"
        .to_owned()
}

/// A thread: its messages and a send box. Live updates re-fetch this same
/// fragment and keep only `#messages` (`hx-select`), so the send box and
/// whatever is being typed in it survive an update.
pub fn thread(flavor: Flavor, t: &ThreadView<'_>) -> String {
    let peer = escape(t.peer);
    let url = format!("/fragments/thread/{peer}{}", flavor.query());
    // Filter only on names that cannot break out of the JS string; any
    // other name just refetches on every thread update, which is still
    // correct.
    let updated = if !t.peer.is_empty() && t.peer.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Listen::Peer("thread-updated", t.peer)
    } else {
        Listen::Any("thread-updated")
    };
    let mut out = format!(
        "<section id=\"thread\" class=\"thread\" data-peer=\"{peer}\">\n<h2>{peer}</h2>\n\
         <div class=\"messages-box\" {}>\n\
         <ol id=\"messages\" class=\"messages\" data-peer=\"{peer}\">\n",
        flavor.refetch(&url, "#messages", &[updated, Listen::Any("resync")]),
    );
    for m in t.messages {
        let read = if m.from == t.me {
            m.row_id <= t.peer_watermark
        } else {
            m.row_id <= t.my_watermark
        };
        out.push_str(&message_item(t.me, m, read));
    }
    // `#send-error` is where the page script says why a message was not
    // sent (blank, refused, network); outside `#messages`, so an update
    // does not clear it.
    out.push_str(&format!(
        "</ol>\n</div>\n<form id=\"send\" class=\"send\" hx-post=\"/api/v1/messages\" hx-swap=\"none\">\
         <input type=\"hidden\" name=\"to\" value=\"{peer}\">\
         <input name=\"text\" placeholder=\"Message {peer}\" autocomplete=\"off\" required>\
         <button type=\"submit\">Send</button></form>\n\
         <p id=\"send-error\" class=\"send-error\" role=\"alert\" hidden></p>\n</section>\n"
    ));
    out
}

/// One message; `data-row-id` lets clients and tests find and order it.
/// `read` means: for an incoming message, I have read it; for an outgoing
/// one, the peer has.
pub fn message_item(me: &str, m: &Message, read: bool) -> String {
    let dir = if m.from == me { "out" } else { "in" };
    let (flag, mark) = if read {
        ("1", "<span class=\"mark\" title=\"read\">✓✓</span>")
    } else {
        ("0", "<span class=\"mark\" title=\"not read yet\">✓</span>")
    };
    format!(
        "<li class=\"message {dir}\" data-row-id=\"{}\" data-read=\"{flag}\"><span class=\"from\">{}</span> \
         <span class=\"text\">{}</span> {mark}</li>\n",
        m.row_id,
        escape(&m.from),
        escape(&m.text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(row_id: u64, from: &str, text: &str) -> Message {
        Message {
            row_id,
            from: from.into(),
            text: text.into(),
        }
    }

    #[test]
    fn escapes_everything_user_controlled() {
        let m = msg(3, "bob", "<script>\"x\"&'y'</script>");
        let html = thread(
            Flavor::Htmx2,
            &ThreadView {
                me: "alice",
                peer: "b<o>b",
                messages: &[m],
                my_watermark: 0,
                peer_watermark: 0,
            },
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"));
        assert!(html.contains("data-peer=\"b&lt;o&gt;b\""));
        assert!(html.contains("data-row-id=\"3\""));
        assert!(html.contains("message in"));
    }

    #[test]
    fn sidebar_shows_counts() {
        let html = sidebar(
            Flavor::Htmx2,
            &[
                Contact {
                    peer: "bob",
                    unread: 2,
                },
                Contact {
                    peer: "carol",
                    unread: 0,
                },
            ],
        );
        assert!(html.contains("data-peer=\"bob\""));
        assert!(html.contains("data-unread=\"2\">2<"));
        assert!(html.contains("data-unread=\"0\">0<"));
    }

    #[test]
    fn read_marks_follow_the_right_watermark() {
        let msgs = [msg(1, "bob", "in"), msg(2, "alice", "out")];
        let html = thread(
            Flavor::Htmx2,
            &ThreadView {
                me: "alice",
                peer: "bob",
                messages: &msgs,
                my_watermark: 1,
                peer_watermark: 1,
            },
        );
        assert!(html.contains("data-row-id=\"1\" data-read=\"1\""), "{html}");
        assert!(html.contains("data-row-id=\"2\" data-read=\"0\""), "{html}");
    }

    #[test]
    fn flavours_differ_only_in_wiring() {
        let c = [Contact {
            peer: "bob",
            unread: 0,
        }];
        let two = app_page(Flavor::Htmx2, "alice", "t1", &c);
        assert!(two.contains("sse-connect=\"/events?tab=t1\" sse-close=\"logout\""));
        assert!(two.contains("sse:upstream-down, sse:upstream-up, sse:logout"));
        assert!(two.contains("data-login=\"/\""));
        assert!(two.contains("hx-trigger=\"sse:contact-changed, sse:resync, reload\""));
        assert!(two.contains("hx-headers=\"{&quot;X-Tab-Id&quot;:&quot;t1&quot;}\""));
        assert!(two.contains("/static/htmx2.js"));
        let four = app_page(Flavor::Htmx4, "alice", "t1", &c);
        assert!(four.contains("hx-sse:connect=\"/events?tab=t1\" hx-sse:close=\"logout\""));
        assert!(four.contains("data-login=\"/?htmx=4\""));
        assert!(four.contains("contact-changed from:#live, resync from:#live, reload"));
        assert!(four.contains("hx-headers:inherited="));
        assert!(four.contains("/fragments/thread/bob?htmx=4"));
        assert!(four.contains("/static/htmx4.js"));
        let view = ThreadView {
            me: "alice",
            peer: "bob",
            messages: &[],
            my_watermark: 0,
            peer_watermark: 0,
        };
        assert!(thread(Flavor::Htmx2, &view).contains(
            "hx-trigger=\"sse:thread-updated[detail.data===&#39;bob&#39;], sse:resync, reload\""
        ));
        assert!(thread(Flavor::Htmx4, &view).contains(
            "thread-updated[detail.data===&#39;bob&#39;] from:#live, resync from:#live, reload"
        ));
        assert_eq!(Flavor::from_param(Some("4")), Flavor::Htmx4);
        assert_eq!(Flavor::from_param(Some("x")), Flavor::Htmx2);
    }
}
