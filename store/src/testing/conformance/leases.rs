//! Conformance checks of leases: exclusive and fair claims, expiry, release and
//! heartbeats, running caps, preloads, timers of parked jobs, the wake-up hint and the
//! store clock.

use super::*;

/// Concurrent claims by different workers never hand out the same job, and a leased job
/// is not claimable again.
pub async fn concurrent_claims_are_exclusive(store: DynStore) {
    park_claimable(&store).await;
    let t1 = fresh_tenant("excl-1");
    let t2 = fresh_tenant("excl-2");
    let mut mine = BTreeSet::new();
    for i in 0..24 {
        let t = if i % 3 == 0 { &t2 } else { &t1 };
        mine.insert(submit(&store, t).await.job_id);
    }
    let mut seen: HashSet<JobId> = HashSet::new();
    for _ in 0..50 {
        let (a, b, c) = tokio::join!(
            store.claim("excl-w1", HOUR_MS, 3),
            store.claim("excl-w2", HOUR_MS, 3),
            store.claim("excl-w3", HOUR_MS, 3),
        );
        let batch = [ok(a, "claim w1"), ok(b, "claim w2"), ok(c, "claim w3")].concat();
        if batch.is_empty() && seen.len() == mine.len() {
            break;
        }
        for l in batch {
            assert!(mine.contains(&l.job_id), "claimed a job not submitted here");
            assert!(l.token >= 1);
            assert!(
                seen.insert(l.job_id),
                "job {} was handed to two claims",
                l.job_id
            );
        }
    }
    assert_eq!(
        seen.len(),
        mine.len(),
        "every runnable job gets claimed once"
    );
    let again = ok(store.claim("excl-w4", HOUR_MS, 100).await, "claim again");
    assert!(again.is_empty(), "leased jobs are not claimable: {again:?}");
}

/// A leased job stays unclaimable until its lease expires or its holder releases it;
/// release by anyone else does nothing; heartbeat renews only leases whose token and
/// owner match.
pub async fn leases_expire_release_and_heartbeat(store: DynStore) {
    park_claimable(&store).await;
    let tenant = fresh_tenant("lease");
    let id = submit(&store, &tenant).await.job_id;

    let l1 = ok(store.claim("lease-w1", HOUR_MS, 10).await, "claim w1");
    assert_eq!(l1.len(), 1, "only the new job is claimable: {l1:?}");
    let l1 = l1[0].clone();
    assert_eq!(l1.job_id, id);
    let now = ok(store.now_ms().await, "now");
    assert!(
        l1.expires_at_ms > now + (HOUR_MS as i64) / 2,
        "the lease lasts its ttl"
    );
    assert!(
        ok(store.claim("lease-w2", HOUR_MS, 10).await, "claim w2").is_empty(),
        "a leased job is not claimable"
    );

    ok(
        store.release("lease-w2", &[(id, l1.token)]).await,
        "release by non-holder",
    );
    ok(
        store.release("lease-w1", &[(id, l1.token + 7)]).await,
        "release wrong token",
    );
    assert!(
        ok(
            store.claim("lease-w2", HOUR_MS, 10).await,
            "claim after bad releases"
        )
        .is_empty(),
        "a release by a non-holder or with a wrong token must not free the lease"
    );

    ok(
        store.release("lease-w1", &[(id, l1.token)]).await,
        "release",
    );
    let l2 = ok(store.claim("lease-w2", 1, 10).await, "claim after release");
    assert_eq!(
        l2.iter().map(|l| l.job_id).collect::<Vec<_>>(),
        vec![id],
        "a released job is claimable at once"
    );
    let l2 = l2[0].clone();
    assert!(l2.token > l1.token);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let l3 = ok(
        store.claim("lease-w3", HOUR_MS, 10).await,
        "claim after expiry",
    );
    assert_eq!(
        l3.iter().map(|l| l.job_id).collect::<Vec<_>>(),
        vec![id],
        "an expired lease is claimable"
    );
    let l3 = l3[0].clone();
    assert!(l3.token > l2.token);

    for (who, token, why) in [
        ("lease-w2", l2.token, "the previous holder"),
        (
            "lease-w2",
            l3.token,
            "another worker with the current token",
        ),
        ("lease-w3", l2.token, "the holder with a stale token"),
    ] {
        let kept = ok(
            store.heartbeat(who, HOUR_MS, &[(id, token)]).await,
            "heartbeat",
        );
        assert!(
            kept.is_empty(),
            "heartbeat by {why} must keep nothing: {kept:?}"
        );
    }
    let kept = ok(
        store
            .heartbeat(
                "lease-w3",
                2 * HOUR_MS,
                &[(id, l3.token), (JobId::new(), 1)],
            )
            .await,
        "heartbeat by the holder",
    );
    assert_eq!(kept.len(), 1, "only the held lease is kept: {kept:?}");
    assert_eq!((kept[0].job_id, kept[0].token), (id, l3.token));
    assert_eq!(kept[0].tenant, tenant);
    assert!(
        kept[0].expires_at_ms >= l3.expires_at_ms,
        "heartbeat extends the lease"
    );

    // A heartbeat renews a short lease before it runs out.
    let id2 = submit(&store, &tenant).await.job_id;
    let short = ok(store.claim("lease-w4", 300, 10).await, "short claim");
    assert_eq!(
        short.iter().map(|l| l.job_id).collect::<Vec<_>>(),
        vec![id2]
    );
    let kept = ok(
        store
            .heartbeat("lease-w4", HOUR_MS, &[(id2, short[0].token)])
            .await,
        "renew",
    );
    assert_eq!(kept.len(), 1, "a live lease is renewed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        ok(store.claim("lease-w5", HOUR_MS, 10).await, "claim renewed").is_empty(),
        "a renewed lease must not expire at its original ttl"
    );
}

/// Tenant B's two jobs are not starved by tenant A's fifty.
pub async fn claims_are_fair_across_tenants(store: DynStore) {
    park_claimable(&store).await;
    let a = fresh_tenant("fair-a");
    let b = fresh_tenant("fair-b");
    for _ in 0..50 {
        submit(&store, &a).await;
    }
    for _ in 0..2 {
        submit(&store, &b).await;
    }
    let got = ok(store.claim("fair-w", HOUR_MS, 4).await, "claim 4");
    assert_eq!(got.len(), 4, "52 runnable jobs fill a claim of 4");
    let from_b = got.iter().filter(|l| l.tenant == b).count();
    assert!(
        from_b >= 1,
        "a claim of 4 must include tenant B despite A's backlog: {got:?}"
    );
    assert!(got.iter().all(|l| l.tenant == a || l.tenant == b));
    // Claims with room for one job take turns between tenants: the round robin starts
    // after the tenant the previous claim served, not at the lowest tenant id (A's id
    // sorts first here, so a fixed start would serve only A).
    for _ in 0..2 {
        submit(&store, &b).await;
    }
    let ones: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let got = ok(store.claim("fair-w1", HOUR_MS, 1).await, "claim 1");
            assert_eq!(got.len(), 1, "a claim of 1 with work left");
            v.push(got[0].tenant.clone());
        }
        v
    };
    assert!(
        ones.windows(2).all(|w| w[0] != w[1]),
        "claims of one job must alternate between A and B: {ones:?}"
    );
    park_claimable(&store).await;
}

/// `claim_and_load` grants the same leases as a claim, and a load it returns with a lease
/// is exactly what `load_job` reads at that moment (the whole log, the pending commands):
/// never a stale or partial one. Returns the loads, so a store that preloads can check
/// that it does.
pub async fn claim_and_load_preloads_only_what_load_job_would_read(
    store: DynStore,
) -> Vec<(Lease, Option<crate::JobLoad>)> {
    park_claimable(&store).await;
    let tenant = fresh_tenant("preload");
    let fresh = submit(&store, &tenant).await.job_id;
    let with_command = submit(&store, &tenant).await.job_id;
    ok(
        store
            .put_command(
                Scope::Tenant(&tenant),
                with_command,
                crate::CommandBody::Cancel {
                    by: "ops".into(),
                    reason: "stop".into(),
                },
                None,
            )
            .await,
        "put command",
    );
    // A job with a longer log, given back and claimed again.
    let longer = submit(&store, &tenant).await.job_id;
    let l = lease_and_run_a(&store, &tenant, "preload-w", longer).await;
    ok(
        store.release("preload-w", &[(longer, l.token)]).await,
        "release",
    );

    let claimed = ok(
        store
            .claim_and_load("preload-w", HOUR_MS, 100, &RunningCaps::default())
            .await,
        "claim_and_load",
    );
    let ids: BTreeSet<JobId> = claimed.iter().map(|(l, _)| l.job_id).collect();
    assert_eq!(
        ids,
        BTreeSet::from([fresh, with_command, longer]),
        "claim_and_load leases what a claim would"
    );
    for (lease, load) in &claimed {
        assert_eq!(lease.tenant, tenant);
        if let Some(load) = load {
            let read = ok(store.load_job(lease.job_id, 10_000).await, "load_job");
            let log = events(&store, lease.job_id).await;
            assert_eq!(
                load.events, log,
                "a preload is the whole log of {}",
                lease.job_id
            );
            assert_eq!(load.commands, read.commands, "and its pending commands");
        }
    }
    claimed
}

/// The work hint fires when new work may be claimable.
pub async fn work_hint_fires_on_submit_and_release(store: DynStore) {
    let tenant = fresh_tenant("hint");
    let hint = store.work_hint();
    let woken = hint.notified();
    let id = submit(&store, &tenant).await.job_id;
    assert!(
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .is_ok(),
        "submit must fire the work hint"
    );
    let l = lease_job(&store, "hint-w", HOUR_MS, id).await;
    let woken = hint.notified();
    ok(store.release("hint-w", &[(id, l.token)]).await, "release");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .is_ok(),
        "release must fire the work hint"
    );
    park_claimable(&store).await;
}

/// The store clock is plausible and monotonic, events are stamped by it, and the store
/// reports its size.
pub async fn clock_and_size_are_sane(store: DynStore) {
    let t0 = ok(store.now_ms().await, "now_ms");
    assert!(t0 > 1_600_000_000_000, "now_ms is ms since the epoch: {t0}");
    let tenant = fresh_tenant("clock");
    let s = submit(&store, &tenant).await;
    let t1 = ok(store.now_ms().await, "now_ms");
    assert!(t1 >= t0, "the store clock does not run backwards");
    assert!(
        s.created_at_ms >= t0 - 1000 && s.created_at_ms <= t1 + 1000,
        "created_at comes from the store clock ({t0} ≤ {} ≤ {t1})",
        s.created_at_ms
    );
    let evs = events(&store, s.job_id).await;
    assert_eq!(evs[0].recorded_at_ms, s.created_at_ms);
    assert!(ok(store.size_bytes().await, "size_bytes") > 0);
}

/// Per-tenant caps on running jobs hold across workers (issue 5): concurrent claims by
/// several workers never lease more of a tenant's jobs than its cap; a release or an
/// expired lease frees a slot; uncapped claims are unaffected. A per-claim limit (a
/// worker's share) bounds one claim only.
pub async fn claims_respect_running_caps(store: DynStore) {
    park_claimable(&store).await;
    let a = fresh_tenant("cap-a");
    let b = fresh_tenant("cap-b");
    for _ in 0..6 {
        submit(&store, &a).await;
        submit(&store, &b).await;
    }
    let caps = RunningCaps {
        default: Some(3),
        tenants: [(a.clone(), 2)].into_iter().collect(),
        ..Default::default()
    };
    let count = |ls: &[Lease], t: &str| ls.iter().filter(|l| l.tenant == t).count();
    // Four workers claim at once.
    let claims: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            let caps = caps.clone();
            tokio::spawn(async move {
                store
                    .claim_within(&format!("cap-w{i}"), 300, 100, &caps)
                    .await
            })
        })
        .collect();
    let mut all: Vec<Lease> = Vec::new();
    for (i, c) in claims.into_iter().enumerate() {
        let mut got = ok(ok(c.await, "claim task"), "concurrent capped claim");
        let mine = got
            .iter()
            .filter(|l| l.tenant == a || l.tenant == b)
            .count();
        assert_eq!(mine, got.len(), "worker {i} claimed another tenant's job");
        all.append(&mut got);
    }
    assert_eq!(count(&all, &a), 2, "tenant a is capped at 2: {all:?}");
    assert_eq!(
        count(&all, &b),
        3,
        "tenant b gets the default cap 3: {all:?}"
    );
    let more = ok(
        store.claim_within("cap-w9", HOUR_MS, 100, &caps).await,
        "claim at the cap",
    );
    assert!(more.is_empty(), "no slot left: {more:?}");
    // A release frees exactly one slot.
    let first_a = all.iter().find(|l| l.tenant == a).cloned();
    let Some(first_a) = first_a else {
        panic!("conformance: tenant a got no lease: {all:?}")
    };
    // `Lease` does not name its worker: release under each name (only the owner's counts).
    for i in 0..4 {
        ok(
            store
                .release(&format!("cap-w{i}"), &[(first_a.job_id, first_a.token)])
                .await,
            "release",
        );
    }
    let after_release = ok(
        store.claim_within("cap-w9", HOUR_MS, 100, &caps).await,
        "claim after a release",
    );
    assert_eq!(
        (count(&after_release, &a), count(&after_release, &b)),
        (1, 0),
        "one slot of a freed: {after_release:?}"
    );
    // The first leases (300 ms) expire: their slots free up for other workers.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after_expiry = ok(
        store.claim_within("cap-w10", HOUR_MS, 100, &caps).await,
        "claim after expiry",
    );
    assert_eq!(
        (count(&after_expiry, &a), count(&after_expiry, &b)),
        (1, 3),
        "expired leases do not count: {after_expiry:?}"
    );
    // Without caps the rest is claimable at once.
    let rest = ok(store.claim("cap-w11", HOUR_MS, 100).await, "uncapped claim");
    assert_eq!((count(&rest, &a), count(&rest, &b)), (4, 3), "{rest:?}");
    park_claimable(&store).await;

    // A limit for this claim only (a worker's share left): no counting, no cap across
    // workers; 0 skips the tenant, a tenant without an entry is not limited.
    for _ in 0..4 {
        submit(&store, &a).await;
        submit(&store, &b).await;
    }
    let share = |a_left: u64| RunningCaps {
        this_claim: [(a.clone(), a_left)].into_iter().collect(),
        ..Default::default()
    };
    // Claims up to `max` under `caps`: how many of a's and of b's jobs it leased.
    let claimed = |max: usize, caps: RunningCaps, what: &'static str| {
        let store = store.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            let got = ok(
                store.claim_within("share-w", HOUR_MS, max, &caps).await,
                what,
            );
            (count(&got, &a), count(&got, &b))
        }
    };
    assert_eq!(
        claimed(3, share(0), "claim with a's share used up").await,
        (0, 3),
        "a share of 0 skips tenant a"
    );
    assert_eq!(
        claimed(100, share(1), "claim with one of a's share left").await,
        (1, 1)
    );
    assert_eq!(
        claimed(100, share(1), "the limit is per claim").await,
        (1, 0)
    );
    park_claimable(&store).await;
    // The default limit covers every tenant without an entry of its own.
    for _ in 0..3 {
        submit(&store, &a).await;
        submit(&store, &b).await;
    }
    let by_default = RunningCaps {
        this_claim: [(b.clone(), 2)].into_iter().collect(),
        this_claim_default: Some(1),
        ..Default::default()
    };
    assert_eq!(
        claimed(100, by_default, "claim with a default limit").await,
        (1, 2)
    );
    park_claimable(&store).await;
}

/// Timers of parked jobs (the planner's `TimerChange`, applied by every store): a job parked
/// with a wake-up time is not claimable before it and is once it is due; a job that is not
/// waiting has no timer — neither one that finished after its timer fired, nor one parked
/// and finished in the same append — so neither is ever claimed again.
pub async fn parked_jobs_wake_when_due_and_finished_ones_never(store: DynStore) {
    const WAIT_MS: i64 = 1_500;
    park_claimable(&store).await;
    let tenant = fresh_tenant("timers");
    let first = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "w-timer", HOUR_MS, first).await;
    let wake = ok(store.now_ms().await, "now_ms") + WAIT_MS;
    let park = EventBody::JobParked {
        wake_at_ms: Some(wake),
    };
    ok(
        store.append(append(first, l.token, 1, vec![park])).await,
        "park with a timer",
    );
    ok(
        store.release("w-timer", &[(first, l.token)]).await,
        "release",
    );
    let early = ok(store.claim("w-timer", HOUR_MS, 10).await, "early claim");
    if ok(store.now_ms().await, "now_ms") < wake {
        assert!(
            early.iter().all(|x| x.job_id != first),
            "a parked job is claimable before its timer is due"
        );
    }
    ok(
        store.release("w-timer", &held(&early)).await,
        "release early",
    );
    let woken = claim_when_due(&store, first, wake).await;

    // It finishes: no timer is left to fire again.
    ok(
        store
            .append(append(
                first,
                woken.token,
                2,
                vec![
                    started(&tenant, first, "a", 1, EffectClass::Pure, woken.token),
                    succeeded("a", 1),
                    EventBody::JobSucceeded { output: json!(1) },
                ],
            ))
            .await,
        "finish after waking",
    );
    ok(
        store.release("w-timer", &[(first, woken.token)]).await,
        "release",
    );

    // Parked and finished in one append: not waiting, so no timer either.
    let second = submit(&store, &tenant).await.job_id;
    let l2 = lease_job(&store, "w-timer", HOUR_MS, second).await;
    let soon = ok(store.now_ms().await, "now_ms") + 100;
    ok(
        store
            .append(append(
                second,
                l2.token,
                1,
                vec![
                    EventBody::JobParked {
                        wake_at_ms: Some(soon),
                    },
                    EventBody::JobSucceeded { output: json!(2) },
                ],
            ))
            .await,
        "park and finish",
    );
    ok(
        store.release("w-timer", &[(second, l2.token)]).await,
        "release",
    );
    while ok(store.now_ms().await, "now_ms") <= soon + 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let got = ok(store.claim("w-timer", HOUR_MS, 100).await, "late claim");
        assert!(
            got.iter().all(|x| x.job_id != first && x.job_id != second),
            "a finished job was claimed: its timer outlived its wait"
        );
        ok(store.release("w-timer", &held(&got)).await, "release");
    }
}

/// An append that finishes its job gives the lease back in its own transaction: the
/// holder's heartbeat then reports the job finished (returned, expiry 0) rather than lost,
/// a release is not needed (and changes nothing), and nobody can claim the job. Before
/// the finish the same heartbeat renews the lease as usual.
pub async fn a_finishing_append_gives_the_lease_back(store: DynStore) {
    park_claimable(&store).await;
    let tenant = fresh_tenant("finish-lease");
    let id = submit(&store, &tenant).await.job_id;
    let l = lease_and_run_a(&store, &tenant, "fin-w", id).await;
    let now = ok(store.now_ms().await, "now_ms");
    let kept = ok(
        store.heartbeat("fin-w", HOUR_MS, &[(id, l.token)]).await,
        "heartbeat while running",
    );
    assert_eq!(kept.len(), 1, "a running job's lease is renewed: {kept:?}");
    assert!(kept[0].expires_at_ms > now, "renewed for its ttl: {kept:?}");

    ok(
        store
            .append(append(
                id,
                l.token,
                3,
                vec![EventBody::JobSucceeded { output: json!(3) }],
            ))
            .await,
        "finish",
    );
    let kept = ok(
        store.heartbeat("fin-w", HOUR_MS, &[(id, l.token)]).await,
        "heartbeat after the finish",
    );
    assert_eq!(
        kept.iter()
            .map(|k| (k.job_id, k.token, k.expires_at_ms))
            .collect::<Vec<_>>(),
        vec![(id, l.token, 0)],
        "the holder's heartbeat reports the finished job (not lost), with no expiry"
    );
    assert!(
        ok(
            store
                .heartbeat("fin-w", HOUR_MS, &[(id, l.token + 1)])
                .await,
            "heartbeat with another token"
        )
        .is_empty(),
        "another token's heartbeat keeps nothing"
    );
    ok(
        store.release("fin-w", &[(id, l.token)]).await,
        "release after the finish",
    );
    for w in ["fin-w", "fin-w2"] {
        let got = ok(store.claim(w, HOUR_MS, 100).await, "claim");
        assert!(
            got.iter().all(|x| x.job_id != id),
            "a finished job was claimed"
        );
        ok(store.release(w, &held(&got)).await, "release");
    }
    assert_eq!(job(&store, id).await.status, JobStatus::Succeeded);
}

fn held(leases: &[Lease]) -> Vec<(JobId, u64)> {
    leases.iter().map(|l| (l.job_id, l.token)).collect()
}

/// Claims `job` once the store clock passes `wake` (giving back anything else claimed),
/// within ten seconds of it.
async fn claim_when_due(store: &DynStore, job: JobId, wake: i64) -> Lease {
    loop {
        let now = ok(store.now_ms().await, "now_ms");
        let got = ok(store.claim("w-timer", HOUR_MS, 100).await, "claim when due");
        let (mine, others): (Vec<Lease>, Vec<Lease>) =
            got.into_iter().partition(|x| x.job_id == job);
        ok(
            store.release("w-timer", &held(&others)).await,
            "release others",
        );
        if let Some(l) = mine.into_iter().next() {
            return l;
        }
        assert!(
            now < wake + 10_000,
            "conformance: a parked job was not claimable 10 s after its timer was due"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
