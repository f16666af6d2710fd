//! HTML rendering for the chat UI: the page shell, the login form, the
//! sidebar and a thread.
//!
//! Owns markup only; every function is pure and small so a later change can
//! add htmx attributes in one place. It must never read state or requests,
//! and must never write a caller's string without [`escape`].

use crate::chat::Message;

/// One sidebar entry.
pub struct Contact<'a> {
    /// The peer's user name.
    pub peer: &'a str,
    /// Messages from the peer above my read watermark.
    pub unread: usize,
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

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// The page shown without a session.
pub fn login_page() -> String {
    document("posta — sign in", &login_form())
}

/// The sign-in form; posts `user` as a form to `/login`.
pub fn login_form() -> String {
    "<form class=\"login\" method=\"post\" action=\"/login\">\n\
     <label>User <input name=\"user\" autocomplete=\"username\" required></label>\n\
     <button type=\"submit\">Sign in</button>\n</form>\n"
        .to_owned()
}

/// The signed-in page: header, sidebar and an empty thread pane.
pub fn app_page(me: &str, contacts: &[Contact<'_>]) -> String {
    let body = format!(
        "<header class=\"me\" data-user=\"{me}\">Signed in as <b>{me}</b> {logout}</header>\n\
         <main class=\"app\">\n{sidebar}{pane}</main>\n",
        me = escape(me),
        logout = logout_form(),
        sidebar = sidebar(contacts),
        pane = empty_thread_pane(),
    );
    document("posta", &body)
}

/// The sign-out button.
pub fn logout_form() -> String {
    "<form class=\"logout\" method=\"post\" action=\"/logout\">\
     <button type=\"submit\">Sign out</button></form>"
        .to_owned()
}

/// The contact list with unread badges.
pub fn sidebar(contacts: &[Contact<'_>]) -> String {
    let mut out = String::from("<nav id=\"sidebar\" class=\"sidebar\">\n<ul>\n");
    for c in contacts {
        out.push_str(&contact_item(c));
    }
    out.push_str("</ul>\n</nav>\n");
    out
}

/// One contact row; the badge is present even at zero so updates can swap it.
pub fn contact_item(c: &Contact<'_>) -> String {
    let peer = escape(c.peer);
    format!(
        "<li class=\"contact\" data-peer=\"{peer}\">\
         <a href=\"/fragments/thread/{peer}\">{peer}</a> \
         <span class=\"unread\" data-unread=\"{n}\">{n}</span></li>\n",
        n = c.unread
    )
}

/// The thread pane before a contact is chosen.
pub fn empty_thread_pane() -> String {
    "<section id=\"thread\" class=\"thread\"></section>\n".to_owned()
}

/// The messages between `me` and `peer`, oldest first.
pub fn thread(me: &str, peer: &str, messages: &[Message]) -> String {
    let mut out = format!(
        "<section id=\"thread\" class=\"thread\" data-peer=\"{}\">\n<ol class=\"messages\">\n",
        escape(peer)
    );
    for m in messages {
        out.push_str(&message_item(me, m));
    }
    out.push_str("</ol>\n</section>\n");
    out
}

/// One message; `data-row-id` lets clients and tests find and order it.
pub fn message_item(me: &str, m: &Message) -> String {
    let dir = if m.from == me { "out" } else { "in" };
    format!(
        "<li class=\"message {dir}\" data-row-id=\"{}\"><span class=\"from\">{}</span> \
         <span class=\"text\">{}</span></li>\n",
        m.row_id,
        escape(&m.from),
        escape(&m.text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_user_controlled() {
        let m = Message {
            row_id: 3,
            from: "bob".into(),
            text: "<script>\"x\"&'y'</script>".into(),
        };
        let html = thread("alice", "b<o>b", &[m]);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"));
        assert!(html.contains("data-peer=\"b&lt;o&gt;b\""));
        assert!(html.contains("data-row-id=\"3\""));
        assert!(html.contains("message in"));
    }

    #[test]
    fn sidebar_shows_counts() {
        let html = sidebar(&[
            Contact {
                peer: "bob",
                unread: 2,
            },
            Contact {
                peer: "carol",
                unread: 0,
            },
        ]);
        assert!(html.contains("data-peer=\"bob\""));
        assert!(html.contains("data-unread=\"2\">2<"));
        assert!(html.contains("data-unread=\"0\">0<"));
    }
}
