//! The generic store conformance suite: the executable form of the `Store` contract
//! (DESIGN §2 G1, G3, G6, G7 and §5). Every backend (redb now, PostgreSQL next) runs these
//! same checks from its own integration test, so the backends cannot drift apart.
//!
//! Each check is a `pub async fn` taking a [`DynStore`] and panicking with a message that
//! names the broken guarantee. This module is test support compiled into the library so
//! that every backend's tests can share it; panicking asserts (and nothing else) are its
//! failure mode, which is why the crate's "no `unwrap()` outside tests" rule does not
//! apply here.
//!
//! Checks are independent and can share one store: each uses fresh tenants (a UUID in the
//! name) and fresh jobs. Checks whose outcome depends on *which* jobs are claimable first
//! park every claimable job left over from earlier checks under a long lease
//! ([`park_claimable`]), so they must run one at a time; [`run_all`] runs them in sequence.

use crate::{
    Append, AuditEntry, AuditFilter, AuditRecord, DynStore, JobSummary, Lease, ListFilter, NewJob,
    RunningCaps, Scope, StoreError,
};
use aetheris_runtime::{
    invocation_key, EffectClass, EventBody, JobId, JobState, JobStatus, LedgerStatus, Plan,
    RecordedEvent,
};
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::time::Duration;

/// A lease long enough to outlive the whole suite.
const HOUR_MS: u64 = 3_600_000;
/// The worker name under which leftover jobs are parked.
const PARKING: &str = "conformance-parking";

/// Runs every check, one after another, against one store.
pub async fn run_all(store: DynStore) {
    submit_creates_job_and_is_idempotent(store.clone()).await;
    seq_is_gap_free(store.clone()).await;
    stale_tokens_are_fenced(store.clone()).await;
    concurrent_claims_are_exclusive(store.clone()).await;
    leases_expire_release_and_heartbeat(store.clone()).await;
    claims_are_fair_across_tenants(store.clone()).await;
    ledger_follows_state_machine(store.clone()).await;
    outcome_unknown_parks_job(store.clone()).await;
    events_are_hash_chained(store.clone()).await;
    terminal_jobs_are_closed(store.clone()).await;
    snapshots_select_newest_at_or_below(store.clone()).await;
    load_job_reads_one_consistent_start(store.clone()).await;
    claim_and_load_preloads_only_what_load_job_would_read(store.clone()).await;
    reads_are_scoped_and_listing_pages(store.clone()).await;
    batch_appends_fail_alone(store.clone()).await;
    work_hint_fires_on_submit_and_release(store.clone()).await;
    commands_wake_waiting_jobs_and_are_fenced(store.clone()).await;
    audit_rows_commit_with_their_change(store.clone()).await;
    claims_respect_running_caps(store.clone()).await;
    users_are_per_tenant_data(store.clone()).await;
    live_processes_are_counted_per_kind(store.clone()).await;
    clock_and_size_are_sane(store).await;
}

// ---------------------------------------------------------------------------------------
// helpers

#[track_caller]
fn ok<T, E: Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("conformance: {what}: unexpected error {e:?}"),
    }
}

#[track_caller]
fn err<T: Debug>(r: crate::Result<T>, what: &str) -> StoreError {
    match r {
        Ok(v) => panic!("conformance: {what}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// A tenant name no other check (or earlier run on the same store) uses.
pub fn fresh_tenant(prefix: &str) -> String {
    format!("{prefix}-{}", JobId::new())
}

/// Steps `a` (echo, pure), `b` (http, side_effect, after a), `c` (http, side_effect).
pub fn sample_plan() -> Plan {
    ok(
        serde_json::from_value(json!({"steps": [
            {"id": "a", "tool": "echo", "args": {"text": "hi"}},
            {"id": "b", "tool": "http", "effect": "side_effect", "needs": ["a"],
             "args": {"method": "POST", "url": "http://127.0.0.1:9/refunds"}},
            {"id": "c", "tool": "http", "effect": "side_effect"}
        ]})),
        "sample plan must deserialize",
    )
}

fn new_job(tenant: &str, key: Option<&str>) -> NewJob {
    NewJob {
        tenant: tenant.to_string(),
        idempotency_key: key.map(str::to_string),
        plan: sample_plan(),
        input: json!({"order": "A-17"}),
    }
}

async fn submit(store: &DynStore, tenant: &str) -> JobSummary {
    let (s, created) = ok(store.submit(new_job(tenant, None), None).await, "submit");
    assert!(
        created,
        "conformance: a submit without a key must create a job"
    );
    s
}

fn started(
    tenant: &str,
    job: JobId,
    step: &str,
    attempt: u32,
    effect: EffectClass,
    token: u64,
) -> EventBody {
    EventBody::StepStarted {
        step: step.to_string(),
        attempt,
        invocation_key: invocation_key(tenant, job, step, 0),
        tool: if step == "a" { "echo" } else { "http" }.to_string(),
        effect,
        fencing_token: token,
    }
}

fn succeeded(step: &str, attempt: u32) -> EventBody {
    EventBody::StepSucceeded {
        step: step.to_string(),
        attempt,
        output: json!({"step": step, "ok": true}),
    }
}

fn append(job: JobId, token: u64, expected_last_seq: u64, events: Vec<EventBody>) -> Append {
    Append {
        job_id: job,
        token,
        expected_last_seq,
        events,
    }
}

async fn events(store: &DynStore, job: JobId) -> Vec<RecordedEvent> {
    ok(
        store.read_events(Scope::System, job, 0, 100_000).await,
        "read_events",
    )
}

async fn job(store: &DynStore, id: JobId) -> JobSummary {
    match ok(store.get_job(Scope::System, id).await, "get_job") {
        Some(s) => s,
        None => panic!("conformance: job {id} vanished"),
    }
}

/// Claims every claimable job under a lease longer than the suite, so a check that needs
/// to know exactly what is claimable starts from "nothing".
pub async fn park_claimable(store: &DynStore) {
    for _ in 0..1000 {
        if ok(store.claim(PARKING, HOUR_MS, 1000).await, "park claim").is_empty() {
            return;
        }
    }
    panic!("conformance: claim keeps returning jobs; leases are not being kept");
}

/// Leases `id` for an hour and records its pure step `a` started and succeeded.
async fn lease_and_run_a(store: &DynStore, tenant: &str, worker: &str, id: JobId) -> Lease {
    let l = lease_job(store, worker, HOUR_MS, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(tenant, id, "a", 1, EffectClass::Pure, l.token),
                    succeeded("a", 1),
                ],
            ))
            .await,
        "run a",
    );
    l
}

/// Claims `id` for `worker`, giving back any other job the claim picked up.
async fn lease_job(store: &DynStore, worker: &str, ttl_ms: u64, id: JobId) -> Lease {
    for _ in 0..100 {
        let leases = ok(store.claim(worker, ttl_ms, 1000).await, "claim");
        let others: Vec<(JobId, u64)> = leases
            .iter()
            .filter(|l| l.job_id != id)
            .map(|l| (l.job_id, l.token))
            .collect();
        ok(store.release(worker, &others).await, "release others");
        if let Some(l) = leases.into_iter().find(|l| l.job_id == id) {
            return l;
        }
        if others.is_empty() {
            break;
        }
    }
    panic!("conformance: runnable job {id} could not be claimed");
}

/// The stored log verifies (G7), folds (G5), and the projection row agrees with the fold.
async fn assert_consistent(store: &DynStore, id: JobId) -> Vec<RecordedEvent> {
    let evs = events(store, id).await;
    let head = match aetheris_proof::verify_chain(id, &evs) {
        Ok(h) => h,
        Err(e) => panic!("conformance: job {id}: hash chain broken: {e}"),
    };
    let state = match JobState::from_events(&evs) {
        Ok(Some(s)) => s,
        Ok(None) => panic!("conformance: job {id} has no events"),
        Err(e) => panic!("conformance: job {id}: stored log does not fold: {e}"),
    };
    let row = job(store, id).await;
    assert_eq!(
        row.last_seq, state.last_seq,
        "job {id}: projection last_seq"
    );
    assert_eq!(row.status, state.status, "job {id}: projection status");
    assert_eq!(state.last_hash, head, "job {id}: fold head hash");
    evs
}

// ---------------------------------------------------------------------------------------
// checks

/// Submit writes seq 1 `job_submitted` with status queued; (tenant, idempotency_key) is
/// unique per tenant, including under concurrent submits.
pub async fn submit_creates_job_and_is_idempotent(store: DynStore) {
    let tenant = fresh_tenant("submit");
    let other = fresh_tenant("submit-other");

    let (s, created) = ok(store.submit(new_job(&tenant, None), None).await, "submit");
    assert!(created, "a new job must be created");
    assert_eq!(s.tenant, tenant);
    assert_eq!(s.status, JobStatus::Queued, "a new job is queued");
    assert_eq!(s.last_seq, 1, "a new job is at seq 1");
    assert_eq!(s.idempotency_key, None);
    assert_eq!(
        job(&store, s.job_id).await,
        s,
        "get_job returns the submit summary"
    );
    let evs = assert_consistent(&store, s.job_id).await;
    assert_eq!(evs.len(), 1, "submit writes exactly one event");
    assert_eq!(evs[0].seq, 1);
    assert_eq!(evs[0].body.kind(), "job_submitted");
    assert_eq!(evs[0].prev_hash, aetheris_proof::GENESIS);
    assert_eq!(
        evs[0].body,
        EventBody::JobSubmitted {
            tenant: tenant.clone(),
            plan: sample_plan(),
            input: json!({"order": "A-17"}),
            idempotency_key: None,
        },
        "seq 1 records what was submitted"
    );

    let (k1, created) = ok(
        store.submit(new_job(&tenant, Some("k")), None).await,
        "submit k",
    );
    assert!(created);
    assert_eq!(k1.idempotency_key.as_deref(), Some("k"));
    let mut again = new_job(&tenant, Some("k"));
    again.input = json!({"order": "different"});
    let (k2, created) = ok(store.submit(again, None).await, "resubmit k");
    assert!(!created, "a repeated idempotency key must not create a job");
    assert_eq!(k2, k1, "a repeated idempotency key returns the same job");
    assert_eq!(
        events(&store, k1.job_id).await.len(),
        1,
        "a repeated submit writes nothing"
    );

    let (o, created) = ok(
        store.submit(new_job(&other, Some("k")), None).await,
        "submit other",
    );
    assert!(created, "the same key under another tenant is another job");
    assert_ne!(o.job_id, k1.job_id);
    assert_eq!(o.tenant, other);

    let s2 = submit(&store, &tenant).await;
    assert_ne!(
        s2.job_id, s.job_id,
        "submits without a key are distinct jobs"
    );

    // Concurrent submits with one key: exactly one creates.
    let (r1, r2, r3) = tokio::join!(
        store.submit(new_job(&tenant, Some("race")), None),
        store.submit(new_job(&tenant, Some("race")), None),
        store.submit(new_job(&tenant, Some("race")), None),
    );
    let rs = [ok(r1, "race 1"), ok(r2, "race 2"), ok(r3, "race 3")];
    assert_eq!(
        rs.iter().filter(|(_, c)| *c).count(),
        1,
        "concurrent submits with one key must create exactly one job"
    );
    assert!(
        rs.iter().all(|(j, _)| j.job_id == rs[0].0.job_id),
        "concurrent submits with one key must return one job"
    );

    let mine = ok(
        store
            .list_jobs(
                Scope::Tenant(&tenant),
                ListFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await,
        "list_jobs",
    );
    assert_eq!(mine.len(), 4, "tenant has 4 jobs (no key ×2, k, race)");
}

/// Appends get consecutive seqs; a stale or future `expected_last_seq` is a
/// `SeqConflict` and writes nothing.
pub async fn seq_is_gap_free(store: DynStore) {
    let tenant = fresh_tenant("seq");
    let s = submit(&store, &tenant).await;
    let id = s.job_id;
    let l = lease_job(&store, "seq-w", HOUR_MS, id).await;

    let one = ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![started(&tenant, id, "a", 1, EffectClass::Pure, l.token)],
            ))
            .await,
        "append 1",
    );
    assert_eq!(one.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(one[0].job_id, id);
    let two = ok(
        store
            .append(append(
                id,
                l.token,
                2,
                vec![
                    succeeded("a", 1),
                    started(&tenant, id, "c", 1, EffectClass::SideEffect, l.token),
                ],
            ))
            .await,
        "append 2",
    );
    assert_eq!(two.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(two[0].prev_hash, one[0].hash, "returned events are chained");
    assert_eq!(two[1].prev_hash, two[0].hash, "returned events are chained");
    let row = job(&store, id).await;
    assert_eq!(row.last_seq, 4);
    assert_eq!(
        row.status,
        JobStatus::Running,
        "a started step makes the job running"
    );

    for expected in [0, 1, 2, 3, 5, 99] {
        match err(
            store
                .append(append(id, l.token, expected, vec![succeeded("c", 1)]))
                .await,
            "append with wrong expected_last_seq",
        ) {
            StoreError::SeqConflict {
                job,
                expected: e,
                actual,
            } => {
                assert_eq!((job, e, actual), (id, expected, 4), "SeqConflict fields");
            }
            e => panic!("conformance: wrong expected_last_seq gave {e:?}, not SeqConflict"),
        }
    }
    let evs = assert_consistent(&store, id).await;
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "a SeqConflict writes nothing; seqs are gap-free"
    );
    assert_eq!(
        evs[1..],
        [one, two].concat()[..],
        "stored = returned events"
    );

    // read_events paging.
    let page = ok(store.read_events(Scope::System, id, 2, 1).await, "page");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    let tail = ok(store.read_events(Scope::System, id, 4, 10).await, "tail");
    assert!(tail.is_empty(), "nothing after the last seq");
    let none = ok(store.read_events(Scope::System, id, 0, 0).await, "limit 0");
    assert!(
        none.is_empty(),
        "read_events with limit 0 returns no events"
    );
    let missing = err(
        store.read_events(Scope::System, JobId::new(), 0, 10).await,
        "read_events of an unknown job",
    );
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");
    let unknown = err(
        store
            .append(append(JobId::new(), 1, 1, vec![succeeded("a", 1)]))
            .await,
        "append to an unknown job",
    );
    assert!(matches!(unknown, StoreError::NotFound(_)), "{unknown:?}");
}

/// G3: a claim bumps the fencing token; appends and snapshots under a stale (or made-up)
/// token are `Fenced` and write nothing; after the lease is taken over the new holder
/// writes and the old one cannot.
pub async fn stale_tokens_are_fenced(store: DynStore) {
    let tenant = fresh_tenant("fence");
    let s = submit(&store, &tenant).await;
    let id = s.job_id;

    let l1 = lease_job(&store, "fence-w1", 1, id).await;
    assert!(l1.token >= 1, "a claim must bump the token");
    assert_eq!(l1.tenant, tenant);
    ok(
        store
            .append(append(
                id,
                l1.token,
                1,
                vec![started(&tenant, id, "a", 1, EffectClass::Pure, l1.token)],
            ))
            .await,
        "append by the holder",
    );
    let forged = err(
        store
            .append(append(id, l1.token + 1, 2, vec![succeeded("a", 1)]))
            .await,
        "append under a token never granted",
    );
    assert!(matches!(forged, StoreError::Fenced { .. }), "{forged:?}");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let l2 = lease_job(&store, "fence-w2", HOUR_MS, id).await;
    assert!(
        l2.token > l1.token,
        "a new claim must bump the token ({} then {})",
        l1.token,
        l2.token
    );

    let before = events(&store, id).await;
    match err(
        store
            .append(append(id, l1.token, 2, vec![succeeded("a", 1)]))
            .await,
        "append under the stale token",
    ) {
        StoreError::Fenced {
            job,
            presented,
            current,
        } => assert_eq!((job, presented, current), (id, l1.token, l2.token)),
        e => panic!("conformance: stale append gave {e:?}, not Fenced"),
    }
    let snap = err(
        store.put_snapshot(id, l1.token, 2, b"stale".to_vec()).await,
        "snapshot under the stale token",
    );
    assert!(matches!(snap, StoreError::Fenced { .. }), "{snap:?}");
    assert_eq!(
        events(&store, id).await,
        before,
        "a fenced append writes nothing"
    );
    assert_eq!(
        ok(store.latest_snapshot(id, u64::MAX).await, "latest_snapshot"),
        None,
        "a fenced snapshot writes nothing"
    );
    let lost = ok(
        store
            .heartbeat("fence-w1", HOUR_MS, &[(id, l1.token)])
            .await,
        "heartbeat by the old holder",
    );
    assert!(lost.is_empty(), "the old holder's lease is gone: {lost:?}");

    ok(
        store
            .append(append(id, l2.token, 2, vec![succeeded("a", 1)]))
            .await,
        "append by the new holder",
    );
    ok(
        store.put_snapshot(id, l2.token, 3, b"s3".to_vec()).await,
        "snapshot by the new holder",
    );
    assert_eq!(
        ok(store.latest_snapshot(id, u64::MAX).await, "latest_snapshot"),
        Some((3, b"s3".to_vec()))
    );
    assert_consistent(&store, id).await;
}

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

/// The ledger state machine is enforced at append (G2): a side_effect step cannot start
/// twice without a result; an append containing an illegal move writes none of its
/// events; `ledger()` returns rows with their invocation keys.
pub async fn ledger_follows_state_machine(store: DynStore) {
    let tenant = fresh_tenant("ledger");
    let id = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "ledger-w", HOUR_MS, id).await;
    let key_b = invocation_key(&tenant, id, "b", 0);

    // Pure steps may start again; side_effect ones may not.
    let evs = ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(&tenant, id, "a", 1, EffectClass::Pure, l.token),
                    started(&tenant, id, "a", 2, EffectClass::Pure, l.token),
                    succeeded("a", 2),
                    started(&tenant, id, "b", 1, EffectClass::SideEffect, l.token),
                ],
            ))
            .await,
        "start a twice, finish it, start b",
    );
    assert_eq!(evs.last().map(|e| e.seq), Some(5));

    let rows = ok(store.ledger(Scope::Tenant(&tenant), id).await, "ledger");
    let b = rows.iter().find(|r| r.step == "b");
    let Some(b) = b else {
        panic!("conformance: ledger has no row for step b: {rows:?}")
    };
    assert_eq!(b.invocation_key, key_b);
    assert_eq!(b.status, LedgerStatus::Started);
    assert_eq!(b.effect, EffectClass::SideEffect);
    assert_eq!(b.attempt, 1);
    assert_eq!(b.job_id, id);
    let a = rows.iter().find(|r| r.step == "a");
    assert_eq!(a.map(|r| r.status), Some(LedgerStatus::Succeeded));
    assert_eq!(a.map(|r| r.attempt), Some(2));

    let before = events(&store, id).await;
    for (what, batch) in [
        (
            "side_effect step started twice",
            vec![started(
                &tenant,
                id,
                "b",
                2,
                EffectClass::SideEffect,
                l.token,
            )],
        ),
        (
            "a legal event followed by an illegal one",
            vec![
                started(&tenant, id, "c", 1, EffectClass::SideEffect, l.token),
                started(&tenant, id, "b", 2, EffectClass::SideEffect, l.token),
            ],
        ),
        ("result for a step never started", vec![succeeded("c", 1)]),
        (
            "restart of a succeeded step",
            vec![started(&tenant, id, "a", 3, EffectClass::Pure, l.token)],
        ),
        (
            "a second job_submitted",
            vec![EventBody::JobSubmitted {
                tenant: tenant.clone(),
                plan: sample_plan(),
                input: json!({}),
                idempotency_key: None,
            }],
        ),
    ] {
        let e = err(
            store.append(append(id, l.token, 5, batch)).await,
            &format!("append of {what}"),
        );
        assert!(
            matches!(e, StoreError::Rejected(_)),
            "{what}: expected Rejected, got {e:?}"
        );
    }
    assert_eq!(
        events(&store, id).await,
        before,
        "rejected appends write nothing"
    );
    assert_eq!(
        ok(store.ledger(Scope::System, id).await, "ledger"),
        rows,
        "rejected appends leave the ledger alone"
    );

    ok(
        store
            .append(append(id, l.token, 5, vec![succeeded("b", 1)]))
            .await,
        "b succeeded",
    );
    let rows = ok(store.ledger(Scope::System, id).await, "ledger");
    let b = rows.iter().find(|r| r.step == "b");
    assert_eq!(b.map(|r| r.status), Some(LedgerStatus::Succeeded));
    assert_eq!(
        b.map(|r| r.invocation_key.as_str()),
        Some(key_b.as_str()),
        "a result keeps the invocation key"
    );
    let denied = err(
        store.ledger(Scope::Tenant("someone-else"), id).await,
        "ledger for another tenant",
    );
    assert!(matches!(denied, StoreError::NotFound(_)), "{denied:?}");
    assert_consistent(&store, id).await;
}

/// A side_effect step with an unknown outcome makes the job wait for a human: status
/// waiting, not claimable, and the step cannot be started again.
pub async fn outcome_unknown_parks_job(store: DynStore) {
    let tenant = fresh_tenant("unknown");
    let id = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "unknown-w", 1, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(&tenant, id, "c", 1, EffectClass::SideEffect, l.token),
                    EventBody::StepOutcomeUnknown {
                        step: "c".into(),
                        attempt: 1,
                        reason: "worker lost its lease mid-call".into(),
                    },
                    // Nothing else can run: the worker parks the job for a human.
                    EventBody::JobParked { wake_at_ms: None },
                ],
            ))
            .await,
        "outcome unknown",
    );
    assert_eq!(job(&store, id).await.status, JobStatus::Waiting);
    let rows = ok(store.ledger(Scope::System, id).await, "ledger");
    assert_eq!(
        rows.iter().find(|r| r.step == "c").map(|r| r.status),
        Some(LedgerStatus::OutcomeUnknown)
    );
    let e = err(
        store
            .append(append(
                id,
                l.token,
                4,
                vec![started(
                    &tenant,
                    id,
                    "c",
                    2,
                    EffectClass::SideEffect,
                    l.token,
                )],
            ))
            .await,
        "restart after outcome_unknown",
    );
    assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
    // Even with its lease expired, a waiting job is not handed out.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..1000 {
        let got = ok(store.claim(PARKING, HOUR_MS, 1000).await, "claim");
        assert!(
            got.iter().all(|x| x.job_id != id),
            "a job waiting for a human must not be claimed: {got:?}"
        );
        if got.is_empty() {
            break;
        }
    }
    assert_consistent(&store, id).await;
}

/// G7: the stored log of several appends verifies with `verify_chain`, and paged reads
/// return the same events.
pub async fn events_are_hash_chained(store: DynStore) {
    let tenant = fresh_tenant("chain");
    let id = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "chain-w", HOUR_MS, id).await;
    let mut seq = 1;
    for batch in [
        vec![started(&tenant, id, "a", 1, EffectClass::Pure, l.token)],
        vec![
            succeeded("a", 1),
            started(&tenant, id, "b", 1, EffectClass::SideEffect, l.token),
        ],
        vec![succeeded("b", 1)],
        vec![
            started(&tenant, id, "c", 1, EffectClass::SideEffect, l.token),
            succeeded("c", 1),
            EventBody::JobSucceeded {
                output: json!({"refund": "done", "amount": 42}),
            },
        ],
    ] {
        let n = batch.len() as u64;
        ok(
            store.append(append(id, l.token, seq, batch)).await,
            "append",
        );
        seq += n;
    }
    let evs = assert_consistent(&store, id).await;
    assert_eq!(evs.len() as u64, seq);
    for w in evs.windows(2) {
        assert_eq!(
            w[1].prev_hash, w[0].hash,
            "seq {} links to its parent",
            w[1].seq
        );
        assert!(
            w[1].recorded_at_ms >= w[0].recorded_at_ms,
            "store time never runs backwards within a job"
        );
    }
    let mut paged = Vec::new();
    loop {
        let after = paged.last().map(|e: &RecordedEvent| e.seq).unwrap_or(0);
        let page = ok(store.read_events(Scope::System, id, after, 3).await, "page");
        assert!(page.len() <= 3, "read_events respects limit");
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, evs, "paged reads equal one full read");
    // The check must be able to see a tampered log.
    let mut bad = evs.clone();
    bad[2].body = succeeded("a", 9);
    assert!(aetheris_proof::verify_chain(id, &bad).is_err());
}

/// After a terminal event the job is closed: status projected, further appends rejected,
/// never claimable.
pub async fn terminal_jobs_are_closed(store: DynStore) {
    let tenant = fresh_tenant("terminal");
    let done = submit(&store, &tenant).await.job_id;
    let failed = submit(&store, &tenant).await.job_id;

    let l = lease_and_run_a(&store, &tenant, "terminal-w", done).await;
    let e = err(
        store
            .append(append(
                done,
                l.token,
                3,
                vec![
                    EventBody::JobSucceeded { output: json!(1) },
                    started(&tenant, done, "b", 1, EffectClass::SideEffect, l.token),
                ],
            ))
            .await,
        "event after a terminal event in one append",
    );
    assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
    assert_eq!(job(&store, done).await.status, JobStatus::Running);
    assert_eq!(job(&store, done).await.last_seq, 3, "nothing written");

    ok(
        store
            .append(append(
                done,
                l.token,
                3,
                vec![EventBody::JobSucceeded {
                    output: json!({"result": "ok"}),
                }],
            ))
            .await,
        "job succeeded",
    );
    let row = job(&store, done).await;
    assert_eq!(row.status, JobStatus::Succeeded);
    for (what, batch) in [
        (
            "a step after success",
            vec![started(
                &tenant,
                done,
                "b",
                1,
                EffectClass::SideEffect,
                l.token,
            )],
        ),
        (
            "a second terminal event",
            vec![EventBody::JobFailed {
                error: "late".into(),
                step: None,
            }],
        ),
    ] {
        let e = err(store.append(append(done, l.token, 4, batch)).await, what);
        assert!(matches!(e, StoreError::Rejected(_)), "{what}: {e:?}");
    }
    assert_eq!(
        job(&store, done).await,
        row,
        "rejected appends change nothing"
    );

    let l2 = lease_job(&store, "terminal-w", 1, failed).await;
    ok(
        store
            .append(append(
                failed,
                l2.token,
                1,
                vec![EventBody::JobFailed {
                    error: "plan rejected by policy".into(),
                    step: Some("b".into()),
                }],
            ))
            .await,
        "job failed",
    );
    assert_eq!(job(&store, failed).await.status, JobStatus::Failed);

    // Released or expired, neither terminal job is claimable.
    ok(
        store.release("terminal-w", &[(done, l.token)]).await,
        "release",
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..3 {
        let got = ok(store.claim("terminal-w2", HOUR_MS, 1000).await, "claim");
        assert!(
            got.iter().all(|x| x.job_id != done && x.job_id != failed),
            "a finished job must never be claimed: {got:?}"
        );
        if got.is_empty() {
            break;
        }
    }

    let counts = ok(store.count_by_status().await, "count_by_status");
    let mine: Vec<_> = counts.iter().filter(|c| c.tenant == tenant).collect();
    let count = |s: JobStatus| {
        mine.iter()
            .filter(|c| c.status == s)
            .map(|c| c.count)
            .sum::<u64>()
    };
    assert_eq!(count(JobStatus::Succeeded), 1, "{mine:?}");
    assert_eq!(count(JobStatus::Failed), 1, "{mine:?}");
    assert_eq!(mine.iter().map(|c| c.count).sum::<u64>(), 2, "{mine:?}");
    assert_consistent(&store, done).await;
    assert_consistent(&store, failed).await;
}

/// `latest_snapshot` returns the newest snapshot at or below `max_seq`; a snapshot beyond
/// the log is rejected.
pub async fn snapshots_select_newest_at_or_below(store: DynStore) {
    let tenant = fresh_tenant("snap");
    let id = submit(&store, &tenant).await.job_id;
    let other = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "snap-w", HOUR_MS, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(&tenant, id, "a", 1, EffectClass::Pure, l.token),
                    succeeded("a", 1),
                    started(&tenant, id, "b", 1, EffectClass::SideEffect, l.token),
                    succeeded("b", 1),
                ],
            ))
            .await,
        "append",
    );
    assert_eq!(
        ok(store.latest_snapshot(id, u64::MAX).await, "none yet"),
        None
    );
    for seq in [2u64, 4] {
        ok(
            store
                .put_snapshot(id, l.token, seq, format!("state@{seq}").into_bytes())
                .await,
            "put_snapshot",
        );
    }
    let want = |seq: u64| Some((seq, format!("state@{seq}").into_bytes()));
    for (max, expected) in [
        (0, None),
        (1, None),
        (2, want(2)),
        (3, want(2)),
        (4, want(4)),
        (5, want(4)),
        (u64::MAX, want(4)),
    ] {
        assert_eq!(
            ok(store.latest_snapshot(id, max).await, "latest_snapshot"),
            expected,
            "latest_snapshot(max_seq = {max})"
        );
    }
    let e = err(
        store.put_snapshot(id, l.token, 6, b"future".to_vec()).await,
        "snapshot beyond the log",
    );
    assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
    ok(
        store
            .put_snapshot(id, l.token, 5, b"state@5".to_vec())
            .await,
        "snapshot at the last seq",
    );
    assert_eq!(
        ok(store.latest_snapshot(id, u64::MAX).await, "latest"),
        want(5)
    );
    assert_eq!(
        ok(store.latest_snapshot(other, u64::MAX).await, "other job"),
        None,
        "snapshots belong to their job"
    );
    let e = err(
        store.put_snapshot(JobId::new(), 1, 1, b"x".to_vec()).await,
        "snapshot of an unknown job",
    );
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
}

/// `load_job` is the three reads a job actor starts from, in one call: the newest
/// snapshot, the events after it (up to the limit, in order, gap-free from the snapshot)
/// and the pending commands; the same answers as `latest_snapshot`, `read_events` and
/// `pending_commands` give one by one. An unknown job is `NotFound`.
pub async fn load_job_reads_one_consistent_start(store: DynStore) {
    let tenant = fresh_tenant("load");
    let id = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "load-w", HOUR_MS, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(&tenant, id, "a", 1, EffectClass::Pure, l.token),
                    succeeded("a", 1),
                    started(&tenant, id, "b", 1, EffectClass::Pure, l.token),
                    succeeded("b", 1),
                ],
            ))
            .await,
        "append",
    );
    let log = events(&store, id).await;
    assert_eq!(log.len(), 5);
    let load = ok(store.load_job(id, 100).await, "load_job without snapshot");
    assert_eq!(load.snapshot, None);
    assert_eq!(load.events, log, "without a snapshot: the whole log");
    assert!(load.commands.is_empty());

    ok(
        store
            .put_snapshot(id, l.token, 3, b"state@3".to_vec())
            .await,
        "put_snapshot",
    );
    let load = ok(store.load_job(id, 100).await, "load_job with snapshot");
    assert_eq!(load.snapshot, Some((3, b"state@3".to_vec())));
    assert_eq!(
        load.events,
        log[3..].to_vec(),
        "the events after the snapshot"
    );
    let load = ok(store.load_job(id, 1).await, "load_job, limit 1");
    assert_eq!(
        load.events,
        log[3..4].to_vec(),
        "at most the limit, oldest first"
    );

    let cmd = ok(
        store
            .put_command(
                Scope::Tenant(&tenant),
                id,
                crate::CommandBody::Cancel {
                    by: "ops".into(),
                    reason: "stop".into(),
                },
                None,
            )
            .await,
        "put command",
    );
    let load = ok(store.load_job(id, 100).await, "load_job with a command");
    assert_eq!(load.commands, vec![cmd.clone()]);
    assert_eq!(
        load.commands,
        ok(store.pending_commands(id).await, "pending_commands"),
        "the same commands as pending_commands"
    );
    ok(
        store.mark_commands_applied(id, l.token, &[cmd.id]).await,
        "mark applied",
    );
    let load = ok(store.load_job(id, 100).await, "load_job after applying");
    assert!(load.commands.is_empty(), "applied commands are not pending");

    ok(
        store
            .put_snapshot(id, l.token, 5, b"state@5".to_vec())
            .await,
        "snapshot at the last seq",
    );
    let load = ok(
        store.load_job(id, 100).await,
        "load_job, snapshot at the end",
    );
    assert_eq!(load.snapshot, Some((5, b"state@5".to_vec())));
    assert!(
        load.events.is_empty(),
        "nothing after a snapshot of the end"
    );

    let e = err(
        store.load_job(JobId::new(), 100).await,
        "load_job of an unknown job",
    );
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
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

/// G6: another tenant's scope sees nothing of a job (None / NotFound / absent from
/// lists); lists page newest first with a `before` cursor and filter by status.
pub async fn reads_are_scoped_and_listing_pages(store: DynStore) {
    let tenant = fresh_tenant("scope");
    let stranger = fresh_tenant("scope-other");
    let stranger_job = submit(&store, &stranger).await.job_id;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit(&store, &tenant).await.job_id);
    }
    let id = ids[0];

    let own = Scope::Tenant(&tenant);
    let other = Scope::Tenant(&stranger);
    assert!(ok(store.get_job(own, id).await, "own get").is_some());
    assert_eq!(ok(store.get_job(other, id).await, "other get"), None);
    assert!(ok(store.read_events(own, id, 0, 10).await, "own events").len() == 1);
    let e = err(store.read_events(other, id, 0, 10).await, "other events");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = err(store.ledger(other, id).await, "other ledger");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let all = |limit| ListFilter {
        limit,
        ..Default::default()
    };
    let theirs = ok(store.list_jobs(other, all(100)).await, "other list");
    assert_eq!(
        theirs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        vec![stranger_job],
        "a tenant lists only its own jobs"
    );
    let system = ok(
        store.list_jobs(Scope::System, all(100_000)).await,
        "system list",
    );
    assert!(system.iter().any(|j| j.job_id == id));
    assert!(system.iter().any(|j| j.job_id == stranger_job));

    // Pages, newest first.
    let mut expected = ids.clone();
    expected.sort();
    expected.reverse();
    let mut paged = Vec::new();
    let mut before = None;
    for _ in 0..10 {
        let page = ok(
            store
                .list_jobs(
                    own,
                    ListFilter {
                        before,
                        limit: 2,
                        status: None,
                    },
                )
                .await,
            "page",
        );
        assert!(page.len() <= 2, "list respects limit");
        let Some(last) = page.last() else { break };
        before = Some(last.job_id);
        paged.extend(page.iter().map(|j| j.job_id));
    }
    assert_eq!(paged, expected, "pages cover all jobs once, newest first");

    // Status filter.
    let l = lease_job(&store, "scope-w", HOUR_MS, ids[2]).await;
    ok(
        store
            .append(append(
                ids[2],
                l.token,
                1,
                vec![EventBody::JobSucceeded {
                    output: json!(null),
                }],
            ))
            .await,
        "finish one",
    );
    let by = |status| ListFilter {
        status: Some(status),
        before: None,
        limit: 100,
    };
    let done = ok(
        store.list_jobs(own, by(JobStatus::Succeeded)).await,
        "succeeded",
    );
    assert_eq!(
        done.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    assert_eq!(done[0].status, JobStatus::Succeeded);
    let queued = ok(store.list_jobs(own, by(JobStatus::Queued)).await, "queued");
    let mut want: Vec<_> = ids.iter().copied().filter(|j| *j != ids[2]).collect();
    want.sort();
    want.reverse();
    assert_eq!(queued.iter().map(|j| j.job_id).collect::<Vec<_>>(), want);
    assert!(
        ok(store.list_jobs(other, by(JobStatus::Succeeded)).await, "x").is_empty(),
        "status filter stays within the tenant"
    );
    let page = ok(
        store
            .list_jobs(
                own,
                ListFilter {
                    status: Some(JobStatus::Queued),
                    before: Some(want[1]),
                    limit: 100,
                },
            )
            .await,
        "filtered page",
    );
    assert_eq!(
        page.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        want[2..].to_vec(),
        "cursor and status filter combine"
    );
}

/// Group commit keeps each append's own fence and seq check: in one batch a good append
/// lands while a stale-token one is `Fenced`, a stale-seq one is a `SeqConflict` and an
/// unknown job is `NotFound`.
pub async fn batch_appends_fail_alone(store: DynStore) {
    let tenant = fresh_tenant("batch");
    let j1 = submit(&store, &tenant).await.job_id;
    let j2 = submit(&store, &tenant).await.job_id;
    let l1 = lease_job(&store, "batch-w", HOUR_MS, j1).await;
    let old = lease_job(&store, "batch-w", 1, j2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let l2 = lease_job(&store, "batch-w2", HOUR_MS, j2).await;
    assert!(l2.token > old.token);
    let before_j2 = events(&store, j2).await;

    let results = ok(
        store
            .append_many(vec![
                append(
                    j1,
                    l1.token,
                    1,
                    vec![started(&tenant, j1, "a", 1, EffectClass::Pure, l1.token)],
                ),
                append(
                    j2,
                    old.token,
                    1,
                    vec![started(&tenant, j2, "a", 1, EffectClass::Pure, old.token)],
                ),
                append(j1, l1.token, 1, vec![succeeded("a", 1)]),
                append(JobId::new(), 1, 1, vec![succeeded("a", 1)]),
                append(j1, l1.token, 2, vec![succeeded("a", 1)]),
            ])
            .await,
        "append_many",
    );
    assert_eq!(results.len(), 5, "one result per append, in order");
    let mut it = results.into_iter();
    let first = it.next().map(|r| ok(r, "good append"));
    assert_eq!(
        first.map(|v| v.iter().map(|e| e.seq).collect::<Vec<_>>()),
        Some(vec![2])
    );
    match it.next() {
        Some(Err(StoreError::Fenced { .. })) => {}
        r => panic!("conformance: stale-token append in a batch gave {r:?}, not Fenced"),
    }
    match it.next() {
        Some(Err(StoreError::SeqConflict {
            expected: 1,
            actual: 2,
            ..
        })) => {}
        r => panic!("conformance: stale-seq append in a batch gave {r:?}, not SeqConflict"),
    }
    match it.next() {
        Some(Err(StoreError::NotFound(_))) => {}
        r => panic!("conformance: append to an unknown job gave {r:?}, not NotFound"),
    }
    let last = it.next().map(|r| ok(r, "chained append"));
    assert_eq!(
        last.map(|v| v.iter().map(|e| e.seq).collect::<Vec<_>>()),
        Some(vec![3]),
        "a later append in a batch sees the earlier one"
    );
    assert_eq!(
        events(&store, j2).await,
        before_j2,
        "the fenced append wrote nothing"
    );
    assert_eq!(job(&store, j1).await.last_seq, 3);
    assert_consistent(&store, j1).await;
    assert_consistent(&store, j2).await;

    assert!(
        ok(store.append_many(vec![]).await, "empty batch").is_empty(),
        "an empty batch has no results"
    );
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

/// Commands: stored durably and scoped; a waiting job with a pending command becomes
/// claimable; marking applied is fenced; a finished job refuses commands (`Conflict`).
pub async fn commands_wake_waiting_jobs_and_are_fenced(store: DynStore) {
    let tenant = fresh_tenant("cmd");
    let id = submit(&store, &tenant).await.job_id;
    let l = lease_job(&store, "cmd-w", 1, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(&tenant, id, "c", 1, EffectClass::SideEffect, l.token),
                    EventBody::StepOutcomeUnknown {
                        step: "c".into(),
                        attempt: 1,
                        reason: "crash".into(),
                    },
                    EventBody::JobParked { wake_at_ms: None },
                ],
            ))
            .await,
        "park",
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    park_claimable(&store).await;
    let mut hints = store.command_hint();
    let other = err(
        store
            .put_command(
                Scope::Tenant("someone-else"),
                id,
                crate::CommandBody::Cancel {
                    by: "x".into(),
                    reason: "y".into(),
                },
                None,
            )
            .await,
        "foreign tenant command",
    );
    assert!(matches!(other, StoreError::NotFound(_)), "{other:?}");
    let cmd = ok(
        store
            .put_command(
                Scope::Tenant(&tenant),
                id,
                crate::CommandBody::Cancel {
                    by: "ops".into(),
                    reason: "stop".into(),
                },
                None,
            )
            .await,
        "put command",
    );
    let hinted = tokio::time::timeout(Duration::from_secs(5), hints.recv()).await;
    assert!(
        matches!(hinted, Ok(Ok(j)) if j == id),
        "command hint for {id}: {hinted:?}"
    );
    let pending = ok(store.pending_commands(id).await, "pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, cmd.id);
    // The waiting job is claimable now, so some worker applies the command.
    let got = ok(store.claim("cmd-w2", HOUR_MS, 1000).await, "claim");
    let lease = got.iter().find(|x| x.job_id == id).cloned();
    let lease = lease.unwrap_or_else(|| {
        panic!("a waiting job with a pending command must be claimable: {got:?}")
    });
    let stale = err(
        store.mark_commands_applied(id, l.token, &[cmd.id]).await,
        "stale mark",
    );
    assert!(matches!(stale, StoreError::Fenced { .. }), "{stale:?}");
    assert_eq!(ok(store.pending_commands(id).await, "pending").len(), 1);
    ok(
        store
            .append(append(
                id,
                lease.token,
                4,
                vec![EventBody::JobCancelled {
                    by: "ops".into(),
                    reason: "stop".into(),
                    command_id: cmd.id,
                }],
            ))
            .await,
        "cancel event",
    );
    ok(
        store
            .mark_commands_applied(id, lease.token, &[cmd.id])
            .await,
        "mark",
    );
    assert!(ok(store.pending_commands(id).await, "pending").is_empty());
    assert_eq!(job(&store, id).await.status, JobStatus::Cancelled);
    let late = err(
        store
            .put_command(
                Scope::System,
                id,
                crate::CommandBody::Cancel {
                    by: "ops".into(),
                    reason: "again".into(),
                },
                None,
            )
            .await,
        "command after the end",
    );
    assert!(matches!(late, StoreError::Conflict(_)), "{late:?}");
    assert_consistent(&store, id).await;
}

async fn audit_rows(store: &DynStore, scope: Scope<'_>) -> Vec<AuditRecord> {
    ok(
        store
            .list_audit(
                scope,
                AuditFilter {
                    after_id: 0,
                    limit: 10_000,
                    action: None,
                },
            )
            .await,
        "list_audit",
    )
}

/// Access audit rows (DESIGN G6, issue 5): a change made with an audit entry writes its
/// row in the same transaction, so the row exists exactly when the change committed — a
/// rejected change (wrong tenant, finished job, duplicate tenant, unknown tenant) leaves
/// none. Rows are read per tenant, oldest first, with paging and an action filter.
pub async fn audit_rows_commit_with_their_change(store: DynStore) {
    let tenant = fresh_tenant("audit");
    let other = fresh_tenant("audit-other");
    let who = |action: &str, target: &str| AuditEntry::ok(&tenant, "alice", action, target);

    let (job1, created) = ok(
        store
            .submit(new_job(&tenant, Some("k")), Some(&who("job.submit", "")))
            .await,
        "audited submit",
    );
    assert!(created);
    let (again, created) = ok(
        store
            .submit(new_job(&tenant, Some("k")), Some(&who("job.submit", "")))
            .await,
        "audited resubmit",
    );
    assert!(!created && again.job_id == job1.job_id);
    let id = job1.job_id;
    let cancel = |reason: &str| crate::CommandBody::Cancel {
        by: "alice".into(),
        reason: reason.into(),
    };
    ok(
        store
            .put_command(
                Scope::Tenant(&tenant),
                id,
                cancel("first"),
                Some(&who("job.cancel", &id.to_string())),
            )
            .await,
        "audited command",
    );
    let foreign = err(
        store
            .put_command(
                Scope::Tenant(&other),
                id,
                cancel("foreign"),
                Some(&AuditEntry::ok(
                    &other,
                    "mallory",
                    "job.cancel",
                    id.to_string(),
                )),
            )
            .await,
        "foreign command",
    );
    assert!(matches!(foreign, StoreError::NotFound(_)), "{foreign:?}");
    // Finish the job, then a command for it is rejected and leaves no row.
    let l = lease_job(&store, "audit-w", HOUR_MS, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![EventBody::JobCancelled {
                    by: "alice".into(),
                    reason: "first".into(),
                    command_id: 0,
                }],
            ))
            .await,
        "cancel event",
    );
    let late = err(
        store
            .put_command(
                Scope::Tenant(&tenant),
                id,
                cancel("late"),
                Some(&who("job.cancel", &id.to_string())),
            )
            .await,
        "command after the end",
    );
    assert!(matches!(late, StoreError::Conflict(_)), "{late:?}");

    let new_tenant = fresh_tenant("audit-new");
    ok(
        store
            .create_tenant(
                &new_tenant,
                "New",
                json!({}),
                Some(&who("tenant.create", &new_tenant)),
            )
            .await,
        "audited create tenant",
    );
    let dup = err(
        store
            .create_tenant(
                &new_tenant,
                "New",
                json!({}),
                Some(&who("tenant.create", &new_tenant)),
            )
            .await,
        "duplicate tenant",
    );
    assert!(matches!(dup, StoreError::Conflict(_)), "{dup:?}");
    let ghost = fresh_tenant("audit-ghost");
    err(
        store
            .set_tenant_limits(
                &ghost,
                json!({"admissions_per_s": 1.0}),
                Some(&who("tenant.set_limits", &ghost)),
            )
            .await,
        "limits of an unknown tenant",
    );
    ok(
        store
            .set_tenant_limits(
                &new_tenant,
                json!({"admissions_per_s": 1.0}),
                Some(&who("tenant.set_limits", &new_tenant)),
            )
            .await,
        "audited set limits",
    );
    let denied = AuditEntry {
        result: "denied".into(),
        ..who("evidence.export", &id.to_string())
    };
    ok(store.record_audit(&denied).await, "record denied");

    let rows = audit_rows(&store, Scope::Tenant(&tenant)).await;
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.entry.tenant, tenant);
            assert_eq!(r.entry.actor, "alice");
            assert!(r.at_ms > 0);
            (
                r.entry.action.as_str(),
                r.entry.target.as_str(),
                r.entry.result.as_str(),
            )
        })
        .collect();
    let id_s = id.to_string();
    assert_eq!(
        got,
        vec![
            ("job.submit", id_s.as_str(), "ok"),
            ("job.submit", id_s.as_str(), "existing"),
            ("job.cancel", id_s.as_str(), "ok"),
            ("tenant.create", new_tenant.as_str(), "ok"),
            ("tenant.set_limits", new_tenant.as_str(), "ok"),
            ("evidence.export", id_s.as_str(), "denied"),
        ],
        "audit rows: one per committed change, none for rejected ones"
    );
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(
        audit_rows(&store, Scope::Tenant(&other)).await.is_empty(),
        "a rejected foreign command leaves no row, and rows are scoped by tenant"
    );
    let all = audit_rows(&store, Scope::System).await;
    assert!(
        rows.iter().all(|r| all.contains(r)),
        "System sees every row"
    );
    let page = ok(
        store
            .list_audit(
                Scope::Tenant(&tenant),
                AuditFilter {
                    after_id: rows[1].id,
                    limit: 2,
                    action: None,
                },
            )
            .await,
        "audit page",
    );
    assert_eq!(page, rows[2..4].to_vec(), "paging by after_id and limit");
    let cancels = ok(
        store
            .list_audit(
                Scope::Tenant(&tenant),
                AuditFilter {
                    after_id: 0,
                    limit: 100,
                    action: Some("job.cancel".into()),
                },
            )
            .await,
        "audit by action",
    );
    assert_eq!(cancels, vec![rows[2].clone()], "action filter");
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

/// Users as data (issue 5): a user row belongs to an existing tenant, is replaced by a
/// second put (keeping its creation time), is listed and looked up only under its tenant,
/// and its audit row commits with it (none for a rejected put).
pub async fn users_are_per_tenant_data(store: DynStore) {
    let t = fresh_tenant("users");
    let other = fresh_tenant("users-other");
    for x in [&t, &other] {
        ok(store.create_tenant(x, x, json!({}), None).await, "tenant");
    }
    let who = |target: &str| AuditEntry::ok(&t, "root", "user.put", target);
    let u = ok(
        store
            .put_user(
                &t,
                "alice",
                vec!["viewer".into()],
                false,
                Some(&who("alice")),
            )
            .await,
        "put user",
    );
    assert_eq!((u.tenant.as_str(), u.id.as_str()), (t.as_str(), "alice"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let u2 = ok(
        store
            .put_user(
                &t,
                "alice",
                vec!["operator".into()],
                true,
                Some(&who("alice")),
            )
            .await,
        "replace user",
    );
    assert_eq!(u2.created_at_ms, u.created_at_ms, "creation time kept");
    assert!(u2.updated_at_ms >= u.updated_at_ms);
    assert_eq!(
        (u2.roles.clone(), u2.disabled),
        (vec!["operator".to_string()], true)
    );
    let ghost = fresh_tenant("users-ghost");
    err(
        store
            .put_user(
                &ghost,
                "bob",
                vec![],
                false,
                Some(&AuditEntry::ok(&ghost, "root", "user.put", "bob")),
            )
            .await,
        "user of an unknown tenant",
    );
    assert!(audit_rows(&store, Scope::Tenant(&ghost)).await.is_empty());
    assert_eq!(audit_rows(&store, Scope::Tenant(&t)).await.len(), 2);
    assert_eq!(ok(store.list_users(&t).await, "list"), vec![u2.clone()]);
    assert!(ok(store.list_users(&other).await, "list other").is_empty());
    let a = ok(store.access(&t, "alice").await, "access");
    assert!(a.tenant_exists);
    assert_eq!(a.user, Some(u2));
    let a = ok(store.access(&other, "alice").await, "access other");
    assert!(a.tenant_exists && a.user.is_none(), "users are per tenant");
    let a = ok(store.access(&ghost, "alice").await, "access ghost");
    assert!(!a.tenant_exists && a.user.is_none());
}

/// Live processes (for shares of global limits): counted per kind while announced, gone
/// at once when retired and by themselves when their announcement expires; a process
/// always counts itself.
pub async fn live_processes_are_counted_per_kind(store: DynStore) {
    use crate::ProcessKind::{Gateway, Worker};
    let w = |n: u32| format!("conformance-worker-{n}-{}", JobId::new());
    let (w1, w2, w3) = (w(1), w(2), w(3));
    let g1 = format!("conformance-gateway-{}", JobId::new());
    let announce = |kind, id: &str, ttl| {
        let (store, id) = (store.clone(), id.to_string());
        async move { ok(store.announce_process(kind, &id, ttl).await, "announce") }
    };
    // Earlier runs against the same database may have left live rows: count from here.
    let base = announce(Worker, &w1, HOUR_MS).await - 1;
    assert_eq!(
        announce(Worker, &w2, HOUR_MS).await,
        base + 2,
        "a second worker"
    );
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 2,
        "renewing counts once"
    );
    let gateways = announce(Gateway, &g1, HOUR_MS).await;
    assert!(gateways >= 1, "a gateway counts itself");
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 2,
        "gateways are not workers"
    );
    ok(store.retire_process(Worker, &w2).await, "retire");
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 1,
        "retired at once"
    );
    assert_eq!(
        announce(Worker, &w3, 1).await,
        base + 2,
        "a short announcement"
    );
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(
        announce(Worker, &w1, HOUR_MS).await,
        base + 1,
        "an expired announcement is not live"
    );
    ok(store.retire_process(Worker, &w1).await, "retire");
    ok(store.retire_process(Gateway, &g1).await, "retire");
    ok(
        store.retire_process(Worker, &w3).await,
        "retiring twice is harmless",
    );
}
