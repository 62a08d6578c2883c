//! What this process knows of the jobs it writes: each job's head and every ledger row as
//! its last append here left them (or as a claim read them), so the next append can be
//! planned without reading them again and written in one statement (`append`).
//!
//! Invariant kept here: knowledge is a hint, never trusted. An append planned against it
//! is written only if the job row still holds exactly the head it was planned against
//! (token, seq, chain head, time and status, checked by the write statement itself, under
//! the row lock its UPDATE takes); anything else (a refusal, a stale head) goes through
//! the locking transaction, which reads the rows again. The ledger rows are not re-checked:
//! they change only through appends, and every append moves `last_seq`, so an unchanged
//! `last_seq` means unchanged ledger rows. Whoever adds another writer of `ledger` (or of a
//! job's head columns) must bump `last_seq` with it or clear this knowledge.

use aetheris_runtime::{JobHead, JobId, LedgerRow, RecordedEvent};
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// Most jobs known at once; past it the knowledge is dropped (the next appends read the
/// rows again), so memory stays bounded whatever the number of jobs.
const KNOWN_MAX: usize = 65_536;

/// A job as this process last wrote or claimed it.
#[derive(Debug, Clone)]
pub(super) struct KnownJob {
    pub tenant: String,
    pub head: JobHead,
    /// Every ledger row of the job, by step (complete: a step absent here has none).
    pub ledger: HashMap<String, LedgerRow>,
}

impl KnownJob {
    /// A job whose whole log is its `job_submitted` event (a claim's preload), leased under
    /// `token`: queued, no ledger rows, its head that event.
    pub fn fresh(tenant: &str, token: u64, submitted: &RecordedEvent) -> Option<KnownJob> {
        (submitted.seq == 1).then(|| KnownJob {
            tenant: tenant.to_string(),
            head: JobHead {
                status: aetheris_runtime::JobStatus::Queued,
                last_seq: 1,
                last_hash: submitted.hash,
                token,
                updated_at_ms: submitted.recorded_at_ms,
            },
            ledger: HashMap::new(),
        })
    }
}

/// The known jobs of one store (shared by its clones and its batchers).
#[derive(Debug, Default)]
pub(super) struct KnownJobs {
    jobs: Mutex<HashMap<Uuid, KnownJob>>,
}

impl KnownJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, KnownJob>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes out what is known of every one of `ids`, or nothing if one is unknown (the
    /// batch then reads them all). Taken knowledge comes back only through `put` after a
    /// write, so a failed or abandoned write leaves the job unknown.
    pub fn take_all(&self, ids: &[Uuid]) -> Option<HashMap<Uuid, KnownJob>> {
        let mut jobs = self.lock();
        if !ids.iter().all(|id| jobs.contains_key(id)) {
            return None;
        }
        Some(
            ids.iter()
                .filter_map(|id| jobs.remove(id).map(|k| (*id, k)))
                .collect(),
        )
    }

    /// Remembers jobs as just written (or claimed).
    pub fn put(&self, known: impl IntoIterator<Item = (Uuid, KnownJob)>) {
        let mut jobs = self.lock();
        for (id, k) in known {
            if jobs.len() >= KNOWN_MAX && !jobs.contains_key(&id) {
                jobs.clear();
            }
            jobs.insert(id, k);
        }
    }

    /// Forgets jobs (released, failed to write, finished).
    pub fn forget(&self, ids: impl IntoIterator<Item = JobId>) {
        let mut jobs = self.lock();
        for id in ids {
            jobs.remove(&id.0);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::chain::GENESIS;
    use aetheris_runtime::{EventBody, JobStatus};

    fn known(seq: u64) -> KnownJob {
        KnownJob {
            tenant: "t".into(),
            head: JobHead {
                status: JobStatus::Running,
                last_seq: seq,
                last_hash: GENESIS,
                token: 1,
                updated_at_ms: 5,
            },
            ledger: HashMap::new(),
        }
    }

    #[test]
    fn take_all_is_all_or_nothing_and_takes_out() {
        let k = KnownJobs::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        k.put([(a, known(3))]);
        assert!(k.take_all(&[a, b]).is_none());
        assert_eq!(k.len(), 1, "a miss takes nothing out");
        let taken = k.take_all(&[a]).expect("known");
        assert_eq!(taken[&a].head.last_seq, 3);
        assert!(
            k.take_all(&[a]).is_none(),
            "taken knowledge is gone until put back"
        );
    }

    #[test]
    fn forget_and_the_bound() {
        let k = KnownJobs::default();
        k.put((0..KNOWN_MAX as u128).map(|i| (Uuid::from_u128(i), known(1))));
        assert_eq!(k.len(), KNOWN_MAX);
        k.put([(Uuid::from_u128(u128::MAX), known(1))]);
        assert_eq!(k.len(), 1, "past the bound everything is dropped");
        k.forget([JobId(Uuid::from_u128(u128::MAX))]);
        assert_eq!(k.len(), 0);
    }

    #[test]
    fn only_a_log_of_one_submitted_event_is_fresh() {
        let event = |seq| RecordedEvent {
            job_id: JobId(Uuid::from_u128(9)),
            seq,
            recorded_at_ms: 42,
            body: EventBody::JobParked { wake_at_ms: None },
            prev_hash: GENESIS,
            hash: [7; 32],
        };
        let fresh = KnownJob::fresh("t", 3, &event(1)).expect("fresh");
        assert_eq!(fresh.head.status, JobStatus::Queued);
        assert_eq!((fresh.head.token, fresh.head.updated_at_ms), (3, 42));
        assert_eq!(fresh.head.last_hash, [7; 32]);
        assert!(fresh.ledger.is_empty());
        assert!(KnownJob::fresh("t", 3, &event(2)).is_none());
    }
}
