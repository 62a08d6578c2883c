//! The one-statement append on PostgreSQL tried against what could break it: a process
//! writes a job it knows (its last append, or the claim that leased it) with a single
//! statement, planned against that knowledge. Here another process (a second `PgStore` on
//! the same database) moves the job on behind the first one's back — a new lease, or an
//! append under the same token — and the first one's next append must get exactly what
//! the locking transaction would give it: `Fenced`, `SeqConflict`, or success on the
//! current head, with nothing of a refused append written, the chain intact, and the
//! other appends of its batch written.

use aetheris_proof::checkpoint::job_leaf_hash;
use aetheris_runtime::{
    invocation_key, EffectClass, EventBody, JobId, LedgerStatus, Plan, RecordedEvent,
};
use aetheris_store::testing::pg_cluster;
use aetheris_store::{
    Append, JobLog, Lease, Leases, NewJob, PgStore, Scope, StoreError, TransparencyLog,
};
use serde_json::json;
use std::time::Duration;

const TENANT: &str = "one";
const HOUR_MS: u64 = 3_600_000;

async fn two_stores() -> (PgStore, PgStore) {
    let url = pg_cluster::fresh_database_url().await;
    let a = PgStore::connect(&url, 4).await.unwrap();
    a.migrate().await.unwrap();
    let b = PgStore::connect(&url, 4).await.unwrap();
    (a, b)
}

async fn submit(store: &PgStore) -> JobId {
    let plan: Plan = serde_json::from_value(json!({"steps": [
        {"id": "s0", "tool": "echo"}, {"id": "s1", "tool": "echo", "needs": ["s0"]}
    ]}))
    .unwrap();
    let job = NewJob {
        tenant: TENANT.into(),
        idempotency_key: None,
        plan,
        input: json!({}),
    };
    store.submit(job, None).await.unwrap().0.job_id
}

fn started(job: JobId, step: &str, token: u64) -> EventBody {
    EventBody::StepStarted {
        step: step.into(),
        attempt: 1,
        invocation_key: invocation_key(TENANT, job, step, 0),
        tool: "echo".into(),
        effect: EffectClass::SideEffect,
        fencing_token: token,
    }
}

fn succeeded(step: &str) -> EventBody {
    EventBody::StepSucceeded {
        step: step.into(),
        attempt: 1,
        output: json!({"ok": step}),
    }
}

fn append(job: JobId, token: u64, seq: u64, events: Vec<EventBody>) -> Append {
    Append {
        job_id: job,
        token,
        expected_last_seq: seq,
        events,
    }
}

/// Claims (with the load, as workers do) every claimable job, up to `max`.
async fn claim(store: &PgStore, worker: &str, ttl_ms: u64, max: usize) -> Vec<Lease> {
    store
        .claim_and_load(worker, ttl_ms, max, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|(l, _)| l)
        .collect()
}

/// The job's events, checked to form one unbroken chain from seq 1.
async fn chain(store: &PgStore, job: JobId) -> Vec<RecordedEvent> {
    let events = store
        .read_events(Scope::System, job, 0, 1_000)
        .await
        .unwrap();
    aetheris_proof::verify_chain(job, &events).expect("the stored chain verifies");
    events
}

fn kinds(events: &[RecordedEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.body.kind()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_job_is_written_in_one_statement_to_its_end() {
    let (a, _) = two_stores().await;
    let job = submit(&a).await;
    let lease = claim(&a, "a", HOUR_MS, 1).await.remove(0);
    let t = lease.token;
    let before = a.append_stats();
    let appends = [
        append(job, t, 1, vec![started(job, "s0", t)]),
        append(job, t, 2, vec![succeeded("s0"), started(job, "s1", t)]),
        append(
            job,
            t,
            4,
            vec![
                succeeded("s1"),
                EventBody::JobSucceeded {
                    output: json!({"done": true}),
                },
            ],
        ),
    ];
    let mut last = None;
    for a1 in appends {
        last = a.append(a1).await.unwrap().pop();
    }
    let stats = a.append_stats();
    assert_eq!(stats.transactions - before.transactions, 3);
    assert_eq!(
        stats.one_statement - before.one_statement,
        3,
        "a job this process claimed fresh needs no lock round trip, its end included"
    );
    let events = chain(&a, job).await;
    assert_eq!(events.len(), 6);
    // Each step's row was inserted when it started and updated when it succeeded.
    let ledger = a.ledger(Scope::System, job).await.unwrap();
    let rows: Vec<(&str, LedgerStatus, i64)> = ledger
        .iter()
        .map(|l| (l.step.as_str(), l.status, l.updated_at_ms))
        .collect();
    assert_eq!(
        rows,
        [
            ("s0", LedgerStatus::Succeeded, events[2].recorded_at_ms),
            ("s1", LedgerStatus::Succeeded, events[4].recorded_at_ms),
        ]
    );
    assert_eq!(
        events.last(),
        last.as_ref(),
        "the store returns what it stored"
    );
    // The finishing append's transparency leaf, computed in the statement.
    let leaves = a.log_leaves(TENANT, None).await.unwrap();
    let end = events.last().unwrap();
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[0].job_id, job);
    assert_eq!(leaves[0].leaf_hash, job_leaf_hash(job, end.seq, &end.hash));
    assert_eq!(leaves[0].appended_at_ms, end.recorded_at_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_in_a_batch_is_fenced_while_the_others_are_written() {
    let (a, b) = two_stores().await;
    let (j1, j2) = (submit(&a).await, submit(&a).await);
    let leases = claim(&a, "a", 200, 2).await;
    assert_eq!(leases.len(), 2);
    let token = |id| leases.iter().find(|l| l.job_id == id).unwrap().token;
    let (t1, t2) = (token(j1), token(j2));
    // Both now known to `a`, written together.
    let first = a
        .append_many(vec![
            append(j1, t1, 1, vec![started(j1, "s0", t1)]),
            append(j2, t2, 1, vec![started(j2, "s0", t2)]),
        ])
        .await
        .unwrap();
    assert!(first.iter().all(Result::is_ok));
    // `a`'s leases expire; `b` takes over j1 (the oldest claimable job) with a new token.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stolen = b
        .claim_within("b", HOUR_MS, 1, &Default::default())
        .await
        .unwrap();
    assert_eq!(stolen.len(), 1);
    assert_eq!(stolen[0].job_id, j1);
    let tb = stolen[0].token;
    assert!(tb > t1);

    let results = a
        .append_many(vec![
            append(j1, t1, 2, vec![succeeded("s0"), started(j1, "s1", t1)]),
            append(j2, t2, 2, vec![succeeded("s0"), started(j2, "s1", t2)]),
        ])
        .await
        .unwrap();
    match &results[0] {
        Err(StoreError::Fenced {
            presented, current, ..
        }) => assert_eq!((*presented, *current), (t1, tb)),
        other => panic!("a stale token must be fenced, got {other:?}"),
    }
    assert_eq!(results[1].as_ref().map(Vec::len).ok(), Some(2));
    assert_eq!(
        kinds(&chain(&a, j1).await),
        ["job_submitted", "step_started"]
    );
    assert_eq!(chain(&a, j2).await.len(), 4);

    // Still fenced the next time (what `a` knew of j1 is gone), and the new holder's
    // append lands on the head the stale one never moved.
    let again = a.append(append(j1, t1, 2, vec![succeeded("s0")])).await;
    assert!(matches!(again, Err(StoreError::Fenced { .. })), "{again:?}");
    b.append(append(j1, tb, 2, vec![succeeded("s0")]))
        .await
        .unwrap();
    assert_eq!(chain(&b, j1).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_moved_under_the_same_token_is_decided_under_lock() {
    let (a, b) = two_stores().await;
    let job = submit(&a).await;
    let t = claim(&a, "a", HOUR_MS, 1).await.remove(0).token;
    a.append(append(job, t, 1, vec![started(job, "s0", t)]))
        .await
        .unwrap();
    // Another process writes under the same token: `a`'s knowledge (seq 2) is stale,
    // although the token still matches.
    b.append(append(job, t, 2, vec![succeeded("s0")]))
        .await
        .unwrap();

    // Planned against seq 2 as `a` knows it: refused as the locked row says.
    let conflict = a
        .append(append(
            job,
            t,
            2,
            vec![succeeded("s0"), started(job, "s1", t)],
        ))
        .await;
    match conflict {
        Err(StoreError::SeqConflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (2, 3)),
        other => panic!("expected a seq conflict, got {other:?}"),
    }
    // An append the stale knowledge would refuse (its ledger says s0 is only started, and
    // its seq is 2) is decided on the current rows, and lands.
    let landed = a
        .append(append(job, t, 3, vec![started(job, "s1", t)]))
        .await
        .unwrap();
    assert_eq!(landed[0].seq, 4);
    // A step whose ledger row `a` never saw move is refused as illegal, not written.
    let illegal = a.append(append(job, t, 4, vec![succeeded("s0")])).await;
    assert!(
        matches!(illegal, Err(StoreError::Rejected(_))),
        "s0 already succeeded: {illegal:?}"
    );
    assert_eq!(
        kinds(&chain(&a, job).await),
        [
            "job_submitted",
            "step_started",
            "step_succeeded",
            "step_started"
        ]
    );
}
