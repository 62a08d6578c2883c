//! `FairQueue`: the queue in front of a store's shared commit path (the embedded store's
//! writer thread, PostgreSQL's group-commit and group-submit batchers), served fairly across tenants
//! (issue 5, W6): items of the deployment itself (`None`: claims, heartbeats, releases)
//! first, then tenants in turn, one item each, in arrival order within a tenant. One
//! tenant's flood of writes therefore delays another tenant's next write by about one
//! batch, not by everything it queued ahead of it.
//!
//! "About one batch" is still a flood's batch: a batch commits as a whole, so a quiet
//! tenant's write waits for the batch in flight (full of the flooding tenant's writes)
//! and then for its own. While more than one tenant is active (queued something within
//! `CONTENTION_WINDOW`), each tenant therefore gets at most `contended_quota` items per
//! batch: batches stay short, and a quiet tenant's wait is bounded by the number of
//! active tenants, not by the size of anyone's backlog. A lone tenant is never capped, so
//! single-tenant throughput (W1) keeps the store's full batches. The price is paid by the
//! flooding tenant while others are active (more, smaller commits) — measured by W6.
//!
//! A queue built `sharing_batches` (PostgreSQL's group submit, which runs several batches
//! at once) also shares the batches in flight: while several tenants are active, a tenant
//! with a batch in flight gets no items into another one until it finishes (the caller
//! reports it with `finished`). A flood then occupies one batch at a time, not every
//! batcher and every database backend behind them, and another tenant's submission finds
//! a batcher free and a batch of its own (W6: B's submission waited for a batch of A's
//! in flight and then shared its own with 16 of A's). A lone tenant keeps every batcher.
//!
//! `JobTenants` is how a queue learns the tenant of an append, which names only its job:
//! claims record the tenant of each job they lease, releases forget it. It is a hint —
//! an unknown job queues under the empty tenant — and bounded.

use aetheris_runtime::JobId;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tenant that queued something this recently counts as active.
const CONTENTION_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct FairQueue<T> {
    system: VecDeque<T>,
    tenants: HashMap<Arc<str>, VecDeque<T>>,
    /// Tenants with queued items, in the order they are served next.
    turn: VecDeque<Arc<str>>,
    len: usize,
    /// When each recently active tenant last queued an item.
    last_seen: HashMap<Arc<str>, Instant>,
    /// A tenant's items per batch while another tenant is active too.
    contended_quota: usize,
    /// Whether a tenant with a batch in flight waits for it while contended.
    share_batches: bool,
    /// Batches in flight per tenant (counted only when `share_batches`).
    in_flight: HashMap<Arc<str>, usize>,
}

impl<T> FairQueue<T> {
    /// A queue that gives each tenant at most `contended_quota` (at least 1) items of a
    /// batch while more than one tenant is active.
    pub(crate) fn new(contended_quota: usize) -> Self {
        FairQueue {
            system: VecDeque::new(),
            tenants: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            last_seen: HashMap::new(),
            contended_quota: contended_quota.max(1),
            share_batches: false,
            in_flight: HashMap::new(),
        }
    }

    /// This queue also shares the batches in flight while contended (module doc): every
    /// batch taken with `next_batch_with_tenants` must be reported with `finished`.
    pub(crate) fn sharing_batches(mut self) -> Self {
        self.share_batches = true;
        self
    }

    /// A batch taken with `next_batch_with_tenants` has finished: its tenants may be
    /// served again while contended.
    pub(crate) fn finished(&mut self, tenants: impl IntoIterator<Item = Arc<str>>) {
        for t in tenants {
            if let Some(n) = self.in_flight.get_mut(&t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.in_flight.remove(&t);
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` of `tenant` (`None` = the deployment's own, served first).
    pub(crate) fn push(&mut self, tenant: Option<Arc<str>>, item: T) {
        self.push_at(tenant, item, Instant::now())
    }

    fn push_at(&mut self, tenant: Option<Arc<str>>, item: T, now: Instant) {
        self.len += 1;
        match tenant {
            None => self.system.push_back(item),
            Some(t) => {
                self.last_seen.insert(t.clone(), now);
                let q = self.tenants.entry(t.clone()).or_default();
                if q.is_empty() {
                    self.turn.push_back(t);
                }
                q.push_back(item);
            }
        }
    }

    /// Up to `max` items: every queued system one first, then round robin (each tenant
    /// capped at the contended quota while several are active).
    pub(crate) fn next_batch(&mut self, max: usize) -> Vec<T> {
        self.next_batch_at(max, Instant::now()).0
    }

    /// As `next_batch`, with the tenants that got items into it (to report to `finished`
    /// once the batch is done, on a queue `sharing_batches`). Empty while every tenant
    /// with queued items waits for a batch in flight.
    pub(crate) fn next_batch_with_tenants(&mut self, max: usize) -> (Vec<T>, Vec<Arc<str>>) {
        self.next_batch_at(max, Instant::now())
    }

    fn next_batch_at(&mut self, max: usize, now: Instant) -> (Vec<T>, Vec<Arc<str>>) {
        // Only a queue that saw several tenants can be contended (and needs pruning).
        if self.last_seen.len() > 1 {
            self.last_seen
                .retain(|_, at| now.saturating_duration_since(*at) < CONTENTION_WINDOW);
        }
        let contended = self.last_seen.len() > 1;
        let quota = if contended { self.contended_quota } else { max };
        // Tenants waiting for a batch in flight: first in turn once it finished.
        let mut held_back: Vec<Arc<str>> = Vec::new();
        // Tenants that used their quota: served again from the next batch on.
        let mut full: Vec<Arc<str>> = Vec::new();
        let mut taken: HashMap<Arc<str>, usize> = HashMap::new();
        let mut out = Vec::with_capacity(max.min(self.len));
        while out.len() < max {
            if let Some(item) = self.system.pop_front() {
                out.push(item);
                continue;
            }
            let Some(t) = self.turn.pop_front() else {
                break;
            };
            if self.share_batches && contended && self.in_flight.contains_key(&t) {
                held_back.push(t);
                continue;
            }
            let Some(q) = self.tenants.get_mut(&t) else {
                continue;
            };
            if let Some(item) = q.pop_front() {
                out.push(item);
            }
            let n = taken.entry(t.clone()).or_insert(0);
            *n += 1;
            if q.is_empty() {
                self.tenants.remove(&t);
            } else if *n >= quota {
                full.push(t);
            } else {
                self.turn.push_back(t);
            }
        }
        for t in held_back.into_iter().rev() {
            self.turn.push_front(t);
        }
        self.turn.extend(full);
        self.len -= out.len();
        let tenants: Vec<Arc<str>> = taken.into_keys().collect();
        if self.share_batches {
            for t in &tenants {
                *self.in_flight.entry(t.clone()).or_insert(0) += 1;
            }
        }
        (out, tenants)
    }
}

/// The most job → tenant hints kept; past it they are dropped (they only order work).
const MAX_JOB_TENANTS: usize = 200_000;

/// The tenant of each job leased through this store (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct JobTenants(HashMap<JobId, Arc<str>>);

impl JobTenants {
    /// The job's tenant, or the empty tenant if this store did not lease it.
    pub(crate) fn of(&self, job: &JobId) -> Arc<str> {
        self.0.get(job).cloned().unwrap_or_else(|| Arc::from(""))
    }

    pub(crate) fn leased<'a>(&mut self, leases: impl IntoIterator<Item = &'a crate::Lease>) {
        for l in leases {
            if self.0.len() >= MAX_JOB_TENANTS {
                self.0.clear();
            }
            self.0.insert(l.job_id, Arc::from(l.tenant.as_str()));
        }
    }

    pub(crate) fn released(&mut self, jobs: impl IntoIterator<Item = JobId>) {
        for j in jobs {
            self.0.remove(&j);
        }
    }

    /// Forgets the jobs that the recorded appends among `results` finished: such an append
    /// gave its job's lease back, and no release (where a job is otherwise forgotten)
    /// follows.
    pub(crate) fn finished(
        &mut self,
        results: &[crate::Result<Vec<aetheris_runtime::RecordedEvent>>],
    ) {
        let ended = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|events| events.iter().find(|e| e.body.ends_job()))
            .map(|e| e.job_id);
        self.released(ended.collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_first_then_tenants_in_turn() {
        let mut q = FairQueue::new(8);
        let a: Arc<str> = Arc::from("a");
        for i in 0..5 {
            q.push(Some(a.clone()), format!("a{i}"));
        }
        q.push(Some(Arc::from("b")), "b0".to_string());
        q.push(None, "claim".to_string());
        assert_eq!(q.next_batch(3), ["claim", "a0", "b0"]);
        assert_eq!(q.next_batch(10), ["a1", "a2", "a3", "a4"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_lone_tenant_fills_whole_batches() {
        let mut q = FairQueue::new(2);
        let t0 = Instant::now();
        for i in 0..10 {
            q.push_at(Some(Arc::from("a")), i, t0);
        }
        assert_eq!(q.next_batch_at(8, t0).0.len(), 8);
    }

    #[test]
    fn active_tenants_get_at_most_the_quota_per_batch() {
        let mut q = FairQueue::new(2);
        let t0 = Instant::now();
        for i in 0..6 {
            q.push_at(Some(Arc::from("a")), format!("a{i}"), t0);
        }
        q.push_at(Some(Arc::from("b")), "b0".to_string(), t0);
        q.push_at(None, "claim".to_string(), t0);
        // System items are never capped; a and b take turns, a stops at its quota.
        assert_eq!(q.next_batch_at(100, t0).0, ["claim", "a0", "b0", "a1"]);
        // b queued nothing more but is still active: a stays capped.
        assert_eq!(q.next_batch_at(100, t0).0, ["a2", "a3"]);
        // Once b has been quiet for the window, a has whole batches again.
        let later = t0 + CONTENTION_WINDOW;
        assert_eq!(q.next_batch_at(100, later).0, ["a4", "a5"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_capped_tenant_keeps_its_turn_order() {
        let mut q = FairQueue::new(1);
        let t0 = Instant::now();
        for t in ["a", "b", "c"] {
            for i in 0..2 {
                q.push_at(Some(Arc::from(t)), format!("{t}{i}"), t0);
            }
        }
        assert_eq!(q.next_batch_at(100, t0).0, ["a0", "b0", "c0"]);
        assert_eq!(q.next_batch_at(2, t0).0, ["a1", "b1"]);
        assert_eq!(q.next_batch_at(2, t0).0, ["c1"]);
    }

    fn strs(v: Vec<Arc<str>>) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|t| t.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_sharing_queue_holds_a_busy_tenant_back_only_while_contended() {
        let mut q = FairQueue::new(2).sharing_batches();
        let t0 = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for i in 0..6 {
            q.push_at(Some(a.clone()), format!("a{i}"), t0);
        }
        // Alone, a fills batch after batch while its first is in flight.
        let (first, tenants) = q.next_batch_at(2, t0);
        assert_eq!(
            (first, strs(tenants)),
            (vec!["a0".into(), "a1".into()], vec!["a".into()])
        );
        assert_eq!(q.next_batch_at(2, t0).0, ["a2", "a3"]);
        // b arrives: a has batches in flight, so the next batch is b's alone.
        q.push_at(Some(b.clone()), "b0".to_string(), t0);
        let (batch, tenants) = q.next_batch_at(100, t0);
        assert_eq!(
            (batch, strs(tenants)),
            (vec!["b0".to_string()], vec!["b".into()])
        );
        // Nothing servable while a and b both wait for their batches.
        q.push_at(Some(b.clone()), "b1".to_string(), t0);
        assert!(q.next_batch_at(100, t0).0.is_empty());
        // b's batch finished: b first; a still waits for both of its batches.
        q.finished([b.clone()]);
        assert_eq!(q.next_batch_at(100, t0).0, ["b1"]);
        q.finished([a.clone()]);
        assert!(q.next_batch_at(100, t0).0.is_empty());
        q.finished([a.clone()]);
        // a is served again, within its quota.
        assert_eq!(q.next_batch_at(100, t0).0, ["a4", "a5"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_plain_queue_never_holds_a_tenant_back() {
        let mut q = FairQueue::new(1);
        let t0 = Instant::now();
        q.push_at(Some(Arc::from("a")), "a0", t0);
        q.push_at(Some(Arc::from("b")), "b0", t0);
        q.push_at(Some(Arc::from("a")), "a1", t0);
        assert_eq!(q.next_batch_at(100, t0).0, ["a0", "b0"]);
        assert_eq!(q.next_batch_at(100, t0).0, ["a1"]);
    }

    fn recorded(job: JobId, body: aetheris_runtime::EventBody) -> aetheris_runtime::RecordedEvent {
        aetheris_runtime::RecordedEvent {
            job_id: job,
            seq: 2,
            recorded_at_ms: 0,
            body,
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    #[test]
    fn only_recorded_appends_that_end_their_job_are_forgotten() {
        use aetheris_runtime::EventBody;
        use serde_json::json;
        let (done, cancelled, running, refused) =
            (JobId::new(), JobId::new(), JobId::new(), JobId::new());
        let mut tenants = JobTenants::default();
        for job in [done, cancelled, running, refused] {
            tenants.0.insert(job, Arc::from("t"));
        }
        let step = |job| {
            recorded(
                job,
                EventBody::StepSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: json!(1),
                },
            )
        };
        tenants.finished(&[
            Ok(vec![
                step(done),
                recorded(done, EventBody::JobSucceeded { output: json!(1) }),
            ]),
            Ok(vec![recorded(
                cancelled,
                EventBody::JobCancelled {
                    by: "ops".into(),
                    reason: "no".into(),
                    command_id: 1,
                },
            )]),
            Ok(vec![step(running)]),
            Err(crate::StoreError::job_not_found(refused)),
        ]);
        let mut left: Vec<JobId> = tenants.0.keys().copied().collect();
        left.sort();
        let mut want = vec![running, refused];
        want.sort();
        assert_eq!(left, want);
    }
}
