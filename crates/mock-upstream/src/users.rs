//! Who exists: the fixed demo users and the numbered load-test users.
//!
//! Owns the user-name rules only. It must never hold state or know about
//! sessions; callers decide what an unknown name means for their route.

/// The demo users, in the order the sidebar lists them.
pub const DEMO_USERS: [&str; 3] = ["alice", "bob", "carol"];

/// Load-test names are `user<digits>`; the cap keeps a hostile request from
/// minting arbitrarily long keys in every per-user map.
const MAX_USER_DIGITS: usize = 20;

/// Whether `name` is a user this backend knows: a demo user or `user<N>`.
pub fn is_valid_user(name: &str) -> bool {
    if DEMO_USERS.contains(&name) {
        return true;
    }
    match name.strip_prefix("user") {
        Some(digits) => {
            !digits.is_empty()
                && digits.len() <= MAX_USER_DIGITS
                && digits.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// The contacts shown to `me`: every demo user except `me`.
pub fn contacts_of(me: &str) -> impl Iterator<Item = &'static str> + '_ {
    DEMO_USERS.into_iter().filter(move |u| *u != me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_demo_and_numbered_users() {
        assert!(is_valid_user("alice"));
        assert!(is_valid_user("carol"));
        assert!(is_valid_user("user0"));
        assert!(is_valid_user("user123456"));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "", "user", "userx", "user1a", "Alice", "dave", "user-1", " alice",
        ] {
            assert!(!is_valid_user(bad), "{bad:?}");
        }
        assert!(!is_valid_user(&format!("user{}", "1".repeat(21))));
    }

    #[test]
    fn contacts_exclude_self() {
        assert_eq!(contacts_of("bob").collect::<Vec<_>>(), ["alice", "carol"]);
        assert_eq!(contacts_of("user7").count(), 3);
    }
}
