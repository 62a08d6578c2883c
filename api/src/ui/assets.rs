//! The UI's static files, embedded in the binary (no build step, nothing read from disk)
//! and served under names that carry a digest of their content, so they can be cached
//! for a year (`immutable`) and a new binary's files are never mixed with old ones.
//!
//! Vendored, unmodified (0BSD licence, `assets/htmx-LICENSE.txt`), from the npm registry:
//! - htmx.org 2.0.11 `dist/htmx.min.js`,
//!   SHA-256 d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717
//! - htmx-ext-sse 2.2.4 `dist/sse.min.js`,
//!   SHA-256 98a46496de0c3605fbffdce9167ba427bdd9553184f83f149c261891a92c0136
//!
//! `ui.css` is ours, hand-written.

use actix_web::{web, HttpResponse};
use std::sync::OnceLock;

struct Asset {
    /// The name pages ask for through [`href`].
    logical: &'static str,
    bytes: &'static [u8],
    media: &'static str,
}

static ASSETS: [Asset; 3] = [
    Asset {
        logical: "htmx.js",
        bytes: include_bytes!("assets/htmx-2.0.11.min.js"),
        media: "text/javascript; charset=utf-8",
    },
    Asset {
        logical: "sse.js",
        bytes: include_bytes!("assets/htmx-ext-sse-2.2.4.min.js"),
        media: "text/javascript; charset=utf-8",
    },
    Asset {
        logical: "ui.css",
        bytes: include_bytes!("assets/ui.css"),
        media: "text/css; charset=utf-8",
    },
];

/// Each asset's served file name: `stem.<12 hex of SHA-256>.ext`.
fn served_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = ring::digest::digest(&ring::digest::SHA256, a.bytes);
                let hex = hex::encode(&digest.as_ref()[..6]);
                let (stem, ext) = a.logical.rsplit_once('.').unwrap_or((a.logical, ""));
                format!("{stem}.{hex}.{ext}")
            })
            .collect()
    })
}

/// The URL of an asset (`"htmx.js"`, `"sse.js"`, `"ui.css"`).
pub fn href(logical: &str) -> String {
    let i = ASSETS
        .iter()
        .position(|a| a.logical == logical)
        .unwrap_or(0);
    format!("/ui/assets/{}", served_names()[i])
}

/// `GET /ui/assets/{file}`.
pub async fn serve(file: web::Path<String>) -> HttpResponse {
    match served_names().iter().position(|n| *n == *file) {
        Some(i) => HttpResponse::Ok()
            .content_type(ASSETS[i].media)
            .insert_header(("Cache-Control", "public, max-age=31536000, immutable"))
            .body(ASSETS[i].bytes),
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such asset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_files_are_the_recorded_ones() {
        let sha = |b: &[u8]| hex::encode(ring::digest::digest(&ring::digest::SHA256, b));
        assert_eq!(
            sha(ASSETS[0].bytes),
            "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
        );
        assert_eq!(
            sha(ASSETS[1].bytes),
            "98a46496de0c3605fbffdce9167ba427bdd9553184f83f149c261891a92c0136"
        );
        assert!(href("ui.css").starts_with("/ui/assets/ui.") && href("ui.css").ends_with(".css"));
    }
}
