//! A stored job folded into its state (G5): the newest readable snapshot, then the events
//! after it, then the commands not yet applied — what a job actor starts from and what the
//! gateway renders.
//!
//! Invariants kept here: the first page of events comes with the snapshot and the commands
//! in one `JobLog::load_job` (one round trip on PostgreSQL), and the store is read again
//! only past a full page of events or an unreadable snapshot; an unreadable snapshot is not
//! fatal (the log is the source of truth: the log is then folded from seq 1); a log that
//! does not fold is `StoreError::Corrupt`, naming the job.

use crate::{DynStore, JobLoad, Result, Scope, StoreError, StoredCommand};
use aetheris_runtime::codec::{decode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{FoldError, JobId, JobState, RecordedEvent};

/// Events read per round trip while replaying.
pub const REPLAY_PAGE: usize = 10_000;

/// A job as loaded from its store.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedJob {
    /// The state: the snapshot with every later event applied.
    pub state: JobState,
    /// The seq of the snapshot the fold started from (0: it started from the first event).
    pub snapshot_seq: u64,
    /// Events folded on top of the snapshot.
    pub events_replayed: usize,
    /// The job's commands not yet applied, oldest first.
    pub pending_commands: Vec<StoredCommand>,
}

/// Loads a job (`None`: it has no events). `NotFound` for an unknown job.
pub async fn load_job_state(store: &DynStore, job: JobId) -> Result<Option<LoadedJob>> {
    let load = store.load_job(job, REPLAY_PAGE).await?;
    state_from_load(store, job, load).await
}

/// [`load_job_state`] from a `JobLoad` already read (by `load_job`, or by the claim).
pub async fn state_from_load(
    store: &DynStore,
    job: JobId,
    load: JobLoad,
) -> Result<Option<LoadedJob>> {
    let snapshot = match &load.snapshot {
        Some((seq, blob)) => match decode_versioned::<JobState>(SNAPSHOT_FORMAT, blob) {
            Ok(s) if s.last_seq == *seq => Some((s, *seq)),
            // An unreadable snapshot is not fatal: the log is the source of truth.
            _ => None,
        },
        None => None,
    };
    // A short page is the end of the log: no extra round trip to read nothing.
    let full = |page: &Vec<RecordedEvent>| page.len() >= REPLAY_PAGE;
    let (mut state, snapshot_seq, first_page, mut more) = match snapshot {
        Some((s, seq)) => {
            let more = full(&load.events);
            (Some(s), seq, load.events, more)
        }
        // Without a snapshot the events read are the log from seq 1.
        None if load.snapshot.is_none() => {
            let more = full(&load.events);
            (None, 0, load.events, more)
        }
        // With an unreadable one they continue it: the log is read again from the start.
        None => (None, 0, Vec::new(), true),
    };
    let mut replayed = first_page.len();
    let mut after = first_page
        .last()
        .map(|e| e.seq)
        .or(state.as_ref().map(|s| s.last_seq))
        .unwrap_or(0);
    state = JobState::replay(state, &first_page).map_err(|e| unfoldable(job, e))?;
    while more {
        let batch = store
            .read_events(Scope::System, job, after, REPLAY_PAGE)
            .await?;
        more = full(&batch);
        replayed += batch.len();
        after = batch.last().map(|e| e.seq).unwrap_or(after);
        state = JobState::replay(state, &batch).map_err(|e| unfoldable(job, e))?;
    }
    Ok(state.map(|state| LoadedJob {
        state,
        snapshot_seq,
        events_replayed: replayed,
        pending_commands: load.commands,
    }))
}

fn unfoldable(job: JobId, e: FoldError) -> StoreError {
    StoreError::Corrupt(format!("job {job}: stored log does not fold: {e}"))
}
