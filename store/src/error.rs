//! The one error enum of the store crate, `StoreError`, shared by every backend: what a
//! caller can act on is a variant of its own — a stale fencing token (`Fenced`), a stale
//! view of the log (`SeqConflict`), something that does not exist (`NotFound`, naming the
//! entity), a request the store refuses (`Rejected`, `Conflict`), a store that cannot be
//! reached right now (`Unavailable`: the only transient case, the one worth retrying), a
//! failing backend (`Backend`) and stored data that cannot be read (`Corrupt`). Every
//! `Unavailable` is made by one constructor, which counts it (`unavailable_errors`: the
//! process's `aetheris_store_unavailable_total`).

use aetheris_runtime::JobId;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The caller's fencing token is not the job's current one: another worker owns it.
    #[error("fenced: job {job} is held under token {current}, not {presented}")]
    Fenced {
        job: JobId,
        presented: u64,
        current: u64,
    },
    /// The caller's view of the log is stale (expected_last_seq did not match).
    #[error("conflict: job {job} is at seq {actual}, not {expected}")]
    SeqConflict {
        job: JobId,
        expected: u64,
        actual: u64,
    },
    /// The entity does not exist (or, for a scoped read, not in the caller's tenant).
    #[error("{0} not found")]
    NotFound(Entity),
    /// The store refuses the request as given: the events would break the ledger state
    /// machine or the fold, or a value cannot be encoded for storage. Nothing was written.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The request conflicts with stored state (e.g. a command for a finished job, a tenant
    /// id that is taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store could not be reached or could not answer right now (connection lost, pool
    /// timeout, server restarting, I/O error). Transient: the same request may succeed
    /// later. A write that failed this way may or may not have happened.
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The backend failed in a way a retry will not fix (a statement the server refuses,
    /// a writer that is gone).
    #[error("storage backend: {0}")]
    Backend(String),
    /// Stored data cannot be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What was not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    Job(JobId),
    Tenant(String),
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Job(id) => write!(f, "job {id}"),
            Entity::Tenant(id) => write!(f, "tenant {id:?}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// `Unavailable` errors made in this process (every one is made by
/// [`StoreError::unavailable`]), for the process's metrics.
static UNAVAILABLE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many store calls of this process have failed because the store could not be
/// reached (`StoreError::Unavailable`) since it started.
pub fn unavailable_errors() -> u64 {
    UNAVAILABLE_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

impl StoreError {
    /// `NotFound` for a job.
    pub fn job_not_found(id: JobId) -> StoreError {
        StoreError::NotFound(Entity::Job(id))
    }

    /// `NotFound` for a tenant.
    pub fn tenant_not_found(id: &str) -> StoreError {
        StoreError::NotFound(Entity::Tenant(id.to_string()))
    }

    /// `Unavailable`, described by `message` (which names the cause too, for logs and
    /// problem details) and carrying `source`.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        UNAVAILABLE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StoreError::Unavailable {
            message: message.into(),
            source: Arc::new(source),
        }
    }

    /// A value the caller gave that cannot be encoded for storage (not corruption: nothing
    /// stored is wrong).
    pub(crate) fn unencodable(what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Rejected(format!("{what} cannot be encoded: {e}"))
    }

    /// Whether the store itself failed (as opposed to answering the request): such an
    /// error inside a shared transaction may have left partial writes in it.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Backend(_) | StoreError::Unavailable { .. }
        )
    }

    /// Whether the same request may succeed if sent again (`Unavailable`).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

impl From<std::convert::Infallible> for StoreError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// The store error for an append the planner (`aetheris_runtime::plan_append`) refused,
/// as every backend reports it.
pub(crate) fn append_refused<E: Into<StoreError>>(
    job: JobId,
    e: aetheris_runtime::AppendError<E>,
) -> StoreError {
    use aetheris_runtime::AppendError as Refused;
    match e {
        Refused::Fenced { presented, current } => StoreError::Fenced {
            job,
            presented,
            current,
        },
        Refused::SeqConflict { expected, actual } => StoreError::SeqConflict {
            job,
            expected,
            actual,
        },
        Refused::Finished => StoreError::Rejected(format!("job {job} already finished")),
        Refused::SubmittedAgain => StoreError::Rejected("job_submitted cannot be appended".into()),
        Refused::IllegalLedgerMove { step, detail } => {
            StoreError::Rejected(format!("step {step:?}: illegal ledger transition {detail}"))
        }
        Refused::Unencodable { kind } => {
            StoreError::Rejected(format!("{kind} event cannot be serialized"))
        }
        Refused::Lookup(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_entity_and_only_unavailable_is_transient() {
        let id = JobId::from_bytes([1; 16]);
        assert_eq!(
            StoreError::job_not_found(id).to_string(),
            format!("job {id} not found")
        );
        assert_eq!(
            StoreError::tenant_not_found("acme").to_string(),
            "tenant \"acme\" not found"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let down = StoreError::unavailable("PostgreSQL: connection reset", io);
        assert!(down.is_transient() && down.is_store_failure());
        assert!(
            std::error::Error::source(&down).is_some(),
            "the cause is kept"
        );
        assert!(!StoreError::Backend("x".into()).is_transient());
        assert!(!StoreError::Rejected("x".into()).is_store_failure());
    }
}
