//! Errors of the pure core: one enum for the crate, with the plan-validation and fold
//! errors it wraps. Plan errors always name the JSON path that is wrong (G8). A message
//! never embeds more than [`MAX_SHOWN_CHARS`] characters of any one user string (see
//! [`shorten`]), so the size of an error report is bounded by the plan caps, not by what
//! a client sent.

use serde::Serialize;
use std::borrow::Cow;

/// The most characters of one user-supplied string (a tool name, an id, a reference, a
/// duration) that a message quotes; longer strings are cut and end in `…`.
pub const MAX_SHOWN_CHARS: usize = 64;

/// `s`, cut to [`MAX_SHOWN_CHARS`] characters with a trailing `…` when longer.
pub fn shorten(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(MAX_SHOWN_CHARS) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => Cow::Owned(format!("{}…", &s[..cut])),
    }
}

/// `s` shortened and quoted as a Rust/JSON-like string literal, for messages.
pub fn quoted(s: &str) -> String {
    format!("{:?}", shorten(s).as_ref())
}

/// One problem found in a submitted plan, located by a JSON path such as
/// `plan.steps[2].needs[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a sequence of events cannot be folded into a job state. Any of these means the
/// stored log is corrupt or was written by a buggy writer; the fold never guesses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("event seq {got} does not follow {expected_after}")]
    SeqGap { expected_after: u64, got: u64 },
    #[error("the first event of a job must be job_submitted (seq {seq})")]
    NotSubmittedFirst { seq: u64 },
    #[error("job_submitted repeated at seq {seq}")]
    SubmittedTwice { seq: u64 },
    #[error("event at seq {seq} names unknown step {step:?}")]
    UnknownStep { seq: u64, step: String },
    #[error("event at seq {seq}: illegal ledger transition for step {step:?}: {detail}")]
    IllegalTransition {
        seq: u64,
        step: String,
        detail: String,
    },
    #[error("event at seq {seq} arrives after the job finished")]
    AfterTerminal { seq: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid plan: {0}")]
    Plan(PlanError),
    #[error(transparent)]
    Fold(#[from] FoldError),
    #[error("codec: {0}")]
    Codec(String),
    /// Not a number with a unit. Holds the text already [`shorten`]ed.
    #[error("invalid duration {0:?}: use a number with a unit, e.g. 200ms, 30s, 5m, 24h")]
    Duration(String),
    /// Longer than any duration a plan may hold. Holds the text already [`shorten`]ed.
    #[error("invalid duration {0:?}: longer than {max}", max = crate::duration::MAX_DURATION_TEXT)]
    DurationTooLong(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_user_strings_are_cut_on_a_char_boundary() {
        assert_eq!(shorten("short"), "short");
        let exact = "x".repeat(MAX_SHOWN_CHARS);
        assert_eq!(shorten(&exact), exact.as_str());
        let long = "é".repeat(MAX_SHOWN_CHARS + 1);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(cut.ends_with("é…"), "{cut}");
        assert_eq!(
            quoted(&"a".repeat(1_000)).len(),
            2 + MAX_SHOWN_CHARS + '…'.len_utf8()
        );
    }
}
