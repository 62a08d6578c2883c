//! Conformance checks of the job log: submission and idempotency, snapshots, `load_job`,
//! scoped reads and listing (G1, G5, G6).

use super::*;

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

/// `latest_snapshot` returns the newest snapshot at or below `max_seq`; a snapshot write
/// prunes the older ones (only the newest is read on load); a snapshot beyond the log is
/// rejected.
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
    // Only the newest snapshot is ever read on load: writing 4 pruned 2.
    for (max, expected) in [
        (0, None),
        (1, None),
        (2, None),
        (3, None),
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
