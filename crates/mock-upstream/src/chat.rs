//! Chat data: messages with global row ids, and per-(user, peer) read
//! watermarks.
//!
//! Owns the data rules (row ids only grow, watermarks never move back, unread
//! counting). It must never publish events, lock anything or do I/O; the
//! state owner wraps it in one lock and turns its answers into events.

use std::collections::HashMap;

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Global, strictly increasing id.
    pub row_id: u64,
    /// Sender.
    pub from: String,
    /// Body text, stored as sent.
    pub text: String,
}

/// All messages and watermarks.
#[derive(Default)]
pub struct Chat {
    last_row: u64,
    /// Keyed by the ordered pair `(min, max)` of the two parties so both
    /// directions share one ordered thread.
    threads: HashMap<String, HashMap<String, Vec<Message>>>,
    /// user → peer → highest row id read.
    watermarks: HashMap<String, HashMap<String, u64>>,
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Chat {
    /// Stores a message and returns its row id.
    pub fn send(&mut self, from: &str, to: &str, text: &str) -> u64 {
        self.last_row += 1;
        let (a, b) = ordered(from, to);
        self.threads
            .entry(a.to_owned())
            .or_default()
            .entry(b.to_owned())
            .or_default()
            .push(Message {
                row_id: self.last_row,
                from: from.to_owned(),
                text: text.to_owned(),
            });
        self.last_row
    }

    /// The messages between `a` and `b`, oldest first.
    pub fn thread(&self, a: &str, b: &str) -> &[Message] {
        let (a, b) = ordered(a, b);
        self.threads
            .get(a)
            .and_then(|m| m.get(b))
            .map_or(&[], Vec::as_slice)
    }

    /// `user`'s read watermark for `peer`; 0 if none.
    pub fn watermark(&self, user: &str, peer: &str) -> u64 {
        self.watermarks
            .get(user)
            .and_then(|m| m.get(peer))
            .copied()
            .unwrap_or(0)
    }

    /// Raises the watermark to `max(old, row_id)`. Returns the stored value
    /// and whether it changed.
    pub fn mark_read(&mut self, user: &str, peer: &str, row_id: u64) -> (u64, bool) {
        let old = self.watermark(user, peer);
        if row_id <= old {
            return (old, false);
        }
        self.watermarks
            .entry(user.to_owned())
            .or_default()
            .insert(peer.to_owned(), row_id);
        (row_id, true)
    }

    /// The newest message `from` sent to `to` with a row id in
    /// `(after, upto]`: what a watermark moving from `after` to `upto` newly
    /// marked read for its sender. `None` if it covered none of theirs.
    pub fn newest_from(&self, from: &str, to: &str, after: u64, upto: u64) -> Option<u64> {
        self.thread(from, to)
            .iter()
            .rev()
            .skip_while(|m| m.row_id > upto)
            .take_while(|m| m.row_id > after)
            .find(|m| m.from == from)
            .map(|m| m.row_id)
    }

    /// Messages from `peer` to `me` above `me`'s watermark for `peer`.
    pub fn unread(&self, me: &str, peer: &str) -> usize {
        let wm = self.watermark(me, peer);
        let thread = self.thread(me, peer);
        // Row ids grow along the thread, so the unread ones are a suffix.
        let start = thread.partition_point(|m| m.row_id <= wm);
        thread[start..].iter().filter(|m| m.from == peer).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_shared_and_ordered() {
        let mut c = Chat::default();
        assert_eq!(c.send("bob", "alice", "1"), 1);
        assert_eq!(c.send("alice", "carol", "2"), 2);
        assert_eq!(c.send("alice", "bob", "3"), 3);
        let t: Vec<u64> = c.thread("alice", "bob").iter().map(|m| m.row_id).collect();
        assert_eq!(t, [1, 3]);
        assert_eq!(c.thread("bob", "alice").len(), 2);
        assert!(c.thread("bob", "carol").is_empty());
    }

    #[test]
    fn watermark_never_moves_back() {
        let mut c = Chat::default();
        assert_eq!(c.mark_read("alice", "bob", 5), (5, true));
        assert_eq!(c.mark_read("alice", "bob", 3), (5, false));
        assert_eq!(c.mark_read("alice", "bob", 5), (5, false));
        assert_eq!(c.watermark("alice", "bob"), 5);
        assert_eq!(c.watermark("bob", "alice"), 0);
    }

    #[test]
    fn unread_counts_only_peer_messages_above_watermark() {
        let mut c = Chat::default();
        let r1 = c.send("bob", "alice", "a");
        c.send("alice", "bob", "b");
        c.send("bob", "alice", "c");
        assert_eq!(c.unread("alice", "bob"), 2);
        assert_eq!(c.unread("bob", "alice"), 1);
        c.mark_read("alice", "bob", r1);
        assert_eq!(c.unread("alice", "bob"), 1);
    }

    #[test]
    fn newest_from_finds_what_a_watermark_move_covered() {
        let mut c = Chat::default();
        let b1 = c.send("bob", "alice", "a");
        let a2 = c.send("alice", "bob", "b");
        let b3 = c.send("bob", "alice", "c");
        c.send("carol", "alice", "d");
        assert_eq!(c.newest_from("bob", "alice", 0, b3), Some(b3));
        assert_eq!(c.newest_from("bob", "alice", 0, a2), Some(b1));
        // Only alice's own message in the range: nothing of bob's was read.
        assert_eq!(c.newest_from("bob", "alice", b1, a2), None);
        assert_eq!(c.newest_from("bob", "alice", b3, 99), None);
        assert_eq!(c.newest_from("alice", "bob", 0, 99), Some(a2));
    }
}
