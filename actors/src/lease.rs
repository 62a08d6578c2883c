//! `LeaseManager`: this worker's leases. Claims runnable jobs (the store makes claims fair
//! across tenants and bumps the fencing token on every grant), renews every held lease in
//! one round trip per heartbeat, revokes the actor of any lease the heartbeat did not keep,
//! and releases leases of passivated jobs (and of jobs found finished) at once (together,
//! in one store call at a time) so another worker (or a later claim) can take them without
//! waiting for the TTL. A job its actor finished needs no release: the finishing append
//! gave the lease back in its own transaction, and a heartbeat racing that append reports
//! the job finished, not lost (the store's contract), so no false lease loss is counted.
//! Claims are triggered by the store's wake-up hint and by a polling fallback. While
//! a claim would find nothing (the last one left no work behind, none is under way) and
//! no running caps are set, the free slots are offered to the store's submissions
//! instead (`aetheris_store::handoff`, where the store has it): a new job is then leased
//! here in the commit that stores it and starts without a claim. Every slot offered is
//! counted as promised until it comes back, unused (`withdraw`) or with its batch's
//! leases, so offers and claims together never exceed `max_jobs`; a job the offer could
//! not take closes it, and the next step is a claim, so hand-offs never overtake queued
//! work. No tenant may hold more than its share of this worker's slots (`tenant_share`: all but an
//! eighth), so a tenant's backlog never takes the last free slot from another tenant's new
//! job (W6). `Drain` stops taking work, lets job actors record their in-flight calls, and
//! releases everything (G4: graceful handoff in milliseconds). It sees the registry only
//! as a `RegistryPort` (messages.rs). It keeps the process's supervision figures of its
//! leases (supervision.rs): how many it holds, and when they were last known renewed.

use crate::clock::local_ms;
use crate::context::WorkerContext;
use crate::messages::{
    ActiveCount, Drain, DrainAll, LeaseDone, RegistryPort, RevokeJob, RunJob, WakeAt,
};
use crate::metrics as m;
use crate::supervision::{self, ActorKind, Queued};
use actix::prelude::*;
use aetheris_runtime::JobId;
use aetheris_store::handoff::{HandedOff, Handoff, Offer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A work hint arrived: claim now.
#[derive(Message)]
#[rtype(result = "()")]
struct ClaimNow {
    _queued: Queued,
}

/// Claims of this worker under way at once. Two, so that under load one is always queued
/// at the store while the other's answer travels back: a job submitted behind a flood is
/// leased by the next commit, not the one after (W6). Each claim is for the slots the
/// others have not promised, so together they never exceed `max_jobs`.
const CLAIMS_IN_FLIGHT: usize = 2;

/// How often due timers are checked.
const TIMER_TICK: Duration = Duration::from_millis(10);

/// The slots of a worker with `max_jobs` slots that one tenant may hold: all but an eighth
/// (none reserved below 8 slots), so other tenants' new jobs find a free slot at once.
pub fn tenant_share(max_jobs: usize) -> usize {
    max_jobs - max_jobs / 8
}

/// What the next claim asks for: `room` slots, no more of one tenant than its limit.
#[derive(Debug, PartialEq)]
struct NextClaim {
    room: usize,
    default_limit: Option<u64>,
    tenant_limits: std::collections::BTreeMap<String, u64>,
}

/// The next claim of a worker of `max_jobs` slots that holds `held` leases (per tenant:
/// `per_tenant`) while claims under way may still fill `promised` slots; `None` when no
/// slot is free. Each limit counts the claims under way as if they leased only that
/// tenant's jobs, so the share holds whatever they return.
fn next_claim(
    max_jobs: usize,
    held: usize,
    promised: usize,
    per_tenant: &HashMap<Arc<str>, usize>,
) -> Option<NextClaim> {
    let room = max_jobs.saturating_sub(held + promised);
    if room == 0 {
        return None;
    }
    let share = tenant_share(max_jobs);
    let default_limit = (promised + room > share).then(|| share.saturating_sub(promised) as u64);
    let tenant_limits = per_tenant
        .iter()
        .filter(|(_, n)| *n + promised + room > share)
        .map(|(t, n)| (t.to_string(), share.saturating_sub(n + promised) as u64))
        .collect();
    Some(NextClaim {
        room,
        default_limit,
        tenant_limits,
    })
}

/// Whether a claim that leased jobs of `got` (one tenant per lease) with `room` free slots
/// and `caps` may have left claimable work behind: it filled its room, or some tenant
/// reached the most this claim could give it (its share of this worker, down to none), or
/// tenants have running caps (counted across workers, so a release anywhere may free
/// one). Otherwise the claim saw every job claimable for this worker, and a lease ending
/// here needs no claim of its own: new work announces itself (the store's hint), and the
/// polling fallback covers the rest.
fn may_leave_work(room: usize, got: &[Arc<str>], caps: &aetheris_store::RunningCaps) -> bool {
    if got.len() >= room || caps.default.is_some() || !caps.tenants.is_empty() {
        return true;
    }
    if caps.this_claim_default == Some(0) || caps.this_claim.values().any(|l| *l == 0) {
        return true;
    }
    let mut per: HashMap<&str, u64> = HashMap::new();
    for t in got {
        *per.entry(t).or_insert(0) += 1;
    }
    per.iter().any(|(t, n)| {
        caps.this_claim
            .get(*t)
            .copied()
            .or(caps.this_claim_default)
            .is_some_and(|limit| *n >= limit)
    })
}

/// A lease this worker holds.
struct Held {
    token: u64,
    tenant: Arc<str>,
}

pub struct LeaseManager {
    sh: WorkerContext,
    registry: RegistryPort,
    held: HashMap<JobId, Held>,
    /// Leases held per tenant (the counts of `held`).
    per_tenant: HashMap<Arc<str>, usize>,
    /// Claims sent and not yet answered, and the slots they may fill between them.
    claims_in_flight: usize,
    claimed_room: usize,
    claim_again: bool,
    /// The last claim may have left claimable work behind (`may_leave_work`): a lease
    /// ending here claims again at once. Without it, the next claim waits for the store's
    /// hint or the poll: at one job at a time that is one claim per job, not three.
    backlog: bool,
    /// Leases of stopped jobs not yet given back: released together, one store call at
    /// a time (one write for many jobs, not one each).
    to_release: Vec<(JobId, u64)>,
    releasing: bool,
    draining: bool,
    /// Leases given back (each in its own spawned release) since the drain began: the
    /// drain releases them once more, awaited, so none is still in flight when the process
    /// exits (re-releasing is a no-op: the release matches owner and token).
    released_in_drain: Vec<(JobId, u64)>,
    /// Local due times of jobs this worker parked.
    timers: std::collections::BTreeSet<i64>,
    /// The store's hand-off point, if it has one and this worker subscribed to it.
    handoff: Option<Arc<Handoff>>,
    /// Slots offered to submissions and not yet back (unused, or as leases): promised,
    /// like a claim's room.
    offered: usize,
}

impl LeaseManager {
    pub fn new(sh: WorkerContext, registry: RegistryPort) -> Self {
        LeaseManager {
            sh,
            registry,
            held: HashMap::new(),
            per_tenant: HashMap::new(),
            claims_in_flight: 0,
            claimed_room: 0,
            claim_again: false,
            backlog: true,
            to_release: Vec::new(),
            releasing: false,
            draining: false,
            released_in_drain: Vec::new(),
            timers: std::collections::BTreeSet::new(),
            handoff: None,
            offered: 0,
        }
    }

    /// What this worker can take now (by a claim or an offer): its free slots, less those
    /// promised to claims under way and to the offer.
    fn next_claim(&self) -> Option<NextClaim> {
        next_claim(
            self.sh.config.max_jobs,
            self.held.len(),
            self.claimed_room + self.offered,
            &self.per_tenant,
        )
    }

    /// Takes this worker's offer down (its unused slots are free again); returns whether
    /// a submission found it closed, i.e. claimable work is waiting.
    fn withdraw_offer(&mut self) -> bool {
        let Some(h) = &self.handoff else {
            return false;
        };
        let back = h.withdraw();
        debug_assert!(
            back.room <= self.offered,
            "offer room past the slots offered"
        );
        self.offered = self.offered.saturating_sub(back.room);
        back.closed
    }

    /// Offers the free slots to submissions, in place of the offer up, when a claim now
    /// would find nothing: not draining, no claim under way, the last one left no work
    /// behind, and no running caps (counted across workers: only a claim counts them).
    /// A closed offer means work is waiting: claim instead.
    fn offer_slots(&mut self, ctx: &mut Context<Self>) {
        if self.handoff.is_none() {
            return;
        }
        if self.withdraw_offer() {
            self.backlog = true;
            self.claim(ctx);
            return;
        }
        if self.draining || self.backlog || self.claims_in_flight > 0 {
            return;
        }
        if !self.sh.config.rate_limits.running_caps().is_unlimited() {
            return;
        }
        let Some(next) = self.next_claim() else {
            return;
        };
        if let Some(h) = &self.handoff {
            self.offered += next.room;
            h.offer(Offer {
                worker: self.sh.config.worker_id.clone(),
                ttl_ms: self.sh.config.lease_ttl_ms,
                room: next.room,
                default_limit: next.default_limit,
                tenant_limits: next.tenant_limits,
            });
        }
    }

    fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        // Slots offered to submissions come back first: the claim may fill them.
        if self.withdraw_offer() {
            self.backlog = true;
        }
        if self.claims_in_flight >= CLAIMS_IN_FLIGHT {
            self.claim_again = true;
            return;
        }
        let Some(next) = self.next_claim() else {
            // Slots promised to a claim in flight come back if it finds less work.
            self.claim_again |= self.claims_in_flight > 0;
            // No slot is free, yet work may be waiting (a hint, a timer or the poll asked
            // for this claim): the next slot to free up goes to a claim, never to a
            // hand-off that would overtake that work.
            self.backlog = true;
            return;
        };
        let room = next.room;
        self.claims_in_flight += 1;
        self.claimed_room += room;
        let store = self.sh.store.clone();
        let cfg = self.sh.config.clone();
        // Tenants' caps on running jobs are enforced by the store across all workers; the
        // store also keeps each tenant within what is left of its share of this worker.
        let mut caps = cfg.rate_limits.running_caps();
        caps.this_claim = next.tenant_limits;
        caps.this_claim_default = next.default_limit;
        let t0 = Instant::now();
        ctx.spawn(
            actix::fut::wrap_future(async move {
                let res = store
                    .claim_and_load(&cfg.worker_id, cfg.lease_ttl_ms, room, &caps)
                    .await;
                (res, caps)
            })
            .map(move |(res, caps), act: &mut LeaseManager, ctx| {
                metrics::histogram!(m::CLAIM_DURATION).record(t0.elapsed().as_secs_f64());
                act.claims_in_flight -= 1;
                act.claimed_room -= room;
                match res {
                    Ok(leases) => {
                        let full = leases.len() == room;
                        let got: Vec<Arc<str>> = leases
                            .iter()
                            .map(|(l, _)| Arc::from(l.tenant.as_str()))
                            .collect();
                        act.backlog = may_leave_work(room, &got, &caps);
                        for (l, preload) in leases {
                            metrics::counter!(m::LEASE_GRANTS).increment(1);
                            act.hold(l.job_id, l.token, &l.tenant);
                            act.registry
                                .run
                                .do_send(RunJob::new(l.job_id, l.token, preload));
                        }
                        if full || std::mem::take(&mut act.claim_again) {
                            act.claim(ctx);
                        } else {
                            act.offer_slots(ctx);
                        }
                    }
                    Err(e) => {
                        act.backlog = true;
                        tracing::warn!(error = %e, "claim failed")
                    }
                }
            }),
        );
    }

    /// Gives back every lease in `to_release` in one call, unless a call is in flight (its
    /// completion sends what queued meanwhile).
    fn release_pending(&mut self, ctx: &mut Context<Self>) {
        if self.releasing || self.to_release.is_empty() {
            return;
        }
        self.releasing = true;
        let leases = std::mem::take(&mut self.to_release);
        let store = self.sh.store.clone();
        let worker = self.sh.config.worker_id.clone();
        ctx.spawn(
            actix::fut::wrap_future(async move { store.release(&worker, &leases).await }).map(
                |res, act: &mut LeaseManager, ctx| {
                    act.releasing = false;
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "release failed; the leases will expire");
                    }
                    act.release_pending(ctx);
                },
            ),
        );
    }

    fn holds(&self, job: JobId, token: u64) -> bool {
        self.held.get(&job).is_some_and(|h| h.token == token)
    }

    fn hold(&mut self, job: JobId, token: u64, tenant: &str) {
        let tenant: Arc<str> = Arc::from(tenant);
        *self.per_tenant.entry(tenant.clone()).or_insert(0) += 1;
        supervision::leases_changed(1);
        if let Some(old) = self.held.insert(job, Held { token, tenant }) {
            self.count_out(&old.tenant);
        }
    }

    fn unhold(&mut self, job: JobId) {
        if let Some(old) = self.held.remove(&job) {
            self.count_out(&old.tenant);
        }
    }

    fn count_out(&mut self, tenant: &Arc<str>) {
        supervision::leases_changed(-1);
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.held.is_empty() {
            // Nothing to renew, so nothing can be lost: the figures say so.
            supervision::leases_fresh();
            return;
        }
        let sent: Vec<(JobId, u64)> = self.held.iter().map(|(j, h)| (*j, h.token)).collect();
        let store = self.sh.store.clone();
        let cfg = self.sh.config.clone();
        let t0 = Instant::now();
        ctx.spawn(
            actix::fut::wrap_future(async move {
                let r = store
                    .heartbeat(&cfg.worker_id, cfg.lease_ttl_ms, &sent)
                    .await;
                (sent, r)
            })
            .map(move |(sent, res), act: &mut LeaseManager, _| {
                metrics::histogram!(m::HEARTBEAT_DURATION).record(t0.elapsed().as_secs_f64());
                match res {
                    Ok(kept) => {
                        supervision::leases_fresh();
                        let kept: HashMap<JobId, u64> =
                            kept.into_iter().map(|l| (l.job_id, l.token)).collect();
                        for (job, token) in sent {
                            if kept.get(&job) != Some(&token) && act.holds(job, token) {
                                act.unhold(job);
                                metrics::counter!(m::LEASE_LOSSES, "reason" => "heartbeat")
                                    .increment(1);
                                act.registry.revoke.do_send(RevokeJob::new(job, token));
                            }
                        }
                    }
                    // The store is unreachable: keep going; if it stays down past the TTL,
                    // our appends are fenced and the actors stop on their own.
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }),
        );
    }
}

impl Actor for LeaseManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        supervision::started(ActorKind::LeaseManager);
        ctx.run_interval(Duration::from_millis(self.sh.config.poll_ms), |act, ctx| {
            act.claim(ctx)
        });
        ctx.run_interval(
            Duration::from_millis(self.sh.config.heartbeat_ms),
            |act, ctx| act.heartbeat(ctx),
        );
        ctx.run_interval(TIMER_TICK, |act, ctx| {
            let now = local_ms();
            if act.timers.first().is_some_and(|t| *t <= now) {
                act.timers = act.timers.split_off(&(now + 1));
                act.claim(ctx);
            }
        });
        let hint = self.sh.store.work_hint();
        let me = ctx.address();
        actix::spawn(async move {
            loop {
                hint.notified().await;
                // The claim this starts covers every hint fired so far, including the one
                // `fire` stores for the next wait when it wakes this one: take it now
                // instead of claiming twice for one hint.
                let _ = futures::FutureExt::now_or_never(hint.notified());
                if me
                    .send(ClaimNow {
                        _queued: Queued::new(ActorKind::LeaseManager),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        if let Some(h) = self.sh.store.handoff() {
            if let Some(rx) = h.subscribe() {
                self.handoff = Some(h);
                // Tied to this actor: the receiver goes when it stops, which frees the
                // store's hand-off point for a successor.
                ctx.add_stream(futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|h| (h, rx))
                }));
            }
        }
        self.claim(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.withdraw_offer();
        supervision::stopped(ActorKind::LeaseManager);
        supervision::leases_changed(-(self.held.len() as i64));
    }
}

impl Handler<WakeAt> for LeaseManager {
    type Result = ();
    fn handle(&mut self, m: WakeAt, _: &mut Context<Self>) {
        self.timers.insert(m.at_ms);
    }
}

impl Handler<ClaimNow> for LeaseManager {
    type Result = ();
    fn handle(&mut self, _: ClaimNow, ctx: &mut Context<Self>) {
        self.claim(ctx);
    }
}

/// Leases a submission batch stored for this worker's offer: held and run like a claim's
/// (each with its job's log), or given back at once while draining.
impl StreamHandler<HandedOff> for LeaseManager {
    fn handle(&mut self, handed: HandedOff, ctx: &mut Context<Self>) {
        debug_assert!(
            handed.slots <= self.offered,
            "hand-off of slots not offered"
        );
        self.offered = self.offered.saturating_sub(handed.slots);
        for (l, load) in handed.leases {
            metrics::counter!(m::LEASE_GRANTS).increment(1);
            metrics::counter!(m::LEASE_HANDOFFS).increment(1);
            if self.draining {
                self.released_in_drain.push((l.job_id, l.token));
                self.to_release.push((l.job_id, l.token));
                continue;
            }
            self.hold(l.job_id, l.token, &l.tenant);
            self.registry
                .run
                .do_send(RunJob::new(l.job_id, l.token, Some(load)));
        }
        self.release_pending(ctx);
        self.offer_slots(ctx);
    }

    /// The store's end of the channel never closes while the store lives; if it does,
    /// this worker claims only.
    fn finished(&mut self, _: &mut Context<Self>) {
        self.withdraw_offer();
        self.handoff = None;
    }
}

impl Handler<LeaseDone> for LeaseManager {
    type Result = ();
    fn handle(&mut self, m: LeaseDone, ctx: &mut Context<Self>) {
        if self.holds(m.job_id, m.token) {
            self.unhold(m.job_id);
        }
        if m.release {
            if self.draining {
                self.released_in_drain.push((m.job_id, m.token));
            }
            self.to_release.push((m.job_id, m.token));
            self.release_pending(ctx);
        }
        if self.backlog {
            self.claim(ctx);
        } else {
            self.offer_slots(ctx);
        }
    }
}

impl Handler<Drain> for LeaseManager {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, m: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        self.withdraw_offer();
        let registry = self.registry.clone();
        let deadline = Instant::now() + m.grace;
        Box::pin(
            actix::fut::wrap_future(async move {
                let _ = registry.drain.send(DrainAll::new()).await;
                // Job actors record in-flight calls, stop, and report; the registry then
                // sends LeaseDone (handled while we wait, since this future is not atomic).
                while Instant::now() < deadline {
                    match registry.active.send(ActiveCount::new()).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
            .then(|_, act: &mut LeaseManager, _| {
                act.per_tenant.clear();
                supervision::leases_changed(-(act.held.len() as i64));
                let mut rest: Vec<(JobId, u64)> =
                    act.held.drain().map(|(j, h)| (j, h.token)).collect();
                rest.append(&mut act.to_release);
                rest.append(&mut act.released_in_drain);
                let store = act.sh.store.clone();
                let worker = act.sh.config.worker_id.clone();
                actix::fut::wrap_future(async move {
                    if !rest.is_empty() {
                        if let Err(e) = store.release(&worker, &rest).await {
                            tracing::warn!(error = %e, "release on drain failed");
                        }
                    }
                })
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(v: &[(&str, usize)]) -> HashMap<Arc<str>, usize> {
        v.iter().map(|(t, n)| (Arc::from(*t), *n)).collect()
    }

    #[test]
    fn the_share_keeps_a_slot_free_from_eight_slots_up() {
        assert_eq!(tenant_share(1), 1);
        assert_eq!(tenant_share(7), 7);
        assert_eq!(tenant_share(8), 7);
        assert_eq!(tenant_share(64), 56);
        assert_eq!(tenant_share(256), 224);
    }

    #[test]
    fn a_claim_asks_only_for_unpromised_slots_within_each_share() {
        // Nothing held: the whole worker, no tenant past its share.
        let c = next_claim(8, 0, 0, &tenants(&[])).unwrap();
        assert_eq!((c.room, c.default_limit), (8, Some(7)));
        // Full, or the rest promised to a claim under way: no claim.
        assert_eq!(next_claim(8, 8, 0, &tenants(&[("a", 8)])), None);
        assert_eq!(next_claim(8, 6, 2, &tenants(&[("a", 6)])), None);
        // a holds 5 and a claim under way may bring 1 more: this one may add 1 of a.
        let c = next_claim(8, 5, 1, &tenants(&[("a", 5)])).unwrap();
        assert_eq!(c.room, 2);
        assert_eq!(c.tenant_limits.get("a"), Some(&1));
        assert_eq!(c.default_limit, None);
        // a at its share: none of a; others unlimited within the room.
        let c = next_claim(8, 7, 0, &tenants(&[("a", 7)])).unwrap();
        assert_eq!((c.room, c.tenant_limits.get("a")), (1, Some(&0)));
    }

    fn caps(default: Option<u64>, limits: &[(&str, u64)]) -> aetheris_store::RunningCaps {
        aetheris_store::RunningCaps {
            this_claim: limits.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
            this_claim_default: default,
            ..Default::default()
        }
    }

    fn got(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|t| Arc::from(*t)).collect()
    }

    /// A lease ending claims again only when the last claim may have left work behind.
    #[test]
    fn a_claim_leaves_work_behind_only_when_full_or_a_tenant_hit_its_limit() {
        // Fewer than asked, nobody at a limit: it saw everything claimable.
        assert!(!may_leave_work(64, &got(&[]), &caps(Some(56), &[])));
        assert!(!may_leave_work(
            64,
            &got(&["a"]),
            &caps(Some(56), &[("b", 3)])
        ));
        assert!(!may_leave_work(
            8,
            &got(&["a", "a"]),
            &caps(None, &[("a", 3)])
        ));
        // Full.
        assert!(may_leave_work(2, &got(&["a", "b"]), &caps(None, &[])));
        // A tenant got as many as this claim could give it (its own limit or the default).
        assert!(may_leave_work(
            8,
            &got(&["a", "a"]),
            &caps(None, &[("a", 2)])
        ));
        assert!(may_leave_work(
            8,
            &got(&["a", "b", "b"]),
            &caps(Some(2), &[("a", 5)])
        ));
        // A tenant at its share got nothing, whatever else came back: its jobs may wait.
        assert!(may_leave_work(8, &got(&[]), &caps(None, &[("a", 0)])));
        assert!(may_leave_work(8, &got(&["b"]), &caps(Some(0), &[("b", 4)])));
        // Running caps are counted across workers: a release elsewhere may free one.
        let mut capped = caps(None, &[]);
        capped.default = Some(10);
        assert!(may_leave_work(8, &got(&[]), &capped));
        capped.default = None;
        capped.tenants.insert("a".into(), 3);
        assert!(may_leave_work(8, &got(&[]), &capped));
    }

    /// Claims under way, answered in any order with any number of leases up to what each
    /// may take, never hold more than `max_jobs` nor a tenant more than its share.
    #[test]
    fn claims_under_way_never_overfill_the_worker_or_a_share() {
        const MAX: usize = 8;
        let share = tenant_share(MAX);
        // A small deterministic generator: the order of events varies, the bounds don't.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut per_tenant: HashMap<Arc<str>, usize> = HashMap::new();
        let mut in_flight: Vec<NextClaim> = Vec::new();
        for _ in 0..20_000 {
            let held: usize = per_tenant.values().sum();
            let promised: usize = in_flight.iter().map(|c| c.room).sum();
            match rand(3) {
                0 if in_flight.len() < CLAIMS_IN_FLIGHT => {
                    if let Some(c) = next_claim(MAX, held, promised, &per_tenant) {
                        in_flight.push(c);
                    }
                }
                1 if !in_flight.is_empty() => {
                    // The store answers one claim: leases of a (busy) and b, within limits.
                    let c = in_flight.remove(rand(in_flight.len()));
                    let mut left = rand(c.room + 1);
                    for t in ["a", "b"] {
                        let limit = c
                            .tenant_limits
                            .get(t)
                            .copied()
                            .or(c.default_limit)
                            .map_or(usize::MAX, |l| l as usize);
                        let n = left.min(limit);
                        *per_tenant.entry(Arc::from(t)).or_insert(0) += n;
                        left -= n;
                    }
                }
                _ => {
                    // A job finishes.
                    let busy: Vec<Arc<str>> = per_tenant
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(t, _)| t.clone())
                        .collect();
                    if !busy.is_empty() {
                        let t = &busy[rand(busy.len())];
                        if let Some(n) = per_tenant.get_mut(t) {
                            *n -= 1;
                        }
                    }
                }
            }
            let held: usize = per_tenant.values().sum();
            assert!(held <= MAX, "held {held} of {MAX}");
            for (t, n) in &per_tenant {
                assert!(*n <= share, "{t} holds {n}, share {share}");
            }
        }
    }
}
