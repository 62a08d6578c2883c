//! The one error of evidence packages, keys and checkpoints: what failed, located by the
//! first failing file inside a package or the first failing event seq, so `aetheris evidence
//! verify` can print one line that says where to look. (The chain verifier's own
//! [`crate::ChainError`] predates it and is mapped into [`EvidenceError::Event`].)

use crate::ChainError;

/// Why a key, an export, a package or a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// A key file or key string could not be used.
    #[error("key: {0}")]
    Key(String),
    /// The store's data cannot be exported as it is (broken chain, ledger out of step with
    /// the events, wrong tenant): nothing was signed.
    #[error("cannot export: {0}")]
    Input(String),
    /// A redaction rule is malformed, or names something the job does not have.
    #[error("redaction {path:?}: {detail}")]
    Redaction { path: String, detail: String },
    /// The zip itself: not a zip, truncated, too large, unexpected or duplicate entries.
    #[error("archive: {0}")]
    Archive(String),
    /// A file inside the package is malformed or does not match what was signed.
    #[error("{file}: {detail}")]
    File { file: String, detail: String },
    /// An event line of `events.jsonl` breaks the chain or is malformed; `seq` is the
    /// position (line number) where it breaks.
    #[error("events.jsonl: seq {seq}: {detail}")]
    Event { seq: u64, detail: String },
    /// A signed checkpoint (or a consistency proof between two) does not hold.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A Merkle proof was asked for a leaf or size the tree does not have.
    #[error("merkle: {0}")]
    Merkle(String),
}

impl EvidenceError {
    pub(crate) fn file(file: &str, detail: impl Into<String>) -> Self {
        EvidenceError::File {
            file: file.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn event(seq: u64, detail: impl Into<String>) -> Self {
        EvidenceError::Event {
            seq,
            detail: detail.into(),
        }
    }

    /// The package file the failure is in, if it is in one.
    pub fn failing_file(&self) -> Option<&str> {
        match self {
            EvidenceError::File { file, .. } => Some(file),
            EvidenceError::Event { .. } => Some(crate::evidence::EVENTS),
            _ => None,
        }
    }

    /// The first failing event seq, if the failure is in the chain.
    pub fn failing_seq(&self) -> Option<u64> {
        match self {
            EvidenceError::Event { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

impl From<ChainError> for EvidenceError {
    fn from(e: ChainError) -> Self {
        EvidenceError::event(e.seq(), e.to_string())
    }
}
