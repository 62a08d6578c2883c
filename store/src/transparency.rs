//! The one rule for what a tenant's transparency log gains from an append, used by every
//! backend inside its append transaction: an append that takes a job from unfinished to
//! finished (its terminal event: `job_succeeded`, `job_failed`, `job_cancelled`) adds one
//! leaf, the RFC 9162 leaf hash of the job's id, last seq and chain head after the append
//! (`aetheris_proof::checkpoint::job_leaf_hash`), stamped with the terminal event's store
//! time. No other append touches the log, so the per-step path pays nothing for it.

use aetheris_runtime::{JobHead, JobId, PlannedAppend};

/// A leaf to append to the job's tenant's log, in the append's transaction; the backend
/// gives it the tenant's next index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewLeaf {
    pub job_id: JobId,
    pub leaf_hash: [u8; 32],
    pub appended_at_ms: i64,
}

/// The leaf `planned` adds, given the job's head `before` it (`None` unless the append
/// finishes the job).
pub fn leaf_of(job_id: JobId, before: &JobHead, planned: &PlannedAppend) -> Option<NewLeaf> {
    let after = &planned.head;
    (!before.status.is_terminal() && after.status.is_terminal()).then(|| NewLeaf {
        job_id,
        leaf_hash: aetheris_proof::checkpoint::job_leaf_hash(
            job_id,
            after.last_seq,
            &after.last_hash,
        ),
        appended_at_ms: after.updated_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::chain::GENESIS;
    use aetheris_runtime::{plan_append, Append, EventBody, JobStatus};
    use std::convert::Infallible;

    fn head(status: JobStatus) -> JobHead {
        JobHead {
            status,
            last_seq: 3,
            last_hash: GENESIS,
            token: 1,
            updated_at_ms: 1_000,
        }
    }

    fn plan(head: &JobHead, events: Vec<EventBody>) -> PlannedAppend {
        let append = Append {
            job_id: JobId::from_bytes([7; 16]),
            token: 1,
            expected_last_seq: 3,
            events,
        };
        plan_append(head, append, 2_000, |_| Ok::<_, Infallible>(None)).unwrap()
    }

    #[test]
    fn only_the_append_that_finishes_a_job_adds_a_leaf() {
        let id = JobId::from_bytes([7; 16]);
        let running = head(JobStatus::Running);
        let parked = plan(&running, vec![EventBody::JobParked { wake_at_ms: None }]);
        assert_eq!(leaf_of(id, &running, &parked), None);
        let done = plan(
            &running,
            vec![
                EventBody::JobParked { wake_at_ms: None },
                EventBody::JobFailed {
                    error: "x".into(),
                    step: None,
                },
            ],
        );
        let leaf = leaf_of(id, &running, &done).expect("a finishing append adds a leaf");
        assert_eq!(leaf.appended_at_ms, 2_000);
        assert_eq!(
            leaf.leaf_hash,
            aetheris_proof::checkpoint::job_leaf_hash(id, 5, &done.head.last_hash),
            "the leaf pins the last seq and chain head after the append"
        );
    }
}
