//! Static browser assets of the chat UI (`GET /static/<name>`): the page's
//! own script and style sheet, and htmx plus its SSE extensions as installed
//! by npm into `web/node_modules`.
//!
//! Owns the fixed table from public names to files and where the web
//! directory is. Files are read at request time, so building the crate never
//! needs npm to have run. It must never serve a path that is not in the
//! table (no traversal, no directory listing) and never panic on a missing
//! or unreadable file: that is a plain-text 404/500 naming the fix.

use std::path::PathBuf;

/// Environment variable that points at the web directory (the one holding
/// `app.js` and `node_modules/`) when the binary runs away from its source
/// tree.
pub const WEB_DIR_ENV: &str = "SSEMUX_MOCK_WEB_DIR";

/// Public name → (path under the web directory, content type).
const TABLE: &[(&str, &str, &str)] = &[
    ("app.js", "app.js", JS),
    ("app.css", "app.css", CSS),
    ("htmx2.js", "node_modules/htmx2/dist/htmx.min.js", JS),
    (
        "htmx-ext-sse.js",
        "node_modules/htmx-ext-sse/dist/sse.min.js",
        JS,
    ),
    ("htmx4.js", "node_modules/htmx4/dist/htmx.min.js", JS),
    ("hx-sse.js", "node_modules/htmx4/dist/ext/hx-sse.min.js", JS),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// What a static request resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Asset {
    /// The file's bytes and content type.
    Found(Vec<u8>, &'static str),
    /// Not a name in the table.
    Unknown,
    /// In the table but not on disk (npm has not run, or the web directory
    /// is elsewhere); the text says which file and how to fix it.
    Missing(String),
    /// On disk but unreadable.
    Unreadable(String),
}

/// The web directory: `$SSEMUX_MOCK_WEB_DIR`, else `web/` next to this
/// crate's manifest (right for `cargo run`, tests and `make run`).
pub fn web_dir() -> PathBuf {
    match std::env::var_os(WEB_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web")),
    }
}

/// Looks `name` up and reads its file from [`web_dir`]. Blocking file I/O:
/// call it off the async threads.
pub fn load(name: &str) -> Asset {
    load_from(&web_dir(), name)
}

fn load_from(dir: &std::path::Path, name: &str) -> Asset {
    let Some(&(_, rel, ctype)) = TABLE.iter().find(|(n, _, _)| *n == name) else {
        return Asset::Unknown;
    };
    let path = dir.join(rel);
    match std::fs::read(&path) {
        Ok(bytes) => Asset::Found(bytes, ctype),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Asset::Missing(format!(
            "asset {name} is missing: {} does not exist; run `make web` \
             (npm ci in crates/mock-upstream/web) or set {WEB_DIR_ENV}\n",
            path.display()
        )),
        Err(e) => Asset::Unreadable(format!(
            "asset {name} could not be read from {}: {e}\n",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_table_names_resolve() {
        for bad in [
            "",
            "../Cargo.toml",
            "node_modules/htmx2/package.json",
            "app.js/",
        ] {
            assert_eq!(load(bad), Asset::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn a_missing_install_says_how_to_fix_it() {
        let dir = std::env::temp_dir().join("ssemux-no-such-web-dir");
        match load_from(&dir, "htmx4.js") {
            Asset::Missing(why) => {
                assert!(why.contains("make web"), "{why}");
                assert!(why.contains("htmx.min.js"), "{why}");
            }
            other => panic!("expected Missing, got {other:?}"),
        }
    }

    #[test]
    fn own_files_are_served() {
        match load("app.js") {
            Asset::Found(bytes, ctype) => {
                assert!(!bytes.is_empty());
                assert!(ctype.starts_with("text/javascript"));
            }
            other => panic!("app.js: {other:?}"),
        }
    }
}
