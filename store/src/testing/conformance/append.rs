//! Conformance checks of appends: gap-free seqs, fencing (G3), the hash chain (G7) and
//! group commit where each append fails alone.

use super::*;

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
