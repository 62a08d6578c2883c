//! A batch of appends planned in memory, before anything is written, and turned into the
//! columns of the one write statement (`append_write`), then — once the statement says at
//! which time each job was written — into the recorded events.
//!
//! Invariants kept here (G3, G7):
//! - Every append is planned by `aetheris_runtime::plan_append` against the job's head and
//!   complete ledger as the batch sees them (earlier appends of the batch included); a
//!   refused append changes nothing, and the job's head the batch started from is the
//!   fence the write statement checks.
//! - The store time is not known while planning (the statement reads the database clock),
//!   so plans use a placeholder time, and only what does not depend on it is sent: the
//!   canonical bytes of each event around its time (`tail`), the chain head before the
//!   batch, and the job's last time. `restamp` then recomputes each event's time and hash
//!   from the time the statement used (`aetheris_runtime::chain::event_hash`, the one
//!   definition) and checks the result against the chain head the database stored.

use super::known::KnownJob;
use super::rows::to_i64;
use crate::{append_refused, Append, Result, StoreError};
use aetheris_runtime::chain::{canonical_header, link, payload_digest};
use aetheris_runtime::{plan_append, JobHead, LedgerRow, RecordedEvent, TimerChange};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use uuid::Uuid;

/// One job of a batch: what it was, and what the batch's appends make of it.
#[derive(Debug)]
pub(super) struct JobMem {
    tenant: String,
    /// The head the batch was planned against: the write statement's fence.
    before: JobHead,
    /// The head after the batch's appends planned so far.
    head: JobHead,
    /// Every ledger row of the job, as moved by the batch's appends so far.
    ledger: HashMap<String, LedgerRow>,
    /// The steps whose rows the batch moved (the rows to write), each with whether its
    /// row existed before the batch (updated) or not (inserted).
    moved: BTreeMap<String, bool>,
    /// The batch's events of this job, in order (times and hashes are placeholders until
    /// `restamp`), their payload texts, and the SHA-256 of each payload: computed once,
    /// for both the statement's `tail` and `restamp`'s recomputed chain.
    events: Vec<RecordedEvent>,
    payloads: Vec<String>,
    digests: Vec<[u8; 32]>,
    timer: TimerChange,
    /// The place in the batch of the append that finishes the job (which then gets its
    /// transparency leaf): leaves are numbered in batch order.
    finishes: Option<usize>,
}

impl JobMem {
    /// A job as locked (or known), with every ledger row it has.
    pub fn new(tenant: String, head: JobHead, ledger: HashMap<String, LedgerRow>) -> JobMem {
        JobMem {
            tenant,
            before: head,
            head,
            ledger,
            moved: BTreeMap::new(),
            events: Vec::new(),
            payloads: Vec::new(),
            digests: Vec::new(),
            timer: TimerChange::Keep,
            finishes: None,
        }
    }

    pub fn from_known(k: KnownJob) -> JobMem {
        JobMem::new(k.tenant, k.head, k.ledger)
    }
}

/// The columns of the write statement (see `append_write::WRITE_SQL` for their meaning).
/// Texts are borrowed from the plan, which outlives the statement.
#[derive(Debug, Default)]
pub(super) struct WriteCols<'a> {
    pub e_job: Vec<Uuid>,
    pub e_seq: Vec<i64>,
    pub e_kind: Vec<&'static str>,
    pub e_payload: Vec<&'a str>,
    pub e_tail: Vec<Vec<u8>>,
    pub e_prev: Vec<Option<Vec<u8>>>,
    pub e_floor: Vec<i64>,
    pub j_job: Vec<Uuid>,
    pub j_token: Vec<i64>,
    pub j_seq_before: Vec<i64>,
    pub j_hash_before: Vec<Vec<u8>>,
    pub j_at_before: Vec<i64>,
    pub j_status_before: Vec<&'static str>,
    pub j_status: Vec<&'static str>,
    pub j_last_seq: Vec<i64>,
    pub j_last_ix: Vec<i32>,
    pub j_wake_keep: Vec<bool>,
    pub j_wake_at: Vec<Option<i64>>,
    pub j_leaf_prefix: Vec<Option<Vec<u8>>>,
    pub j_leaf_back: Vec<Option<i64>>,
    pub l_job: Vec<Uuid>,
    pub l_step: Vec<&'a str>,
    pub l_key: Vec<&'a str>,
    pub l_attempt: Vec<i64>,
    pub l_effect: Vec<&'static str>,
    pub l_status: Vec<&'static str>,
    /// The row is new (inserted), else it existed before the batch (updated).
    pub l_new: Vec<bool>,
}

impl WriteCols<'_> {
    /// Whether a job of the batch finishes (the statement then adds transparency leaves).
    pub fn has_leaves(&self) -> bool {
        self.j_leaf_prefix.iter().any(Option::is_some)
    }
}

/// What the write statement stored for one job: the time it stamped and the chain head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    pub at_ms: i64,
    pub last_hash: [u8; 32],
}

/// What became of one append of a batch.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Written: the recorded events.
    Recorded(Vec<RecordedEvent>),
    /// Refused by the planner (against the rows it was given).
    Refused(StoreError),
    /// Planned, but its job's row did not hold the head it was planned against, so the
    /// statement wrote nothing of it.
    Unwritten,
}

/// A batch planned against its jobs.
#[derive(Debug)]
pub(super) struct BatchPlan {
    /// By job id: the write statement locks job rows in this order.
    jobs: BTreeMap<Uuid, JobMem>,
    /// Per append in batch order: its job and how many events it adds, or its refusal.
    planned: Vec<Result<(Uuid, usize)>>,
}

impl BatchPlan {
    /// Plans every append of `batch` in order against `jobs`.
    pub fn plan(jobs: BTreeMap<Uuid, JobMem>, batch: Vec<Append>) -> BatchPlan {
        let mut plan = BatchPlan {
            jobs,
            planned: Vec::with_capacity(batch.len()),
        };
        for a in batch {
            let planned = plan.plan_one(a);
            plan.planned.push(planned);
        }
        plan
    }

    /// Plans one append against its job as the batch sees it; on success moves the job on
    /// and returns how many events it adds. On failure nothing is changed.
    fn plan_one(&mut self, a: Append) -> Result<(Uuid, usize)> {
        let id = a.job_id;
        let job = self
            .jobs
            .get_mut(&id.0)
            .ok_or(StoreError::job_not_found(id))?;
        let ledger = &job.ledger;
        let lookup = |step: &str| Ok::<_, Infallible>(ledger.get(step).cloned());
        // The store time is the statement's; any time at or after the head's plans alike.
        let planned = plan_append(&job.head, a, job.head.updated_at_ms, lookup)
            .map_err(|e| append_refused(id, e))?;
        let n = planned.events.len();
        if !job.head.status.is_terminal() && planned.head.status.is_terminal() {
            job.finishes = Some(self.planned.len());
        }
        for (step, row) in planned.ledger {
            let existed = job.ledger.contains_key(&step);
            job.moved.entry(step.clone()).or_insert(existed);
            job.ledger.insert(step, row);
        }
        job.events.extend(planned.events);
        job.digests.extend(
            planned
                .payloads
                .iter()
                .map(|p| payload_digest(p.as_bytes())),
        );
        job.payloads.extend(planned.payloads);
        job.head = planned.head;
        job.timer = job.timer.then(planned.timer);
        Ok((id.0, n))
    }

    /// Whether every append was planned (none refused) and adds at least one event: only
    /// then may a batch planned against known heads be written as it is.
    pub fn all_planned_with_events(&self) -> bool {
        self.planned
            .iter()
            .all(|p| matches!(p, Ok((_, n)) if *n > 0))
    }

    /// Whether anything is to be written.
    pub fn writes(&self) -> bool {
        self.jobs.values().any(|j| !j.events.is_empty())
    }

    /// The write statement's columns: the jobs with events, in id order, each job's events
    /// together and in order (the statement chains them), and their moved ledger rows.
    pub fn columns(&self) -> WriteCols<'_> {
        let mut c = WriteCols::default();
        let back = self.leaf_back();
        for (id, job) in self.jobs.iter().filter(|(_, j)| !j.events.is_empty()) {
            let each = job.events.iter().zip(&job.payloads).zip(&job.digests);
            for (i, ((e, payload), digest)) in each.enumerate() {
                c.e_job.push(*id);
                c.e_seq.push(to_i64(e.seq));
                c.e_kind.push(e.body.kind());
                c.e_payload.push(payload);
                c.e_tail.push(tail(e.body.kind(), digest));
                c.e_prev
                    .push((i == 0).then(|| job.before.last_hash.to_vec()));
                c.e_floor.push(job.before.updated_at_ms);
            }
            c.j_job.push(*id);
            c.j_token.push(to_i64(job.before.token));
            c.j_seq_before.push(to_i64(job.before.last_seq));
            c.j_hash_before.push(job.before.last_hash.to_vec());
            c.j_at_before.push(job.before.updated_at_ms);
            c.j_status_before.push(job.before.status.as_str());
            c.j_status.push(job.head.status.as_str());
            c.j_last_seq.push(to_i64(job.head.last_seq));
            c.j_last_ix
                .push(i32::try_from(c.e_job.len()).unwrap_or(i32::MAX));
            let (keep, at) = timer_columns(job.timer);
            c.j_wake_keep.push(keep);
            c.j_wake_at.push(at);
            c.j_leaf_prefix
                .push(job.finishes.map(|_| leaf_prefix(*id, job.head.last_seq)));
            c.j_leaf_back.push(back.get(id).copied());
            for (step, existed) in &job.moved {
                let Some(row) = job.ledger.get(step) else {
                    continue;
                };
                c.l_new.push(!existed);
                c.l_job.push(*id);
                c.l_step.push(step);
                c.l_key.push(&row.invocation_key);
                c.l_attempt.push(i64::from(row.attempt));
                c.l_effect.push(row.effect.as_str());
                c.l_status.push(row.status.as_str());
            }
        }
        c
    }

    /// For each job the batch finishes, how many of its tenant's leaves in this batch come
    /// from it on, in batch order (the statement's `back`: its leaf's index is the
    /// tenant's new size minus that).
    fn leaf_back(&self) -> HashMap<Uuid, i64> {
        let mut finished: Vec<(usize, Uuid, &str)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.finishes.map(|at| (at, *id, j.tenant.as_str())))
            .collect();
        finished.sort_unstable();
        let mut left: HashMap<&str, i64> = HashMap::new();
        for (_, _, tenant) in &finished {
            *left.entry(tenant).or_default() += 1;
        }
        finished
            .into_iter()
            .map(|(_, id, tenant)| {
                let n = left.entry(tenant).or_default();
                let back = *n;
                *n -= 1;
                (id, back)
            })
            .collect()
    }

    /// The outcome of every append once the statement wrote `written` (by job), and what is
    /// now known of each written job that is still going.
    pub fn finish(
        mut self,
        written: &HashMap<Uuid, Written>,
    ) -> (Vec<Outcome>, Vec<(Uuid, KnownJob)>) {
        let mut restamped: HashMap<Uuid, Result<std::vec::IntoIter<RecordedEvent>>> =
            HashMap::new();
        let mut known = Vec::new();
        for (id, job) in &mut self.jobs {
            if job.events.is_empty() {
                continue;
            }
            let Some(w) = written.get(id) else { continue };
            let events = restamp(*id, job, *w).map(|()| std::mem::take(&mut job.events));
            if events.is_ok() && !job.head.status.is_terminal() {
                known.push((
                    *id,
                    KnownJob {
                        tenant: job.tenant.clone(),
                        head: job.head,
                        ledger: std::mem::take(&mut job.ledger),
                    },
                ));
            }
            restamped.insert(*id, events.map(Vec::into_iter));
        }
        let outcomes = self
            .planned
            .into_iter()
            .map(|p| match p {
                Err(e) => Outcome::Refused(e),
                Ok((id, n)) => match restamped.get_mut(&id) {
                    None if n == 0 => Outcome::Recorded(Vec::new()),
                    None => Outcome::Unwritten,
                    Some(Ok(events)) => Outcome::Recorded(events.take(n).collect()),
                    Some(Err(e)) => Outcome::Refused(e.clone()),
                },
            })
            .collect();
        (outcomes, known)
    }
}

/// Stamps a written job's events with the statement's time, recomputes their chain from
/// the head before the batch, and checks it ends where the database's does.
fn restamp(id: Uuid, job: &mut JobMem, w: Written) -> Result<()> {
    let mut prev = job.before.last_hash;
    for (e, digest) in job.events.iter_mut().zip(&job.digests) {
        e.recorded_at_ms = w.at_ms;
        e.prev_hash = prev;
        // `aetheris_runtime::chain::event_hash`, with the payload's digest from planning.
        e.hash = link(
            &prev,
            &canonical_header(e.job_id, e.seq, w.at_ms, e.body.kind()),
            digest,
        );
        prev = e.hash;
    }
    if prev != w.last_hash {
        return Err(StoreError::Corrupt(format!(
            "job {id}: the chain head stored by the append is not the one its events hash to"
        )));
    }
    job.head.last_hash = prev;
    job.head.updated_at_ms = w.at_ms;
    for step in job.moved.keys() {
        if let Some(row) = job.ledger.get_mut(step) {
            row.updated_at_ms = w.at_ms;
        }
    }
    Ok(())
}

/// The canonical bytes of an event after its time: kind length (u16 BE) ‖ kind ‖
/// SHA-256(payload) (`aetheris_runtime::chain::parts_around_time`), from that digest.
fn tail(kind: &str, payload_digest: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + kind.len() + 32);
    out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(payload_digest);
    out
}

/// The bytes of a finished job's transparency leaf before its chain head: the statement
/// hashes `prefix ‖ chain head` (`aetheris_proof::checkpoint::job_leaf_hash`: SHA-256(0x00 ‖
/// job leaf data), whose data ends with the chain head).
fn leaf_prefix(id: Uuid, last_seq: u64) -> Vec<u8> {
    let data = aetheris_proof::checkpoint::job_leaf_data(
        aetheris_runtime::JobId(id),
        last_seq,
        &[0u8; 32],
    );
    let mut out = Vec::with_capacity(1 + data.len() - 32);
    out.push(0x00);
    out.extend_from_slice(&data[..data.len() - 32]);
    out
}

/// A timer change as the write statement's columns: keep the stored wake-up time, or
/// replace it with the given one (NULL: no timer).
fn timer_columns(change: TimerChange) -> (bool, Option<i64>) {
    match change {
        TimerChange::Keep => (true, None),
        TimerChange::Set(at) => (false, Some(at)),
        TimerChange::Clear => (false, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_runtime::chain::{event_hash, parts_around_time, GENESIS};
    use aetheris_runtime::{EventBody, JobId, JobStatus};
    use ring::digest::{digest, SHA256};

    fn head(seq: u64) -> JobHead {
        JobHead {
            status: JobStatus::Running,
            last_seq: seq,
            last_hash: [3; 32],
            token: 7,
            updated_at_ms: 1_000,
        }
    }

    fn append(id: Uuid, seq: u64, events: Vec<EventBody>) -> Append {
        Append {
            job_id: JobId(id),
            token: 7,
            expected_last_seq: seq,
            events,
        }
    }

    fn park() -> EventBody {
        EventBody::JobParked { wake_at_ms: None }
    }

    fn one_job(id: Uuid) -> BTreeMap<Uuid, JobMem> {
        BTreeMap::from([(id, JobMem::new("t".into(), head(4), HashMap::new()))])
    }

    #[test]
    fn the_tail_is_what_the_chain_hashes_after_the_time() {
        let (_, expected) = parts_around_time(&GENESIS, JobId(Uuid::nil()), 1, "k", b"{}");
        assert_eq!(tail("k", &payload_digest(b"{}")), expected);
    }

    #[test]
    fn the_leaf_prefix_and_the_head_hash_to_the_job_leaf() {
        let id = Uuid::from_u128(5);
        let mut bytes = leaf_prefix(id, 9);
        bytes.extend_from_slice(&[4; 32]);
        let expected = aetheris_proof::checkpoint::job_leaf_hash(JobId(id), 9, &[4; 32]);
        assert_eq!(digest(&SHA256, &bytes).as_ref(), expected.as_slice());
    }

    #[test]
    fn appends_of_one_job_chain_and_restamp_to_the_database_time() {
        let id = Uuid::from_u128(1);
        let batch = vec![append(id, 4, vec![park()]), append(id, 5, vec![park()])];
        let plan = BatchPlan::plan(one_job(id), batch);
        assert!(plan.all_planned_with_events());
        let c = plan.columns();
        assert_eq!(c.e_seq, vec![5, 6]);
        assert_eq!(c.e_prev, vec![Some(vec![3; 32]), None]);
        assert_eq!(
            (c.j_seq_before[0], c.j_last_seq[0], c.j_last_ix[0]),
            (4, 6, 2)
        );
        // What the database would store at time 2,000.
        let payload = c.e_payload[0].as_bytes();
        let h5 = event_hash(&[3; 32], JobId(id), 5, 2_000, "job_parked", payload);
        let h6 = event_hash(&h5, JobId(id), 6, 2_000, "job_parked", payload);
        let written = HashMap::from([(
            id,
            Written {
                at_ms: 2_000,
                last_hash: h6,
            },
        )]);
        let (outcomes, known) = plan.finish(&written);
        let recorded: Vec<Vec<RecordedEvent>> = outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Recorded(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(recorded[0][0].hash, h5);
        assert_eq!(recorded[1][0].prev_hash, h5);
        assert_eq!(recorded[1][0].recorded_at_ms, 2_000);
        assert_eq!(known[0].1.head.last_hash, h6);
        assert_eq!(known[0].1.head.updated_at_ms, 2_000);
    }

    #[test]
    fn a_head_that_does_not_match_the_database_is_refused_and_not_known() {
        let id = Uuid::from_u128(1);
        let plan = BatchPlan::plan(one_job(id), vec![append(id, 4, vec![park()])]);
        let written = HashMap::from([(
            id,
            Written {
                at_ms: 2_000,
                last_hash: [9; 32],
            },
        )]);
        let (outcomes, known) = plan.finish(&written);
        assert!(matches!(
            &outcomes[0],
            Outcome::Refused(StoreError::Corrupt(_))
        ));
        assert!(known.is_empty());
    }

    #[test]
    fn refusals_and_unwritten_jobs_are_told_apart() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut jobs = one_job(a);
        jobs.insert(b, JobMem::new("t".into(), head(4), HashMap::new()));
        let batch = vec![append(a, 3, vec![park()]), append(b, 4, vec![park()])];
        let plan = BatchPlan::plan(jobs, batch);
        assert!(!plan.all_planned_with_events());
        assert_eq!(
            plan.columns().j_job,
            vec![b],
            "only planned jobs are written"
        );
        let (outcomes, _) = plan.finish(&HashMap::new());
        assert!(matches!(
            &outcomes[0],
            Outcome::Refused(StoreError::SeqConflict { .. })
        ));
        assert!(matches!(&outcomes[1], Outcome::Unwritten));
        let _ = GENESIS;
    }
}
