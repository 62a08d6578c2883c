//! Decoding rows of this backend's tables into the store's values. A column that cannot be
//! read as what it must hold is `Corrupt`, never a panic or a guess.

use crate::{JobSummary, Lease, Result, Scope, StoreError};
use aetheris_runtime::{EffectClass, EventBody, JobId, JobStatus, LedgerStatus, RecordedEvent};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

/// An event from `row`, whose columns from `first` on are those of `READ_EVENTS_SQL`
/// (seq already read), checking that the kind column agrees with the payload.
pub(super) fn event_row(id: JobId, r: &Row, first: usize, seq: i64) -> Result<RecordedEvent> {
    let seq = to_u64(seq, "seq")?;
    let kind: &str = col(r, first + 2)?;
    let payload: &str = col(r, first + 3)?;
    let body: EventBody = serde_json::from_str(payload)
        .map_err(|e| StoreError::Corrupt(format!("event {id}/{seq}: {e}")))?;
    if body.kind() != kind {
        return Err(StoreError::Corrupt(format!(
            "event {id}/{seq}: kind column {kind:?} disagrees with payload {:?}",
            body.kind()
        )));
    }
    Ok(RecordedEvent {
        job_id: id,
        seq,
        recorded_at_ms: col(r, first + 1)?,
        body,
        prev_hash: hash32(col(r, first + 4)?, "prev_hash")?,
        hash: hash32(col(r, first + 5)?, "hash")?,
    })
}

pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

pub(super) fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// u64 → bigint; values beyond i64::MAX cannot be stored, so they can match nothing.
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn hash32(b: &[u8], what: &str) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is {} bytes, not 32", b.len())))
}

pub(super) fn parse_status(s: &str) -> Result<JobStatus> {
    JobStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown job status {s:?}")))
}

pub(super) fn parse_ledger_status(s: &str) -> Result<LedgerStatus> {
    use LedgerStatus::*;
    [Started, Succeeded, Failed, OutcomeUnknown, Confirmed]
        .into_iter()
        .find(|x| x.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown ledger status {s:?}")))
}

pub(super) fn parse_effect(s: &str) -> Result<EffectClass> {
    use EffectClass::*;
    [Pure, Idempotent, SideEffect]
        .into_iter()
        .find(|x| x.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown effect class {s:?}")))
}

/// A `JobSummary` from the seven `job_cols!` columns starting at `at`.
pub(super) fn summary_at(row: &Row, at: usize) -> Result<JobSummary> {
    Ok(JobSummary {
        job_id: JobId(col(row, at)?),
        tenant: col(row, at + 1)?,
        status: parse_status(col(row, at + 2)?)?,
        idempotency_key: col(row, at + 3)?,
        last_seq: to_u64(col(row, at + 4)?, "last_seq")?,
        created_at_ms: col(row, at + 5)?,
        updated_at_ms: col(row, at + 6)?,
    })
}

pub(super) fn lease_row(row: &Row) -> Result<Lease> {
    Ok(Lease {
        job_id: JobId(col(row, 0)?),
        tenant: col(row, 1)?,
        token: to_u64(col(row, 2)?, "token")?,
        expires_at_ms: col(row, 3)?,
    })
}

pub(super) fn scope_tenant<'a>(scope: Scope<'a>) -> Option<&'a str> {
    match scope {
        Scope::Tenant(t) => Some(t),
        Scope::System => None,
    }
}
