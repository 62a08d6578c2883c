//! Conformance checks of the ledger and job status an append moves: the ledger state
//! machine (G2), `outcome_unknown` parking a job, finished jobs closed to appends.

use super::*;

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
