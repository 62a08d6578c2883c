//! Transparency logs on PostgreSQL, where several processes share one database: jobs of
//! one tenant finishing at once through separate pools (as separate workers would) get
//! leaf indexes 0..n without gaps or repeats; jobs finished before migration 0010 join
//! their tenant's log with the leaves they would have got; and a leaf deleted or rewritten
//! behind the store's back is caught (a hole is refused; a rewritten log is no longer
//! consistent with a checkpoint kept from before).

use aetheris_proof::checkpoint::{job_leaf_hash, verify_consistency};
use aetheris_proof::SigningKey;
use aetheris_runtime::{EventBody, JobId, Plan};
use aetheris_store::evidence::TenantLog;
use aetheris_store::migrate::{self, MIGRATIONS};
use aetheris_store::testing::pg_cluster;
use aetheris_store::{Append, JobLog, Leases, NewJob, PgStore, Scope, StoreError, TransparencyLog};
use serde_json::json;
use tokio_postgres::NoTls;

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn new_job(tenant: &str) -> NewJob {
    let plan: Plan =
        serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo"}]})).unwrap();
    NewJob {
        tenant: tenant.into(),
        idempotency_key: None,
        plan,
        input: json!({}),
    }
}

/// Submits `n` jobs of `tenant` and leases them all to `worker`.
async fn leased_jobs(store: &PgStore, tenant: &str, worker: &str, n: usize) -> Vec<(JobId, u64)> {
    for _ in 0..n {
        store.submit(new_job(tenant), None).await.unwrap();
    }
    let mut out = Vec::new();
    while out.len() < n {
        let got = store.claim(worker, 3_600_000, n).await.unwrap();
        assert!(!got.is_empty(), "every submitted job can be claimed");
        out.extend(got.into_iter().map(|l| (l.job_id, l.token)));
    }
    out
}

fn finish(id: JobId, token: u64) -> Append {
    Append {
        job_id: id,
        token,
        expected_last_seq: 1,
        events: vec![EventBody::JobSucceeded {
            output: json!({"done": true}),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_finishes_across_processes_get_gap_free_indexes() {
    let url = pg_cluster::fresh_database_url().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        let s = PgStore::connect(&url, 4).await.unwrap();
        s.migrate().await.unwrap();
        stores.push(s);
    }
    let jobs = leased_jobs(&stores[0], "acme", "w", 120).await;
    // Every store (its own pool and group-commit batchers) finishes its share at once.
    let mut tasks = Vec::new();
    for (i, (id, token)) in jobs.iter().copied().enumerate() {
        let s = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(
            async move { s.append(finish(id, token)).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let log = stores[1].log_leaves("acme", None).await.unwrap();
    let indexes: Vec<u64> = log.iter().map(|l| l.index).collect();
    assert_eq!(
        indexes,
        (0..120).collect::<Vec<u64>>(),
        "no gaps, no repeats"
    );
    let mut ids: Vec<JobId> = log.iter().map(|l| l.job_id).collect();
    ids.sort_by_key(|id| *id.as_bytes());
    let mut want: Vec<JobId> = jobs.iter().map(|(id, _)| *id).collect();
    want.sort_by_key(|id| *id.as_bytes());
    assert_eq!(ids, want, "each finished job once");
    let head: i64 = raw(&url)
        .await
        .query_one(
            "SELECT size FROM transparency_heads WHERE tenant = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(head, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finished_before_the_migration_join_their_log() {
    let url = pg_cluster::fresh_database_url().await;
    let mut client = raw(&url).await;
    let before: Vec<_> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.name < "0010")
        .collect();
    migrate::run_migrations(&mut client, &before).await.unwrap();
    // Job rows as an earlier version left them: (tenant, status, last_seq, finished at).
    let rows = [
        ("acme", "succeeded", 7i64, 200i64),
        ("acme", "failed", 3, 100),
        ("acme", "waiting", 2, 50),
        ("acme", "cancelled", 4, 300),
        ("globex", "succeeded", 5, 150),
    ];
    let mut ids = Vec::new();
    for (i, (tenant, status, seq, at)) in rows.iter().enumerate() {
        let id = JobId::new();
        let head = [i as u8 + 1; 32];
        client
            .execute(
                "INSERT INTO jobs (job_id, tenant, status, last_seq, last_hash, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6)",
                &[&id.0, tenant, status, seq, &head.to_vec(), at],
            )
            .await
            .unwrap();
        ids.push((id, head));
    }
    let store = PgStore::connect(&url, 2).await.unwrap();
    // 0010 and every later migration.
    let later: Vec<String> = MIGRATIONS
        .iter()
        .filter(|m| m.name >= "0010")
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(store.migrate().await.unwrap(), later);
    assert_eq!(later[0], "0010_transparency.sql");
    let leaf = |i: usize| job_leaf_hash(ids[i].0, rows[i].2 as u64, &ids[i].1);
    let acme = store.log_leaves("acme", None).await.unwrap();
    assert_eq!(
        acme.iter()
            .map(|l| (l.index, l.job_id, l.leaf_hash, l.appended_at_ms))
            .collect::<Vec<_>>(),
        vec![
            (0, ids[1].0, leaf(1), 100),
            (1, ids[0].0, leaf(0), 200),
            (2, ids[3].0, leaf(3), 300),
        ],
        "finished jobs, in the order they finished, with the leaf the rule gives"
    );
    assert_eq!(store.log_leaves("globex", None).await.unwrap().len(), 1);
    assert_eq!(
        store.job_leaf(Scope::System, ids[2].0).await.unwrap(),
        None,
        "an unfinished job has no leaf"
    );
    // The next job to finish continues the log.
    let jobs = leased_jobs(&store, "acme", "w", 1).await;
    store.append(finish(jobs[0].0, jobs[0].1)).await.unwrap();
    let acme = store.log_leaves("acme", None).await.unwrap();
    assert_eq!((acme.len(), acme[3].job_id), (4, jobs[0].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_rewritten_leaf_is_detected() {
    let url = pg_cluster::fresh_database_url().await;
    let store = PgStore::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let key = SigningKey::from_seed([9; 32]).unwrap();
    let pk = [key.public_key()];
    let jobs = leased_jobs(&store, "acme", "w", 6).await;
    for (id, token) in &jobs[..4] {
        store.append(finish(*id, *token)).await.unwrap();
    }
    // An auditor keeps the checkpoint of the log at size 4.
    let kept = TenantLog::read(&store, "acme").await.unwrap();
    let kept_checkpoint = kept.checkpoint(&key).unwrap();
    for (id, token) in &jobs[4..] {
        store.append(finish(*id, *token)).await.unwrap();
    }
    let grown = TenantLog::read(&store, "acme").await.unwrap();
    verify_consistency(
        &kept_checkpoint,
        &grown.checkpoint(&key).unwrap(),
        &grown.consistency(4, 6).unwrap(),
        &pk,
    )
    .expect("the log only grew");

    let db = raw(&url).await;
    // A leaf deleted: the hole is refused.
    db.batch_execute("DELETE FROM transparency_leaves WHERE tenant = 'acme' AND idx = 1")
        .await
        .unwrap();
    match store.log_leaves("acme", None).await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("no leaf 1"), "{m}"),
        other => panic!("a hole in the log must be refused, got {other:?}"),
    }
    // Covered up: the later leaves renumbered and the head lowered. The store now serves
    // a log of 5 and signs its checkpoint, but it is not an extension of the kept one.
    db.batch_execute(
        "UPDATE transparency_leaves SET idx = idx - 1 WHERE tenant = 'acme' AND idx > 1; \
         UPDATE transparency_heads SET size = size - 1 WHERE tenant = 'acme'",
    )
    .await
    .unwrap();
    let rewritten = TenantLog::read(&store, "acme").await.unwrap();
    assert_eq!(rewritten.size(), 5);
    let e = verify_consistency(
        &kept_checkpoint,
        &rewritten.checkpoint(&key).unwrap(),
        &rewritten.consistency(4, 5).unwrap(),
        &pk,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a prefix"), "{e}");

    // A job's history rewritten (its leaf recomputed for a new chain head): detected too.
    let url2 = pg_cluster::fresh_database_url().await;
    let store = PgStore::connect(&url2, 2).await.unwrap();
    store.migrate().await.unwrap();
    let jobs = leased_jobs(&store, "acme", "w", 3).await;
    for (id, token) in &jobs {
        store.append(finish(*id, *token)).await.unwrap();
    }
    let kept = TenantLog::read(&store, "acme").await.unwrap();
    let kept_checkpoint = kept.checkpoint(&key).unwrap();
    let forged = job_leaf_hash(jobs[0].0, 2, &[0xee; 32]);
    raw(&url2)
        .await
        .execute(
            "UPDATE transparency_leaves SET leaf_hash = $1 WHERE tenant = 'acme' AND idx = 0",
            &[&forged.to_vec()],
        )
        .await
        .unwrap();
    let rewritten = TenantLog::read(&store, "acme").await.unwrap();
    assert_eq!(rewritten.size(), 3);
    assert!(
        verify_consistency(
            &kept_checkpoint,
            &rewritten.checkpoint(&key).unwrap(),
            &rewritten.consistency(3, 3).unwrap(),
            &pk,
        )
        .is_err(),
        "same size, other root: not the log the auditor saw"
    );
}
