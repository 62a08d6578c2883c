//! Redaction rules: which event payloads an export replaces by their digest.
//!
//! A rule names a path: `input` (the `job_submitted` payload), `output` (`job_succeeded`),
//! `steps.<id>.output` (every `step_succeeded`, output-carrying `step_confirmed` and
//! `wait_completed` of that step, and for a wait step the `signal_received` it consumed) or `signals.<name>.payload` (every `signal_received` of
//! that signal and the `wait_completed` that consumed it); `*` stands for any id or name.
//! The whole payload of a matched event is redacted, because the chain hashes each payload
//! as one digest (G7): that is what keeps a redacted package verifiable. Invariant: a rule
//! given explicitly (not by policy) that matches nothing is an error, never a silent no-op.

use crate::error::EvidenceError;
use aetheris_runtime::{EventBody, RecordedEvent};
use std::fmt;

/// Which ids or names a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Any,
    Named(String),
}

impl Selector {
    fn matches(&self, name: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Named(n) => n == name,
        }
    }
    fn parse(s: &str) -> Option<Selector> {
        match s {
            "" => None,
            "*" => Some(Selector::Any),
            n => Some(Selector::Named(n.to_string())),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Named(n) => f.write_str(n),
        }
    }
}

/// What a rule redacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedactPath {
    Input,
    Output,
    StepOutput(Selector),
    SignalPayload(Selector),
}

impl fmt::Display for RedactPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedactPath::Input => f.write_str("input"),
            RedactPath::Output => f.write_str("output"),
            RedactPath::StepOutput(s) => write!(f, "steps.{s}.output"),
            RedactPath::SignalPayload(s) => write!(f, "signals.{s}.payload"),
        }
    }
}

impl RedactPath {
    pub fn parse(path: &str) -> Result<RedactPath, EvidenceError> {
        let parsed = match path {
            "input" => Some(RedactPath::Input),
            "output" => Some(RedactPath::Output),
            p => {
                if let Some(step) = p
                    .strip_prefix("steps.")
                    .and_then(|r| r.strip_suffix(".output"))
                {
                    Selector::parse(step).map(RedactPath::StepOutput)
                } else if let Some(sig) = p
                    .strip_prefix("signals.")
                    .and_then(|r| r.strip_suffix(".payload"))
                {
                    Selector::parse(sig).map(RedactPath::SignalPayload)
                } else {
                    None
                }
            }
        };
        parsed.ok_or_else(|| EvidenceError::Redaction {
            path: path.to_string(),
            detail: "expected input, output, steps.<id>.output or signals.<name>.payload \
                     (`*` for any id or name)"
                .into(),
        })
    }
}

/// A rule and why it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionRule {
    pub path: RedactPath,
    /// Listed in the manifest with each redaction (e.g. `requested by alice at export`,
    /// `tenant policy`).
    pub reason: String,
    /// An explicit request: matching nothing is an error (a typo must not leak data).
    pub must_match: bool,
}

impl RedactionRule {
    /// A rule asked for at export (`--redact PATH`): it must match something.
    pub fn requested(path: &str, reason: &str) -> Result<Self, EvidenceError> {
        Ok(RedactionRule {
            path: RedactPath::parse(path)?,
            reason: reason.to_string(),
            must_match: true,
        })
    }

    /// A rule from a tenant policy: applies to the jobs that have what it names.
    pub fn policy(path: &str, reason: &str) -> Result<Self, EvidenceError> {
        Ok(RedactionRule {
            path: RedactPath::parse(path)?,
            reason: reason.to_string(),
            must_match: false,
        })
    }
}

/// What one event's redaction is: the concrete path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redacted {
    pub path: String,
    pub reason: String,
}

/// The redaction of every event (`None`: kept), by the first rule that matches it.
pub(crate) fn plan(
    events: &[RecordedEvent],
    rules: &[RedactionRule],
) -> Result<Vec<Option<Redacted>>, EvidenceError> {
    let mut used = vec![false; rules.len()];
    // (signal_id, path) of every redacted signal, for the wait that consumes it.
    let mut redacted_signals: Vec<(String, String)> = Vec::new();
    // (signal_id, step) of every wait that consumed a signal: a wait step's output is the
    // signal's payload, so redacting the one redacts the other.
    let waits: Vec<(&str, &str)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::WaitCompleted {
                step, signal_id, ..
            } => Some((signal_id.as_str(), step.as_str())),
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let hit = rules.iter().enumerate().find_map(|(i, r)| {
            path_if_matches(&r.path, &e.body, &redacted_signals, &waits).map(|p| (i, p))
        });
        if let (Some((_, path)), EventBody::SignalReceived { signal_id, .. }) = (&hit, &e.body) {
            redacted_signals.push((signal_id.clone(), path.clone()));
        }
        out.push(hit.map(|(i, path)| {
            used[i] = true;
            Redacted {
                path,
                reason: rules[i].reason.clone(),
            }
        }));
    }
    for (rule, used) in rules.iter().zip(used) {
        if rule.must_match && !used {
            return Err(EvidenceError::Redaction {
                path: rule.path.to_string(),
                detail: "matches nothing in this job".into(),
            });
        }
    }
    Ok(out)
}

/// The concrete path `rule` redacts in `body`, if it applies to it.
fn path_if_matches(
    rule: &RedactPath,
    body: &EventBody,
    redacted_signals: &[(String, String)],
    waits: &[(&str, &str)],
) -> Option<String> {
    match (rule, body) {
        (RedactPath::StepOutput(sel), EventBody::SignalReceived { signal_id, .. }) => waits
            .iter()
            .find(|(id, step)| id == signal_id && sel.matches(step))
            .map(|(_, step)| format!("steps.{step}.output")),
        (RedactPath::Input, EventBody::JobSubmitted { .. }) => Some("input".into()),
        (RedactPath::Output, EventBody::JobSucceeded { .. }) => Some("output".into()),
        (RedactPath::StepOutput(sel), EventBody::StepSucceeded { step, .. })
        | (RedactPath::StepOutput(sel), EventBody::WaitCompleted { step, .. })
        | (
            RedactPath::StepOutput(sel),
            EventBody::StepConfirmed {
                step,
                output: Some(_),
                ..
            },
        ) if sel.matches(step) => Some(format!("steps.{step}.output")),
        (RedactPath::SignalPayload(sel), EventBody::SignalReceived { signal, .. })
            if sel.matches(signal) =>
        {
            Some(format!("signals.{signal}.payload"))
        }
        (RedactPath::SignalPayload(sel), EventBody::WaitCompleted { signal_id, .. }) => {
            redacted_signals
                .iter()
                .find(|(id, path)| id == signal_id && sel_matches_path(sel, path))
                .map(|(_, path)| path.clone())
        }
        _ => None,
    }
}

fn sel_matches_path(sel: &Selector, path: &str) -> bool {
    path.strip_prefix("signals.")
        .and_then(|r| r.strip_suffix(".payload"))
        .is_some_and(|name| sel.matches(name))
}

/// The step a concrete `steps.<id>.output` path names.
pub(crate) fn step_of_path(path: &str) -> Option<&str> {
    path.strip_prefix("steps.")
        .and_then(|r| r.strip_suffix(".output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print_back() {
        for p in [
            "input",
            "output",
            "steps.fetch.output",
            "steps.*.output",
            "signals.approval.payload",
            "signals.*.payload",
            "steps.a.b.output",
        ] {
            assert_eq!(RedactPath::parse(p).unwrap().to_string(), p);
        }
        for bad in [
            "",
            "inputs",
            "steps..output",
            "steps.x",
            "signals.x.output",
            "x.y.z",
        ] {
            assert!(RedactPath::parse(bad).is_err(), "{bad}");
        }
    }
}
