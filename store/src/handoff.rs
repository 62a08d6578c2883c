//! Hand-off at submission: a worker's standing offer of free slots, which the store's
//! submissions take, so a new job is leased to that worker in the very commit that stores
//! it and reaches it without a claim (one round trip and one commit fewer per job).
//!
//! Who owns what: the worker's lease manager makes and withdraws the offer (it alone
//! knows its free slots); the store's submission path takes from it, writes the leases
//! with the jobs (token 1, the worker as owner, expiry from the database clock) and hands
//! the leases back over the channel this module keeps ([`Handoff::subscribe`]).
//!
//! Invariants kept here:
//! - Never more leases than slots offered: `take` decrements the offer under its lock, and
//!   every slot taken comes back to the worker in exactly one [`HandedOff`] (with a lease
//!   or, when the job was not stored, without), so its slot count stays exact.
//! - Never past a tenant's share: the offer carries the per-tenant limits of a claim
//!   (`RunningCaps::this_claim`); a worker with cross-worker running caps makes no offer.
//! - Fair: a job that cannot be handed off (no room, or its tenant at its limit) closes
//!   the offer, because it is claimable work waiting: no later submission may take a slot
//!   before the claim that serves it (G6/W6). The worker only offers while its last claim
//!   found no work left behind and no claim is under way, so a hand-off leases exactly a
//!   job that a claim would have leased at once.
//! - G3 is unchanged: the job is new, so token 1 is its first fence, and the lease is an
//!   ordinary one (renewed by heartbeats, lost at expiry, taken over by a claim elsewhere
//!   if the worker dies before it runs the job).

use crate::{JobLoad, Lease};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// What a worker offers: up to `room` new jobs, each tenant at most its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub worker: String,
    pub ttl_ms: u64,
    pub room: usize,
    /// The most jobs of a tenant not in `tenant_limits` (`None`: no limit but `room`).
    pub default_limit: Option<u64>,
    pub tenant_limits: BTreeMap<String, u64>,
}

/// The leases of one submission batch, handed to the worker whose offer it took from:
/// `slots` slots were taken, and `leases` are the jobs stored leased (at most `slots`;
/// fewer when a job was not stored, e.g. its idempotency key was taken, or the batch
/// failed). Each lease comes with its job's whole log (its `job_submitted` event).
#[derive(Debug)]
pub struct HandedOff {
    pub slots: usize,
    pub leases: Vec<(Lease, JobLoad)>,
}

/// What a submission batch took from the offer: `leased[i]` says whether entry `i` is
/// stored leased to `worker` for `ttl_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub worker: String,
    pub ttl_ms: u64,
    pub leased: Vec<bool>,
}

impl Taken {
    /// Slots taken (entries leased).
    pub fn slots(&self) -> usize {
        self.leased.iter().filter(|l| **l).count()
    }
}

/// The offer as the store sees it.
#[derive(Debug, Default)]
struct State {
    offer: Option<Offer>,
    /// A job went unleased since the offer was made: take nothing until it is withdrawn.
    closed: bool,
}

/// What `withdraw` took down: the room not taken, and whether a job went unleased since
/// the offer was made (claimable work is waiting: claim before offering again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Withdrawn {
    pub room: usize,
    pub closed: bool,
}

/// One store's hand-off point (shared by its clones): the offer and the channel back.
#[derive(Debug, Default)]
pub struct Handoff {
    state: Mutex<State>,
    /// The subscribed worker's channel (one worker per store at a time).
    tx: Mutex<Option<mpsc::UnboundedSender<HandedOff>>>,
}

impl Handoff {
    /// The channel the leases come back on, for the one worker that offers slots. `None`
    /// while another subscriber's receiver is alive (two workers sharing one store: the
    /// second claims only). A worker whose receiver is gone (it stopped) may be replaced.
    pub fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<HandedOff>> {
        let mut tx = self.tx.lock().ok()?;
        if tx.as_ref().is_some_and(|t| !t.is_closed()) {
            return None;
        }
        let (new_tx, rx) = mpsc::unbounded_channel();
        *tx = Some(new_tx);
        // The old subscriber's offer is void: its slots are gone with it.
        if let Ok(mut s) = self.state.lock() {
            *s = State::default();
        }
        Some(rx)
    }

    /// Puts `offer` up, replacing any offer not yet withdrawn (whose unused room the
    /// caller must have counted back with `withdraw`).
    pub fn offer(&self, offer: Offer) {
        if let Ok(mut s) = self.state.lock() {
            *s = State {
                offer: (offer.room > 0).then_some(offer),
                closed: false,
            };
        }
    }

    /// Takes the offer down; returns its room not taken, and whether it was closed.
    /// Slots already taken come back in their batch's [`HandedOff`].
    pub fn withdraw(&self) -> Withdrawn {
        let Ok(mut s) = self.state.lock() else {
            return Withdrawn::default();
        };
        let State { offer, closed } = std::mem::take(&mut *s);
        Withdrawn {
            room: offer.map_or(0, |o| o.room),
            closed,
        }
    }

    /// Decides, for a batch of new jobs of `tenants` (in the batch's order), which are
    /// stored leased: in order, while room is left and the tenant is within its limit.
    /// The first job that cannot be leased closes the offer. `None`: nothing taken.
    pub fn take<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) -> Option<Taken> {
        let mut s = self.state.lock().ok()?;
        if s.closed {
            return None;
        }
        let State { offer, closed } = &mut *s;
        let offer = offer.as_mut()?;
        let mut per_tenant: BTreeMap<&str, u64> = BTreeMap::new();
        let mut leased = Vec::new();
        for t in tenants {
            let limit = offer.tenant_limits.get(t).copied().or(offer.default_limit);
            let n = per_tenant.entry(t).or_insert(0);
            let ok = !*closed && offer.room > 0 && limit.is_none_or(|l| *n < l);
            if ok {
                offer.room -= 1;
                *n += 1;
            } else {
                *closed = true;
            }
            leased.push(ok);
        }
        for (t, n) in per_tenant {
            if let Some(l) = offer.tenant_limits.get_mut(t) {
                *l -= n;
            } else if let Some(d) = offer.default_limit {
                offer.tenant_limits.insert(t.to_string(), d - n);
            }
        }
        leased.iter().any(|l| *l).then(|| Taken {
            worker: offer.worker.clone(),
            ttl_ms: offer.ttl_ms,
            leased,
        })
    }

    /// Hands a batch's leases to the worker. If it is gone, its leases expire and a claim
    /// elsewhere takes the jobs (as after a crash).
    pub fn deliver(&self, handed: HandedOff) {
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|tx| tx.send(handed).is_ok()));
        if sent != Some(true) {
            tracing::warn!("hand-off receiver gone; the jobs are claimed when their leases expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(room: usize, default: Option<u64>, limits: &[(&str, u64)]) -> Offer {
        Offer {
            worker: "w".into(),
            ttl_ms: 1000,
            room,
            default_limit: default,
            tenant_limits: limits.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
        }
    }

    #[test]
    fn a_batch_takes_room_in_order_and_what_does_not_fit_closes_the_offer() {
        let h = Handoff::default();
        h.offer(offer(2, None, &[]));
        let t = h.take(["a", "b", "c"]).unwrap();
        assert_eq!(t.leased, vec![true, true, false]);
        assert_eq!((t.slots(), t.worker.as_str(), t.ttl_ms), (2, "w", 1000));
        // Closed: nothing more is taken, and the worker learns work is waiting.
        assert_eq!(h.take(["a"]), None);
        assert_eq!(
            h.withdraw(),
            Withdrawn {
                room: 0,
                closed: true
            }
        );
        assert_eq!(h.withdraw(), Withdrawn::default());
    }

    #[test]
    fn a_job_that_cannot_be_leased_closes_the_offer_for_the_rest_of_its_batch_too() {
        let h = Handoff::default();
        h.offer(offer(5, None, &[("a", 1)]));
        // a's second job waits for a claim; b's job after it must not overtake it.
        let t = h.take(["a", "a", "b"]).unwrap();
        assert_eq!(t.leased, vec![true, false, false]);
        assert_eq!(
            h.withdraw(),
            Withdrawn {
                room: 4,
                closed: true
            }
        );
        assert_eq!(h.take(["b"]), None, "withdrawn");
    }

    #[test]
    fn tenant_limits_hold_across_batches() {
        let h = Handoff::default();
        h.offer(offer(10, Some(2), &[("a", 1)]));
        assert_eq!(h.take(["a"]).unwrap().leased, vec![true]);
        assert_eq!(h.take(["b", "b"]).unwrap().leased, vec![true, true]);
        assert_eq!(h.take(["b"]), None, "b at its limit: nothing taken");
        assert_eq!(
            h.withdraw(),
            Withdrawn {
                room: 7,
                closed: true
            }
        );
    }

    #[test]
    fn no_offer_no_room_or_an_empty_batch_takes_nothing() {
        let h = Handoff::default();
        assert_eq!(h.take(["a"]), None);
        h.offer(offer(0, None, &[]));
        assert_eq!(h.take(["a"]), None);
        h.offer(offer(1, None, &[]));
        assert_eq!(h.take([]), None);
        assert_eq!(
            h.withdraw(),
            Withdrawn {
                room: 1,
                closed: false
            }
        );
    }

    #[test]
    fn the_channel_has_one_live_subscriber_and_delivers_in_order() {
        let h = Handoff::default();
        let old = h.subscribe().unwrap();
        assert!(h.subscribe().is_none(), "one worker per store");
        h.offer(offer(3, None, &[]));
        drop(old);
        let mut rx = h.subscribe().expect("the stopped worker's place is free");
        assert_eq!(h.withdraw(), Withdrawn::default(), "its offer went with it");
        h.deliver(HandedOff {
            slots: 1,
            leases: vec![],
        });
        h.deliver(HandedOff {
            slots: 2,
            leases: vec![],
        });
        assert_eq!(rx.try_recv().unwrap().slots, 1);
        assert_eq!(rx.try_recv().unwrap().slots, 2);
    }
}
