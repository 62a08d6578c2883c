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
        self.next_batch_at(max, Instant::now())
    }

    fn next_batch_at(&mut self, max: usize, now: Instant) -> Vec<T> {
        // Only a queue that saw several tenants can be contended (and needs pruning).
        if self.last_seen.len() > 1 {
            self.last_seen
                .retain(|_, at| now.saturating_duration_since(*at) < CONTENTION_WINDOW);
        }
        let quota = if self.last_seen.len() > 1 {
            self.contended_quota
        } else {
            max
        };
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
        self.turn.extend(full);
        self.len -= out.len();
        out
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
        assert_eq!(q.next_batch_at(8, t0).len(), 8);
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
        assert_eq!(q.next_batch_at(100, t0), ["claim", "a0", "b0", "a1"]);
        // b queued nothing more but is still active: a stays capped.
        assert_eq!(q.next_batch_at(100, t0), ["a2", "a3"]);
        // Once b has been quiet for the window, a has whole batches again.
        let later = t0 + CONTENTION_WINDOW;
        assert_eq!(q.next_batch_at(100, later), ["a4", "a5"]);
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
        assert_eq!(q.next_batch_at(100, t0), ["a0", "b0", "c0"]);
        assert_eq!(q.next_batch_at(2, t0), ["a1", "b1"]);
        assert_eq!(q.next_batch_at(2, t0), ["c1"]);
    }
}
