//! Failpoints for crash tests: `AETHERIS_FAILPOINT=NAME@N` makes the process stop dead the
//! N-th time it reaches point NAME (its thread blocks for good, after creating the file
//! `AETHERIS_FAILPOINT_FILE` if set), so a test can SIGKILL it at exactly that boundary,
//! e.g. after a model's answer is durable and before its tool calls run. Unset (always,
//! outside tests), a point costs one atomic load.
//!
//! Points: `agent.model.before_start` (an agent's model call is decided, its start not yet
//! appended), `agent.model.in_flight` (the model answered, the answer not yet recorded),
//! `agent.model.answered` (the answer is durable, its tool calls not yet called),
//! `agent.tool.in_flight` (a tool answered, the result not yet recorded),
//! `agent.tool.recorded` (a tool's result is durable).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

struct Armed {
    name: String,
    nth: u32,
    file: Option<String>,
    hits: AtomicU32,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("AETHERIS_FAILPOINT").ok()?;
            let (name, nth) = spec.split_once('@').unwrap_or((spec.as_str(), "1"));
            Some(Armed {
                name: name.to_string(),
                nth: nth.parse().ok()?,
                file: std::env::var("AETHERIS_FAILPOINT_FILE").ok(),
                hits: AtomicU32::new(0),
            })
        })
        .as_ref()
}

/// Point `name` is reached: stops the process's thread for good if it is the armed one.
pub fn hit(name: &str) {
    let Some(a) = armed() else {
        return;
    };
    if a.name != name || a.hits.fetch_add(1, Ordering::SeqCst) + 1 != a.nth {
        return;
    }
    eprintln!("failpoint {name}@{} reached: stopping", a.nth);
    if let Some(f) = &a.file {
        let _ = std::fs::write(f, name);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
