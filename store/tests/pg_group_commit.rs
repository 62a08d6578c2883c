//! Group commit across jobs on PostgreSQL: single `Store::append` calls from many jobs at
//! once go through `PgStore`'s batcher and share transactions, and every one of them must
//! still get exactly what a lone append would get: its own fence check, its own gap-free
//! seq check, its own ledger validation, and on failure nothing written while the others
//! of the same transaction commit. Rounds are released together by a barrier so that the
//! appends really queue up behind each other; the test checks outcomes only, never timing.

use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobId, LedgerStatus, Plan};
use aetheris_store::testing::pg_cluster;
use aetheris_store::{Append, JobLog, Leases, NewJob, PgStore, Scope, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

const TENANT: &str = "group";
const ROUNDS: usize = 12;

fn plan() -> Plan {
    let steps: Vec<_> = (0..ROUNDS)
        .map(|i| json!({"id": format!("s{i}"), "tool": "echo"}))
        .collect();
    serde_json::from_value(json!({ "steps": steps })).unwrap()
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

/// What one job's task does in every round.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    /// Appends `succeeded(prev) + started(this)` like a job actor: must always land.
    Good,
    /// Holds a token that a newer lease replaced: always `Fenced`, writes nothing.
    Stale,
    /// Like `Good`, but first sends an append with a wrong expected seq each round
    /// (`SeqConflict`) and one that breaks the ledger (`Rejected`), both writing nothing.
    Clumsy,
    /// Two tasks race on this job with the same token and seq each round: exactly one
    /// append per round lands, the other gets `SeqConflict`.
    Raced,
}

fn role(i: usize) -> Role {
    match i % 4 {
        0 => Role::Stale,
        1 => Role::Clumsy,
        2 => Role::Raced,
        _ => Role::Good,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_appends_share_commits_and_keep_every_check() {
    let url = pg_cluster::fresh_database_url().await;
    let store = PgStore::connect(&url, 8).await.unwrap();
    store.migrate().await.unwrap();
    let jobs_n = 48;

    let mut ids = Vec::new();
    for _ in 0..jobs_n {
        let (s, _) = store
            .submit(
                NewJob {
                    tenant: TENANT.into(),
                    idempotency_key: None,
                    plan: plan(),
                    input: json!({}),
                },
                None,
            )
            .await
            .unwrap();
        ids.push(s.job_id);
    }
    // First leases are short; after they expire the stale jobs are re-leased by another
    // worker, so their first token is stale. The others keep a long lease.
    let first = store.claim("old", 1, jobs_n).await.unwrap();
    assert_eq!(first.len(), jobs_n);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = store.claim("new", 600_000, jobs_n).await.unwrap();
    assert_eq!(second.len(), jobs_n);
    let token_of = |leases: &[aetheris_store::Lease], id: JobId| {
        leases.iter().find(|l| l.job_id == id).unwrap().token
    };

    // One task per job (two for raced jobs), all released together every round.
    let mut plans = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let r = role(i);
        let token = if r == Role::Stale {
            token_of(&first, *id)
        } else {
            token_of(&second, *id)
        };
        plans.push((*id, r, token));
        if r == Role::Raced {
            plans.push((*id, r, token));
        }
    }
    let barrier = Arc::new(Barrier::new(plans.len()));
    let mut tasks = Vec::new();
    for (id, r, token) in plans {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut landed = 0usize;
            let mut conflicts = 0usize;
            for round in 0..ROUNDS {
                barrier.wait().await;
                let step = format!("s{round}");
                let mut events = Vec::new();
                if round > 0 {
                    events.push(succeeded(&format!("s{}", round - 1)));
                }
                events.push(started(id, &step, token));
                // The seq this round expects: each landed round adds its events.
                let expected = if round == 0 { 1 } else { 2 * round as u64 };
                if r == Role::Clumsy {
                    let wrong = store
                        .append(Append {
                            job_id: id,
                            token,
                            expected_last_seq: expected + 5,
                            events: events.clone(),
                        })
                        .await;
                    assert!(
                        matches!(wrong, Err(StoreError::SeqConflict { actual, .. }) if actual == expected),
                        "{wrong:?}"
                    );
                    // Succeeding a step that never started breaks the ledger.
                    let mut bad = events.clone();
                    bad.push(succeeded("never-started"));
                    let bad = store
                        .append(Append {
                            job_id: id,
                            token,
                            expected_last_seq: expected,
                            events: bad,
                        })
                        .await;
                    assert!(matches!(bad, Err(StoreError::Rejected(_))), "{bad:?}");
                }
                let res = store
                    .append(Append {
                        job_id: id,
                        token,
                        expected_last_seq: expected,
                        events,
                    })
                    .await;
                match (r, res) {
                    (Role::Stale, Err(StoreError::Fenced { presented, current, .. })) => {
                        assert_eq!(presented, token);
                        assert!(current > token);
                    }
                    (Role::Raced, Err(StoreError::SeqConflict { .. })) => conflicts += 1,
                    (Role::Good | Role::Clumsy | Role::Raced, Ok(recorded)) => {
                        let seqs: Vec<u64> = recorded.iter().map(|e| e.seq).collect();
                        let want: Vec<u64> =
                            (expected + 1..=expected + recorded.len() as u64).collect();
                        assert_eq!(seqs, want, "seqs follow the expected one");
                        landed += 1;
                    }
                    (r, other) => panic!("{r:?} job {id} round {round}: {other:?}"),
                }
            }
            (id, r, landed, conflicts)
        }));
    }
    let mut raced: std::collections::HashMap<JobId, (usize, usize)> = Default::default();
    for t in tasks {
        let (id, r, landed, conflicts) = t.await.unwrap();
        match r {
            Role::Stale => assert_eq!(landed, 0),
            Role::Good | Role::Clumsy => assert_eq!(landed, ROUNDS, "{r:?} job {id}"),
            Role::Raced => {
                let e = raced.entry(id).or_default();
                e.0 += landed;
                e.1 += conflicts;
            }
        }
    }
    for (id, (landed, conflicts)) in &raced {
        assert_eq!(
            *landed, ROUNDS,
            "job {id}: exactly one append lands per round"
        );
        assert_eq!(*conflicts, ROUNDS, "job {id}: the other one conflicts");
    }
    // Every single append went through the batcher (rejected ones included).
    let calls: usize = (0..jobs_n)
        .map(|i| match role(i) {
            Role::Good | Role::Stale => ROUNDS,
            Role::Clumsy => 3 * ROUNDS,
            Role::Raced => 2 * ROUNDS,
        })
        .sum();
    let stats = store.append_stats();
    assert_eq!(stats.appends, calls as u64, "{stats:?}");
    assert!(stats.transactions >= 1 && stats.transactions <= stats.appends);

    // The stored state: gap-free, hash-chained logs with the right ledger, and nothing at
    // all from the stale writers.
    for (i, id) in ids.iter().enumerate() {
        let evs = store
            .read_events(Scope::System, *id, 0, 1000)
            .await
            .unwrap();
        let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
        let ledger = store.ledger(Scope::System, *id).await.unwrap();
        let job = store.get_job(Scope::System, *id).await.unwrap().unwrap();
        assert_eq!(job.last_seq, evs.len() as u64);
        if role(i) == Role::Stale {
            assert_eq!(seqs, vec![1], "a fenced writer wrote nothing");
            assert!(ledger.is_empty());
            continue;
        }
        let n = 1 + 1 + 2 * (ROUNDS - 1);
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "job {id}");
        aetheris_proof::verify_chain(*id, &evs).unwrap();
        assert_eq!(ledger.len(), ROUNDS);
        for l in &ledger {
            let last = l.step == format!("s{}", ROUNDS - 1);
            let want = if last {
                LedgerStatus::Started
            } else {
                LedgerStatus::Succeeded
            };
            assert_eq!(l.status, want, "job {id} step {}", l.step);
            assert_ne!(l.step, "never-started");
        }
    }
}

/// `append_many` and single appends interleave on the same jobs without breaking either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_appends_and_batches_interleave() {
    let url = pg_cluster::fresh_database_url().await;
    let store = PgStore::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            store
                .submit(
                    NewJob {
                        tenant: TENANT.into(),
                        idempotency_key: None,
                        plan: plan(),
                        input: json!({}),
                    },
                    None,
                )
                .await
                .unwrap()
                .0
                .job_id,
        );
    }
    let leases = store.claim("w", 600_000, 8).await.unwrap();
    let tok = |id: JobId| leases.iter().find(|l| l.job_id == id).unwrap().token;
    let noop = |id: JobId, seq: u64| Append {
        job_id: id,
        token: tok(id),
        expected_last_seq: seq,
        events: vec![started(id, "s0", tok(id)), succeeded("s0")],
    };
    // Jobs 0-3 by single appends, 4-7 in one batch, concurrently.
    let singles: Vec<_> = ids[..4]
        .iter()
        .map(|id| {
            let (s, a) = (store.clone(), noop(*id, 1));
            tokio::spawn(async move { s.append(a).await })
        })
        .collect();
    let batch = store
        .append_many(ids[4..].iter().map(|id| noop(*id, 1)).collect())
        .await
        .unwrap();
    for r in batch {
        assert_eq!(r.unwrap().len(), 2);
    }
    for t in singles {
        assert_eq!(t.await.unwrap().unwrap().len(), 2);
    }
    for id in &ids {
        let evs = store.read_events(Scope::System, *id, 0, 100).await.unwrap();
        assert_eq!(evs.len(), 3);
        aetheris_proof::verify_chain(*id, &evs).unwrap();
    }
}
