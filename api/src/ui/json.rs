//! JSON as the UI shows it: pretty-printed, cut at [`MAX_SHOWN_BYTES`] with a note, and
//! collapsed (`<details>` closed) past [`COLLAPSE_BYTES`], so a step with a megabyte of
//! output cannot make a page heavy. The text goes through maud, so it is escaped.

use maud::{html, Markup};
use serde_json::Value;

/// Payloads longer than this (pretty-printed) start collapsed.
pub const COLLAPSE_BYTES: usize = 2 * 1024;
/// At most this much of one payload is put into a page.
pub const MAX_SHOWN_BYTES: usize = 64 * 1024;

/// Pretty JSON, cut at `MAX_SHOWN_BYTES` on a character boundary; the flag says it was cut.
pub fn pretty(v: &Value) -> (String, bool) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    cut(text, MAX_SHOWN_BYTES)
}

pub fn cut(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

/// A labelled JSON block: open when short, collapsed when long, with the size shown.
pub fn block(label: &str, v: &Value) -> Markup {
    block_opened(label, v, true)
}

/// [`block`], kept collapsed unless `may_open` (pages with many blocks open none, so the
/// browser lays out only what is looked at).
pub fn block_opened(label: &str, v: &Value, may_open: bool) -> Markup {
    let full = v.to_string().len();
    let (text, was_cut) = pretty(v);
    html! {
        details.json open[may_open && text.len() <= COLLAPSE_BYTES] {
            summary { (label) " " span.muted { "(" (size(full)) ")" } }
            pre { code { (text) } }
            @if was_cut {
                p.muted { "Cut at " (size(MAX_SHOWN_BYTES)) " of " (size(full)) "; the API has the whole value." }
            }
        }
    }
}

/// A byte count as a person reads it.
pub fn size(n: usize) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// One line of JSON for a table cell, cut to `max` characters.
pub fn one_line(v: &Value, max: usize) -> String {
    crate::problem::clip(&v.to_string(), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_payloads_are_cut_and_collapsed_and_escaped() {
        let big = json!({"s": "é".repeat(40_000)});
        let (text, was_cut) = pretty(&big);
        assert!(was_cut && text.len() <= MAX_SHOWN_BYTES);
        let m = block("output", &big).into_string();
        assert!(!m.contains("open"), "collapsed: {}", &m[..80]);
        let m = block("output", &json!({"x": "<script>alert(1)</script>"})).into_string();
        assert!(
            m.contains("&lt;script&gt;") && !m.contains("<script>"),
            "{m}"
        );
        assert!(m.contains("open"), "short payloads start open");
    }
}
