//! `FairQueue`: the queue in front of a store's shared commit path (the embedded store's
//! writer thread, PostgreSQL's group-commit batcher), served fairly across tenants
//! (issue 5, W6): items of the deployment itself (`None`: claims, heartbeats, releases)
//! first, then tenants in turn, one item each, in arrival order within a tenant. One
//! tenant's flood of writes therefore delays another tenant's next write by about one
//! batch, not by everything it queued ahead of it.
//!
//! `JobTenants` is how a queue learns the tenant of an append, which names only its job:
//! claims record the tenant of each job they lease, releases forget it. It is a hint —
//! an unknown job queues under the empty tenant — and bounded.

use aetheris_runtime::JobId;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct FairQueue<T> {
    system: VecDeque<T>,
    tenants: HashMap<Arc<str>, VecDeque<T>>,
    /// Tenants with queued items, in the order they are served next.
    turn: VecDeque<Arc<str>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            system: VecDeque::new(),
            tenants: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` of `tenant` (`None` = the deployment's own, served first).
    pub(crate) fn push(&mut self, tenant: Option<Arc<str>>, item: T) {
        self.len += 1;
        match tenant {
            None => self.system.push_back(item),
            Some(t) => {
                let q = self.tenants.entry(t.clone()).or_default();
                if q.is_empty() {
                    self.turn.push_back(t);
                }
                q.push_back(item);
            }
        }
    }

    /// Up to `max` items: every queued system one first, then round robin.
    pub(crate) fn next_batch(&mut self, max: usize) -> Vec<T> {
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
            if q.is_empty() {
                self.tenants.remove(&t);
            } else {
                self.turn.push_back(t);
            }
        }
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
        let mut q = FairQueue::default();
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
}
