//! The PostgreSQL backend: every conformance check as its own test (each on a fresh
//! database), plus what only a shared,
//! multi-process database can break: several `PgStore`s (separate pools, as separate
//! worker processes would have) racing on claims, submits, appends and migrations; the
//! LISTEN/NOTIFY wake-up path and its reconnect; byte-exact payload storage (G7) and bytes
//! per event (W7); the migration runner's lock and checksum check.
//!
//! Every test gets a fresh database on one throwaway cluster per test binary
//! (`aetheris_store::testing::pg_cluster`). PostgreSQL server binaries are required: without them the
//! tests fail with a message saying to `apt-get install -y postgresql`.

use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobId, Plan};
use aetheris_store::migrate::{self, Migration, MIGRATIONS};
use aetheris_store::testing::{conformance, pg_cluster};
use aetheris_store::{
    Append, Audit, Commands, DynStore, JobLog, Leases, NewJob, PgStore, Scope, StoreError, Tenants,
    Users,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

async fn fresh() -> (String, PgStore) {
    let url = pg_cluster::fresh_database_url().await;
    let store = PgStore::connect(&url, 8).await.unwrap();
    store.migrate().await.unwrap();
    (url, store)
}

/// A plain connection for inspecting or tampering with the tables directly.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn plan() -> Plan {
    serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]})).unwrap()
}

fn new_job(tenant: &str, key: Option<&str>) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        idempotency_key: key.map(str::to_string),
        plan: plan(),
        input: json!({"order": "A-17"}),
    }
}

fn started(tenant: &str, job: JobId, step: &str, effect: EffectClass, token: u64) -> EventBody {
    EventBody::StepStarted {
        step: step.into(),
        attempt: 1,
        invocation_key: invocation_key(tenant, job, step, 0),
        tool: "echo".into(),
        effect,
        fencing_token: token,
    }
}

/// A fresh, migrated database for one conformance check.
async fn open() -> ((), DynStore) {
    let (_, store) = fresh().await;
    ((), Arc::new(store))
}

aetheris_store::conformance_tests!(open);

/// PostgreSQL's claim reads the log of each job it leases with a short log and no pending
/// command in the same statement (a job starts one round trip sooner); the others are
/// left for the worker to load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_preload_short_logs_without_commands() {
    let (_, store) = fresh().await;
    let store: DynStore = Arc::new(store);
    let claimed =
        conformance::claim_and_load_preloads_only_what_load_job_would_read(store.clone()).await;
    let mut lengths = Vec::new();
    for (lease, load) in &claimed {
        let pending = store.pending_commands(lease.job_id).await.unwrap();
        match load {
            Some(load) => lengths.push(load.events.len()),
            None => assert_eq!(pending.len(), 1, "only the job with a command loads itself"),
        }
    }
    lengths.sort();
    assert_eq!(
        lengths,
        [1, 3],
        "the new job and the re-claimed one come preloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_new_connection_pool() {
    let (url, a) = fresh().await;
    let (job, _) = a.submit(new_job("t", Some("k")), None).await.unwrap();
    let lease = a.claim("w1", 60_000, 10).await.unwrap();
    let token = lease[0].token;
    a.append(Append {
        job_id: job.job_id,
        token,
        expected_last_seq: 1,
        events: vec![started("t", job.job_id, "a", EffectClass::Pure, token)],
    })
    .await
    .unwrap();
    let evs = a
        .read_events(Scope::System, job.job_id, 0, 100)
        .await
        .unwrap();
    drop(a);

    let b = PgStore::connect(&url, 2).await.unwrap();
    assert_eq!(b.migrate().await.unwrap(), Vec::<String>::new());
    let again = b
        .read_events(Scope::System, job.job_id, 0, 100)
        .await
        .unwrap();
    assert_eq!(again, evs);
    aetheris_proof::verify_chain(job.job_id, &again).unwrap();
    let (same, created) = b.submit(new_job("t", Some("k")), None).await.unwrap();
    assert!(!created);
    assert_eq!(same.job_id, job.job_id);
    // The lease is still held: nobody else can claim the job.
    assert!(b.claim("w2", 60_000, 10).await.unwrap().is_empty());
}

/// Several stores (separate pools, like separate worker processes) claiming at once: every
/// job is granted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_across_processes() {
    let (url, first) = fresh().await;
    let mut stores = vec![first];
    for _ in 0..2 {
        stores.push(PgStore::connect(&url, 4).await.unwrap());
    }
    let mut want = Vec::new();
    for i in 0..150 {
        let tenant = format!("t{}", i % 5);
        want.push(
            stores[0]
                .submit(new_job(&tenant, None), None)
                .await
                .unwrap()
                .0
                .job_id,
        );
    }
    let mut tasks = Vec::new();
    for (w, s) in stores.iter().enumerate() {
        for k in 0..2 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let worker = format!("w{w}-{k}");
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let leases = s.claim(&worker, 600_000, 7).await.unwrap();
                    if leases.is_empty() {
                        idle += 1;
                    } else {
                        idle = 0;
                    }
                    got.extend(leases);
                }
                got
            }));
        }
    }
    let mut seen: HashMap<JobId, u64> = HashMap::new();
    for t in tasks {
        for l in t.await.unwrap() {
            assert!(
                seen.insert(l.job_id, l.token).is_none(),
                "{} granted twice",
                l.job_id
            );
            assert_eq!(l.token, 1);
        }
    }
    assert_eq!(seen.len(), want.len(), "every job claimed exactly once");
}

/// Concurrent submits of one idempotency key from several stores create exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submit_races_across_processes() {
    let (url, a) = fresh().await;
    let b = PgStore::connect(&url, 4).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.submit(new_job("race", Some("same-key")), None)
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let (s, c) = t.await.unwrap();
        created += usize::from(c);
        ids.push(s.job_id);
    }
    assert_eq!(created, 1, "exactly one submit creates the job");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every submit answers with the same job");
    let jobs = a
        .list_jobs(
            Scope::Tenant("race"),
            aetheris_store::ListFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
}

/// Group submit: concurrent submissions share statements, and each still gets what a
/// lone submit would: its own job, idempotency across the batch (one key submitted five
/// times at once creates one job; every caller gets it; the repeats are audited as
/// `existing`), and a submission the database refuses (a NUL byte in the tenant) fails
/// alone, storing nothing, while the others of its batch are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_submit_keeps_each_submission_on_its_own() {
    let (_, s) = fresh().await;
    let before = s.submit_batches();
    let audit = aetheris_store::AuditEntry::ok("gs-1", "alice", "job.create", "");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let (tenant, key) = match i {
                0..=29 => (format!("gs-{}", i % 3), None),
                30..=34 => ("gs-1".to_string(), Some("dup".to_string())),
                35..=38 => ("gs-2".to_string(), Some(format!("k{i}"))),
                _ => ("bad\0tenant".to_string(), None),
            };
            let job = NewJob {
                tenant,
                idempotency_key: key,
                ..new_job("x", None)
            };
            let audited = (30..=34).contains(&i).then_some(&audit);
            (i, s.submit(job, audited).await)
        }));
    }
    let mut dup = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (39, r) => assert!(r.is_err(), "a NUL byte in the tenant is refused: {r:?}"),
            (i, Ok((job, created))) if (30..=34).contains(&i) => dup.push((job.job_id, created)),
            (i, Ok((job, created))) => assert!(created, "submission {i}: {job:?}"),
            (i, Err(e)) => panic!("submission {i} failed: {e}"),
        }
    }
    assert!(
        s.submit_batches() - before < 40,
        "concurrent submissions share batches ({} for 40)",
        s.submit_batches() - before
    );
    assert_eq!(
        dup.iter().filter(|(_, c)| *c).count(),
        1,
        "one key, one job created"
    );
    assert!(
        dup.iter().all(|(id, _)| *id == dup[0].0),
        "every caller gets that job"
    );
    let list = |t: &'static str| {
        let s = s.clone();
        async move {
            s.list_jobs(
                Scope::Tenant(t),
                aetheris_store::ListFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(list("gs-0").await.len(), 10);
    assert_eq!(
        list("gs-1").await.len(),
        11,
        "10 without a key and the one keyed job"
    );
    assert_eq!(list("gs-2").await.len(), 14);
    let all = s
        .list_jobs(
            Scope::System,
            aetheris_store::ListFilter {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 35, "nothing of the refused submission is stored");
    for job in &all {
        let events = s
            .read_events(Scope::System, job.job_id, 0, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "job_submitted, once");
        aetheris_proof::verify_chain(job.job_id, &events).unwrap();
    }
    let rows = s
        .list_audit(
            Scope::System,
            aetheris_store::AuditFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let results: Vec<&str> = rows
        .iter()
        .filter(|r| r.entry.target == dup[0].0.to_string())
        .map(|r| r.entry.result.as_str())
        .collect();
    assert_eq!(
        results.iter().filter(|r| **r == "ok").count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| **r == "existing").count(),
        4,
        "{results:?}"
    );
}

/// Batches that lock the same rows in opposite orders never deadlock (rows are locked in
/// id order), and every append keeps its own fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_do_not_deadlock() {
    let (_, s) = fresh().await;
    let a = s.submit(new_job("d", None), None).await.unwrap().0.job_id;
    let b = s.submit(new_job("d", None), None).await.unwrap().0.job_id;
    let leases = s.claim("w", 600_000, 10).await.unwrap();
    let tok: HashMap<JobId, u64> = leases.iter().map(|l| (l.job_id, l.token)).collect();
    let touch = |id: JobId| Append {
        job_id: id,
        token: tok[&id],
        expected_last_seq: 1,
        events: vec![],
    };
    let mut tasks = Vec::new();
    for k in 0..4 {
        let s = s.clone();
        let batch = if k % 2 == 0 {
            vec![touch(a), touch(b)]
        } else {
            vec![touch(b), touch(a)]
        };
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                for r in s.append_many(batch.clone()).await.unwrap() {
                    r.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// One batch mixing every outcome, including two chained appends for one job: the good
/// ones commit, the bad ones write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_outcomes_are_independent() {
    let (_, s) = fresh().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.submit(new_job("b", None), None).await.unwrap().0.job_id);
    }
    let tok: HashMap<JobId, u64> = s
        .claim("w", 600_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.job_id, l.token))
        .collect();
    let (j0, j1, j2, j3) = (ids[0], ids[1], ids[2], ids[3]);
    let missing = JobId::new();
    let res = s
        .append_many(vec![
            // j0: two chained appends, both fine
            Append {
                job_id: j0,
                token: tok[&j0],
                expected_last_seq: 1,
                events: vec![started("b", j0, "a", EffectClass::SideEffect, tok[&j0])],
            },
            Append {
                job_id: j0,
                token: tok[&j0],
                expected_last_seq: 2,
                events: vec![EventBody::StepSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: json!({"ok": true}),
                }],
            },
            // j1: stale token
            Append {
                job_id: j1,
                token: tok[&j1] + 5,
                expected_last_seq: 1,
                events: vec![started("b", j1, "a", EffectClass::SideEffect, 0)],
            },
            // j2: seq gap
            Append {
                job_id: j2,
                token: tok[&j2],
                expected_last_seq: 7,
                events: vec![started("b", j2, "a", EffectClass::SideEffect, tok[&j2])],
            },
            // j3: first event fine, second breaks the ledger: nothing of it may land
            Append {
                job_id: j3,
                token: tok[&j3],
                expected_last_seq: 1,
                events: vec![
                    started("b", j3, "a", EffectClass::SideEffect, tok[&j3]),
                    started("b", j3, "a", EffectClass::SideEffect, tok[&j3]),
                ],
            },
            Append {
                job_id: missing,
                token: 1,
                expected_last_seq: 1,
                events: vec![],
            },
        ])
        .await
        .unwrap();
    assert_eq!(res.len(), 6);
    assert_eq!(res[0].as_ref().unwrap()[0].seq, 2);
    assert_eq!(res[1].as_ref().unwrap()[0].seq, 3);
    assert!(
        matches!(res[2], Err(StoreError::Fenced { .. })),
        "{:?}",
        res[2]
    );
    assert!(
        matches!(res[3], Err(StoreError::SeqConflict { actual: 1, .. })),
        "{:?}",
        res[3]
    );
    assert!(
        matches!(res[4], Err(StoreError::Rejected(_))),
        "{:?}",
        res[4]
    );
    assert!(
        matches!(res[5], Err(StoreError::NotFound(_))),
        "{:?}",
        res[5]
    );

    let evs = s.read_events(Scope::System, j0, 0, 100).await.unwrap();
    assert_eq!(evs.len(), 3);
    aetheris_proof::verify_chain(j0, &evs).unwrap();
    let ledger = s.ledger(Scope::System, j0).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].status, aetheris_runtime::LedgerStatus::Succeeded);
    for id in [j1, j2, j3] {
        assert_eq!(
            s.read_events(Scope::System, id, 0, 100)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(s.ledger(Scope::System, id).await.unwrap().is_empty());
        let row = s.get_job(Scope::System, id).await.unwrap().unwrap();
        assert_eq!(row.last_seq, 1);
        assert_eq!(row.status, aetheris_runtime::JobStatus::Queued);
    }
}

/// The stored payload is exactly `EventBody::payload()`, so a stored log verifies, and a
/// change made directly in the table is detected and located (G7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_is_stored_byte_exact_and_tampering_is_located() {
    let (url, s) = fresh().await;
    let (job, _) = s
        .submit(NewJob {
            tenant: "g7".into(),
            idempotency_key: None,
            plan: plan(),
            input: json!({"text": "héllo \u{1F600} \"quoted\" \\ \n", "n": 1.5e-7, "big": u64::MAX,
                          "neg": -42, "nested": {"z": [1, 2, {"y": null}], "a": true}}),
        }, None)
        .await
        .unwrap();
    let id = job.job_id;
    let token = s.claim("w", 600_000, 1).await.unwrap()[0].token;
    s.append(Append {
        job_id: id,
        token,
        expected_last_seq: 1,
        events: vec![
            started("g7", id, "a", EffectClass::Pure, token),
            EventBody::StepSucceeded {
                step: "a".into(),
                attempt: 1,
                output: json!({"body": "x".repeat(5000), "k": [0.1, 1e300]}),
            },
            EventBody::JobSucceeded {
                output: json!({"done": true}),
            },
        ],
    })
    .await
    .unwrap();
    let evs = s.read_events(Scope::System, id, 0, 100).await.unwrap();
    aetheris_proof::verify_chain(id, &evs).unwrap();

    let db = raw(&url).await;
    let rows = db
        .query(
            "SELECT seq, payload FROM events WHERE job_id = $1 ORDER BY seq",
            &[&id.0],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for (r, e) in rows.iter().zip(&evs) {
        let payload: &str = r.get(1);
        assert_eq!(payload.as_bytes(), e.body.payload().as_slice());
    }

    db.execute(
        "UPDATE events SET payload = replace(payload, '\"done\":true', '\"done\":false') \
         WHERE job_id = $1 AND seq = 4",
        &[&id.0],
    )
    .await
    .unwrap();
    let tampered = s.read_events(Scope::System, id, 0, 100).await.unwrap();
    let e = aetheris_proof::verify_chain(id, &tampered).unwrap_err();
    assert_eq!(e.seq(), 4, "{e}");

    db.execute("DELETE FROM events WHERE job_id = $1 AND seq = 2", &[&id.0])
        .await
        .unwrap();
    let deleted = s.read_events(Scope::System, id, 0, 100).await.unwrap();
    assert_eq!(
        aetheris_proof::verify_chain(id, &deleted)
            .unwrap_err()
            .seq(),
        3
    );
}

async fn events_size(db: &tokio_postgres::Client) -> (i64, i64) {
    let r = db
        .query_one(
            "SELECT pg_total_relation_size('events')::bigint, \
                    coalesce(sum(octet_length(payload)), 0)::bigint FROM events",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// W7: bytes per event beyond the payload, indexes included, stay under the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_per_event_are_small() {
    let (url, s) = fresh().await;
    let db = raw(&url).await;
    let (job, _) = s.submit(new_job("w7", None), None).await.unwrap();
    let id = job.job_id;
    let token = s.claim("w", 600_000, 1).await.unwrap()[0].token;
    let (before, payload_before) = events_size(&db).await;
    let n = 4000u64;
    let mut seq = 1;
    for chunk in 0..(n / 200) {
        let mut events = Vec::new();
        for i in 0..100 {
            let step = format!("s{chunk}-{i}");
            events.push(EventBody::StepStarted {
                step: step.clone(),
                attempt: 1,
                invocation_key: invocation_key("w7", id, &step, 0),
                tool: "echo".into(),
                effect: EffectClass::Pure,
                fencing_token: token,
            });
            events.push(EventBody::StepSucceeded {
                step,
                attempt: 1,
                output: json!({"n": i}),
            });
        }
        let got = s
            .append(Append {
                job_id: id,
                token,
                expected_last_seq: seq,
                events,
            })
            .await
            .unwrap();
        seq += got.len() as u64;
    }
    db.batch_execute("CHECKPOINT").await.unwrap();
    let (after, payload_after) = events_size(&db).await;
    let per_event = (after - before) as f64 / n as f64;
    let payload = (payload_after - payload_before) as f64 / n as f64;
    let overhead = per_event - payload;
    println!(
        "W7: {per_event:.0} bytes/event on disk (events table + its index), payload {payload:.0}, \
         overhead {overhead:.0}"
    );
    assert!(
        overhead <= 300.0,
        "bytes per event beyond payload: {overhead:.0}"
    );
    assert!(s.size_bytes().await.unwrap() >= after as u64);
}

/// NOTIFY reaches another process's store through its LISTEN connection, and the listener
/// comes back (and fires the hint) after its connection is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_wakes_other_processes_and_reconnects() {
    let (url, s) = fresh().await;
    let db = raw(&url).await;
    let hint = s.work_hint();

    async fn listener_pid(db: &tokio_postgres::Client, not: Option<i32>) -> i32 {
        for _ in 0..200 {
            let rows = db
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                     AND datname = current_database() AND query ILIKE 'LISTEN%'",
                    &[&aetheris_store::pg::LISTENER_APP_NAME],
                )
                .await
                .unwrap();
            if let Some(pid) = rows
                .iter()
                .map(|r| r.get::<_, i32>(0))
                .find(|p| Some(*p) != not)
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no LISTEN connection appeared");
    }
    async fn drain(hint: &tokio::sync::Notify) {
        while tokio::time::timeout(Duration::from_millis(100), hint.notified())
            .await
            .is_ok()
        {}
    }
    async fn expect_wake(hint: &tokio::sync::Notify, db: &tokio_postgres::Client, what: &str) {
        let woken = hint.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        db.batch_execute("NOTIFY aetheris_work").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), woken)
                .await
                .is_ok(),
            "{what}: NOTIFY from another connection must fire the hint"
        );
    }

    let pid = listener_pid(&db, None).await;
    drain(&hint).await;
    expect_wake(&hint, &db, "first session").await;

    // Another store's submit (another process) wakes this one.
    let other = PgStore::connect(&url, 1).await.unwrap();
    drain(&hint).await;
    let woken = hint.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    other.submit(new_job("n", None), None).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .is_ok(),
        "a submit in another process must wake this one"
    );
    drop(other);

    // Kill the LISTEN connection: it comes back and fires the hint on reconnect.
    let woken = hint.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .is_ok(),
        "the listener must fire the hint after reconnecting"
    );
    let pid2 = listener_pid(&db, Some(pid)).await;
    assert_ne!(pid, pid2);
    drain(&hint).await;
    expect_wake(&hint, &db, "after reconnect").await;
}

/// Event times come from the database and never run backwards within a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_come_from_the_database_clock() {
    let (url, s) = fresh().await;
    let db = raw(&url).await;
    let db_now = || async {
        let ms: i64 = db
            .query_one(
                "SELECT (floor(extract(epoch FROM now()) * 1000))::bigint",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        ms
    };
    let submit_from = db_now().await;
    let (job, _) = s.submit(new_job("clock", None), None).await.unwrap();
    let submit_to = db_now().await;
    let id = job.job_id;
    // The submission is stamped by the database where it is written (group submit), and
    // its hash covers that time.
    let first = s.read_events(Scope::System, id, 0, 10).await.unwrap();
    assert_eq!(first[0].recorded_at_ms, job.created_at_ms);
    assert!((submit_from..=submit_to).contains(&job.created_at_ms));
    aetheris_proof::verify_chain(id, &first).unwrap();
    let token = s.claim("w", 600_000, 1).await.unwrap()[0].token;
    let before = db_now().await;
    // Pretend the last write happened in the future (a clock step back): times must not
    // go backwards.
    db.execute(
        "UPDATE jobs SET updated_at = updated_at + 3600000 WHERE job_id = $1",
        &[&id.0],
    )
    .await
    .unwrap();
    let evs = s
        .append(Append {
            job_id: id,
            token,
            expected_last_seq: 1,
            events: vec![started("clock", id, "a", EffectClass::Pure, token)],
        })
        .await
        .unwrap();
    assert!(evs[0].recorded_at_ms >= job.created_at_ms + 3_600_000);
    let now = s.now_ms().await.unwrap();
    assert!(now >= before && now < before + 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_once() {
    let url = pg_cluster::fresh_database_url().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(PgStore::connect(&url, 1).await.unwrap());
    }
    let runs = futures_join(stores.iter().map(|s| s.migrate())).await;
    let mut applied = Vec::new();
    for r in runs {
        applied.extend(r.unwrap());
    }
    let all: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(applied, all, "each migration applied exactly once in total");
    let db = raw(&url).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM aetheris_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, MIGRATIONS.len());
    // And the schema works.
    stores[0].submit(new_job("m", None), None).await.unwrap();
}

/// Polls all futures concurrently on this task (no extra dependency needed).
async fn futures_join<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_migrations_are_refused() {
    let (url, s) = fresh().await;
    let db = raw(&url).await;
    db.execute(
        "UPDATE aetheris_migrations SET checksum = 'tampered' WHERE name = $1",
        &[&MIGRATIONS[0].name],
    )
    .await
    .unwrap();
    let e = s.migrate().await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(MIGRATIONS[0].name) && msg.contains("changed"),
        "the error names the changed file: {msg}"
    );

    // The same through the runner with an edited file instead of an edited record.
    db.execute(
        "UPDATE aetheris_migrations SET checksum = $2 WHERE name = $1",
        &[&MIGRATIONS[0].name, &migrate::checksum(MIGRATIONS[0].sql)],
    )
    .await
    .unwrap();
    let (mut client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let edited = [Migration {
        name: MIGRATIONS[0].name,
        sql: "CREATE TABLE sneaky (x int);",
    }];
    let e = migrate::run_migrations(&mut client, &edited)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("changed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_in_order_and_a_failing_one_changes_nothing() {
    let (url, _s) = fresh().await;
    let (mut client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut list: Vec<Migration> = MIGRATIONS.to_vec();
    list.push(Migration {
        name: "9001_good.sql",
        sql: "CREATE TABLE extra_one (x int);",
    });
    list.push(Migration {
        name: "9002_bad.sql",
        sql: "CREATE TABLE extra_two (x int); SELECT no_such_function();",
    });
    let e = migrate::run_migrations(&mut client, &list)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("9002_bad.sql"), "{e}");
    // One transaction: the good file before the bad one is not recorded or applied either.
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM aetheris_migrations WHERE name LIKE '9%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let t: Option<String> = client
        .query_one("SELECT to_regclass('extra_one')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, None);

    list.pop();
    assert_eq!(
        migrate::run_migrations(&mut client, &list).await.unwrap(),
        vec!["9001_good.sql".to_string()]
    );
    assert!(migrate::run_migrations(&mut client, &list)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_is_a_clear_error() {
    let e = PgStore::connect("not a url ://", 1).await.unwrap_err();
    assert!(e.to_string().contains("PostgreSQL"), "{e}");
    // Nothing listens on port 1 of loopback.
    let e = PgStore::connect("postgres://postgres@127.0.0.1:1/x?connect_timeout=2", 1)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
}

/// Audit rows roll back with their change (issue 5): triggers make the change itself fail
/// inside its statement — after the audit insert was planned alongside it — and no audit
/// row survives; without the triggers the same calls write their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_roll_back_with_their_change() {
    use aetheris_store::{AuditEntry, AuditFilter, CommandBody};
    let (url, store) = fresh().await;
    let db = raw(&url).await;
    let tenant = "audited";
    let who = |action: &str| AuditEntry::ok(tenant, "alice", action, "t");
    let (job, _) = store
        .submit(new_job(tenant, None), Some(&who("job.submit")))
        .await
        .unwrap();
    let rows = |store: PgStore| async move {
        store
            .list_audit(
                Scope::Tenant("audited"),
                AuditFilter {
                    after_id: 0,
                    limit: 100,
                    action: None,
                },
            )
            .await
            .unwrap()
    };
    assert_eq!(rows(store.clone()).await.len(), 1, "the submit's row");
    db.batch_execute(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'poisoned %', TG_TABLE_NAME; END $$; \
         CREATE TRIGGER poison_commands BEFORE INSERT ON commands \
           FOR EACH ROW EXECUTE FUNCTION poison(); \
         CREATE TRIGGER poison_events BEFORE INSERT ON events \
           FOR EACH ROW EXECUTE FUNCTION poison(); \
         CREATE TRIGGER poison_tenants BEFORE INSERT OR UPDATE ON tenants \
           FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await
    .unwrap();
    let cancel = CommandBody::Cancel {
        by: "alice".into(),
        reason: "x".into(),
    };
    let e = store
        .put_command(
            Scope::Tenant(tenant),
            job.job_id,
            cancel.clone(),
            Some(&who("job.cancel")),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("poisoned"), "{e}");
    let e = store
        .submit(new_job(tenant, None), Some(&who("job.submit")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("poisoned"), "{e}");
    store
        .create_tenant("t2", "T2", json!({}), Some(&who("tenant.create")))
        .await
        .unwrap_err();
    assert_eq!(
        rows(store.clone()).await.len(),
        1,
        "failed changes must leave no audit rows"
    );
    db.batch_execute(
        "DROP TRIGGER poison_commands ON commands; DROP TRIGGER poison_events ON events; \
         DROP TRIGGER poison_tenants ON tenants;",
    )
    .await
    .unwrap();
    store
        .put_command(
            Scope::Tenant(tenant),
            job.job_id,
            cancel,
            Some(&who("job.cancel")),
        )
        .await
        .unwrap();
    store
        .submit(new_job(tenant, None), Some(&who("job.submit")))
        .await
        .unwrap();
    store
        .create_tenant("t2", "T2", json!({}), Some(&who("tenant.create")))
        .await
        .unwrap();
    let actions: Vec<String> = rows(store.clone())
        .await
        .into_iter()
        .map(|r| r.entry.action)
        .collect();
    assert_eq!(
        actions,
        ["job.submit", "job.cancel", "job.submit", "tenant.create"]
    );
}

/// A live migration that changes the result type of a cached statement (DESIGN §8: SQLSTATE
/// 0A000, "cached plan must not change result type") must not break `access`, which runs
/// on every authenticated request through a cached prepared statement: the statement is
/// prepared again and the request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_survives_a_live_migration_of_its_table() {
    let url = pg_cluster::fresh_database_url().await;
    // One connection: the statement warmed below is the one used after the migration.
    let store = PgStore::connect(&url, 1).await.unwrap();
    store.migrate().await.unwrap();
    store
        .create_tenant("acme", "Acme", json!({}), None)
        .await
        .unwrap();
    store
        .put_user("acme", "alice", vec!["viewer".into()], false, None)
        .await
        .unwrap();
    let before = store.access("acme", "alice").await.unwrap();
    assert!(before.tenant_exists);
    // Another process migrates: a column of the cached plan changes its type.
    raw(&url)
        .await
        .batch_execute("ALTER TABLE users ALTER COLUMN roles TYPE varchar(4000)")
        .await
        .unwrap();
    let after = store.access("acme", "alice").await;
    assert_eq!(after.unwrap(), before, "access after the live migration");
}

/// A statement the server refuses is `Backend`: sending it again will not heal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_statement_is_a_backend_error() {
    let (url, store) = fresh().await;
    raw(&url)
        .await
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
             CREATE TRIGGER refuse_tenants BEFORE INSERT ON tenants \
               FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let refused = store
        .create_tenant("t", "T", json!({}), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Backend(_)), "{refused:?}");
    assert!(refused.to_string().contains("refused"), "{refused}");
}

/// While the server is down every call is `Unavailable` (transient, with the driver or
/// pool error as its source), and the store works again once the server is back.
#[test]
fn a_server_that_is_down_makes_the_store_unavailable() {
    let pg = pg_cluster::private_cluster();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(pg.create_database());
    let store = rt.block_on(async {
        let store = PgStore::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        store
    });
    pg.stop();
    rt.block_on(async {
        for _ in 0..3 {
            match store.get_job(Scope::System, JobId::new()).await {
                Err(e @ StoreError::Unavailable { .. }) => {
                    assert!(std::error::Error::source(&e).is_some(), "{e}");
                }
                other => panic!("a call while the server is down gave {other:?}"),
            }
        }
    });
    pg.start();
    rt.block_on(async {
        for _ in 0..100 {
            if let Ok(found) = store.get_job(Scope::System, JobId::new()).await {
                assert_eq!(found, None);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the store did not recover once the server was back");
    });
}

/// A retention batch whose transaction fails after deleting its events and ledger rows
/// (before its commit) leaves every job whole; a second run deletes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_retention_crash_midway_leaves_jobs_whole() {
    let (_, store) = fresh().await;
    let store = Arc::new(store);
    let crashing = store.clone();
    conformance::retention_crash_midway_leaves_jobs_whole(store, |policy, ids| async move {
        crashing.delete_jobs_crashing_midway(&policy, &ids).await
    })
    .await;
}
