//! Conformance checks of each tenant's transparency log and of evidence export: a leaf
//! exactly when an append finishes a job, indexes gap-free per tenant (also under
//! concurrent finishing appends), and packages that are exactly what the proof crate
//! builds from the history the store recorded. Since every backend must pass the latter,
//! two stores that recorded the same history export the same bytes.

use super::*;
use crate::evidence::{JobEvidence, TenantLog, REQUESTED_REASON};
use crate::{LogLeaf, PolicyRule};
use aetheris_proof::checkpoint::{job_leaf_hash, prove_job};
use aetheris_proof::{EvidenceError, EvidenceInput, LedgerRecord, SigningKey};
use aetheris_runtime::{ConfirmOutcome, LedgerRow};
use std::collections::BTreeMap;

/// The evidence key of these checks: a fixed seed, so a package's bytes depend only on
/// the history.
fn key() -> SigningKey {
    ok(SigningKey::from_seed([42; 32]), "fixed evidence key")
}

/// Finishes job `id` (leased by `worker`) with `job_failed`; returns the recorded event.
async fn fail_job(store: &DynStore, worker: &str, id: JobId) -> RecordedEvent {
    let l = lease_job(store, worker, HOUR_MS, id).await;
    let seq = job(store, id).await.last_seq;
    let mut evs = ok(
        store
            .append(append(
                id,
                l.token,
                seq,
                vec![EventBody::JobFailed {
                    error: "stop".into(),
                    step: None,
                }],
            ))
            .await,
        "finish",
    );
    match evs.pop() {
        Some(e) => e,
        None => panic!("conformance: an append returned no events"),
    }
}

fn leaf_for(id: JobId, last: &RecordedEvent, index: u64) -> LogLeaf {
    LogLeaf {
        index,
        job_id: id,
        leaf_hash: job_leaf_hash(id, last.seq, &last.hash),
        appended_at_ms: last.recorded_at_ms,
    }
}

async fn leaves(store: &DynStore, tenant: &str) -> Vec<LogLeaf> {
    ok(store.log_leaves(tenant, None).await, "log_leaves")
}

/// A leaf is appended exactly when an append finishes a job, in the same transaction:
/// numbered 0, 1, 2, … per tenant in the order jobs finished, holding the job's id, last
/// seq and chain head as recorded and its terminal event's time. Appends that do not
/// finish a job, and refused ones, add nothing; two jobs finished by one batch take
/// consecutive indexes in batch order; reads are scoped and a log can be read in part.
pub async fn finished_jobs_join_their_tenant_log(store: DynStore) {
    let t = fresh_tenant("tlog");
    let other = fresh_tenant("tlog-other");
    let (a, b, c) = (
        submit(&store, &t).await.job_id,
        submit(&store, &t).await.job_id,
        submit(&store, &t).await.job_id,
    );
    let x = submit(&store, &other).await.job_id;
    assert!(
        leaves(&store, &t).await.is_empty(),
        "a new tenant's log is empty"
    );

    // Running a step is not finishing: no leaf.
    let lc = lease_and_run_a(&store, &t, "tlog-w", c).await;
    assert!(
        leaves(&store, &t).await.is_empty(),
        "only finishing appends add leaves"
    );
    assert_eq!(
        ok(store.job_leaf(Scope::Tenant(&t), c).await, "job_leaf"),
        None,
        "an unfinished job has no leaf"
    );

    let eb = fail_job(&store, "tlog-w", b).await;
    let ex = fail_job(&store, "tlog-w", x).await;
    let ea = fail_job(&store, "tlog-w", a).await;
    let want = vec![leaf_for(b, &eb, 0), leaf_for(a, &ea, 1)];
    assert_eq!(leaves(&store, &t).await, want, "leaves in finishing order");
    assert_eq!(
        leaves(&store, &other).await,
        vec![leaf_for(x, &ex, 0)],
        "each tenant has its own log"
    );
    assert_eq!(
        ok(store.log_leaves(&t, Some(1)).await, "part of the log"),
        want[..1].to_vec()
    );
    assert_eq!(
        ok(store.log_leaves(&t, Some(99)).await, "more than the log"),
        want
    );
    assert_eq!(
        ok(store.job_leaf(Scope::Tenant(&t), a).await, "job_leaf"),
        Some(want[1])
    );
    assert!(
        matches!(
            store.job_leaf(Scope::Tenant(&other), a).await,
            Err(StoreError::NotFound(Entity::Job(_)))
        ),
        "another tenant's job leaf is NotFound (G6)"
    );

    // A refused finishing append (stale token) adds nothing.
    let refused = store
        .append(append(
            c,
            lc.token + 1,
            3,
            vec![EventBody::JobSucceeded { output: json!(1) }],
        ))
        .await;
    assert!(refused.is_err(), "a stale token is fenced");
    assert_eq!(
        leaves(&store, &t).await.len(),
        2,
        "a refused append adds no leaf"
    );

    // Two jobs finished by one batch: consecutive indexes, in batch order.
    let d = submit(&store, &t).await.job_id;
    let ld = lease_job(&store, "tlog-w", HOUR_MS, d).await;
    let done = |id, token, seq| {
        append(
            id,
            token,
            seq,
            vec![EventBody::JobSucceeded {
                output: json!({"ok": true}),
            }],
        )
    };
    let results = ok(
        store
            .append_many(vec![done(d, ld.token, 1), done(c, lc.token, 3)])
            .await,
        "batch",
    );
    let last = |r: &crate::Result<Vec<RecordedEvent>>| match r {
        Ok(evs) => evs.last().cloned().unwrap_or_else(|| panic!("no events")),
        Err(e) => panic!("conformance: batch append failed: {e}"),
    };
    let (ed, ec) = (last(&results[0]), last(&results[1]));
    let all = leaves(&store, &t).await;
    assert_eq!(
        all[2..].to_vec(),
        vec![leaf_for(d, &ed, 2), leaf_for(c, &ec, 3)],
        "one batch, two leaves, in batch order"
    );
}

/// Under concurrent finishing appends of one tenant (group commit on PostgreSQL, one
/// writer on redb), the tenant's indexes are exactly 0..n, each finished job once.
pub async fn concurrent_finishes_get_gap_free_indexes(store: DynStore) {
    let t = fresh_tenant("tlog-race");
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(submit(&store, &t).await.job_id);
    }
    let mut leased = Vec::new();
    for id in &ids {
        leased.push(lease_job(&store, "race", HOUR_MS, *id).await);
    }
    let mut tasks = Vec::new();
    for l in leased {
        let (store, id) = (store.clone(), l.job_id);
        tasks.push(tokio::spawn(async move {
            ok(
                store
                    .append(append(
                        id,
                        l.token,
                        1,
                        vec![EventBody::JobSucceeded { output: json!(1) }],
                    ))
                    .await,
                "finish",
            );
        }));
    }
    for task in tasks {
        ok(task.await, "finishing task");
    }
    let log = leaves(&store, &t).await;
    let indexes: Vec<u64> = log.iter().map(|l| l.index).collect();
    assert_eq!(
        indexes,
        (0..ids.len() as u64).collect::<Vec<_>>(),
        "gap-free, no repeats"
    );
    let finished: BTreeSet<JobId> = log.iter().map(|l| l.job_id).collect();
    assert_eq!(
        finished,
        ids.into_iter().collect(),
        "every job exactly once"
    );
    for l in &log {
        let evs = events(&store, l.job_id).await;
        let last = evs.last().unwrap_or_else(|| panic!("no events"));
        assert_eq!(
            *l,
            leaf_for(l.job_id, last, l.index),
            "leaf of {}",
            l.job_id
        );
    }
}

/// Steps of the evidence job: an idempotent fetch, a wait for an approval, a
/// side-effecting charge and a notification.
fn evidence_plan() -> aetheris_runtime::Plan {
    ok(
        serde_json::from_value(json!({"steps": [
            {"id": "fetch", "tool": "http", "effect": "idempotent"},
            {"id": "approve", "needs": ["fetch"], "wait": {"signal": "approval"}},
            {"id": "charge", "needs": ["approve"], "tool": "http", "effect": "side_effect"},
            {"id": "notify", "needs": ["charge"], "tool": "echo"}
        ]})),
        "evidence plan",
    )
}

/// Runs a realistic job through `store` (a fetch, an approval signal and its wait, a
/// charge whose outcome is unknown and then confirmed, a failed and retried
/// notification, success) and returns every event as the store recorded it.
async fn recorded_job(store: &DynStore, tenant: &str) -> Vec<RecordedEvent> {
    let (s, _) = ok(
        store
            .submit(
                NewJob {
                    tenant: tenant.to_string(),
                    idempotency_key: None,
                    plan: evidence_plan(),
                    input: json!({"card": "tok_visa_4242", "note": "ünïcødé"}),
                },
                None,
            )
            .await,
        "submit",
    );
    let id = s.job_id;
    let mut recorded = events(store, id).await;
    let l = lease_job(store, "evidence-w", HOUR_MS, id).await;
    let start = |step: &str, attempt, effect| EventBody::StepStarted {
        step: step.to_string(),
        attempt,
        invocation_key: invocation_key(tenant, id, step, 0),
        tool: "http".into(),
        effect,
        fencing_token: l.token,
    };
    let approval = json!({"approved": true});
    let appends = vec![
        vec![start("fetch", 1, EffectClass::Idempotent)],
        vec![EventBody::StepSucceeded {
            step: "fetch".into(),
            attempt: 1,
            output: json!({"amount": 1250}),
        }],
        vec![
            EventBody::WaitStarted {
                step: "approve".into(),
                timeout_ms: None,
            },
            EventBody::SignalReceived {
                signal: "approval".into(),
                signal_id: "sig-1".into(),
                payload: approval.clone(),
                by: Some("alice".into()),
                command_id: 1,
            },
            EventBody::WaitCompleted {
                step: "approve".into(),
                signal_id: "sig-1".into(),
                output: approval,
            },
        ],
        vec![start("charge", 1, EffectClass::SideEffect)],
        vec![EventBody::StepOutcomeUnknown {
            step: "charge".into(),
            attempt: 1,
            reason: "lost the lease mid-call".into(),
        }],
        vec![EventBody::StepConfirmed {
            step: "charge".into(),
            outcome: ConfirmOutcome::Succeeded,
            output: Some(json!({"charge": "ch_1"})),
            by: "bob".into(),
            note: Some("seen in the dashboard".into()),
            command_id: 2,
        }],
        vec![start("notify", 1, EffectClass::Pure)],
        vec![EventBody::StepFailed {
            step: "notify".into(),
            attempt: 1,
            error: "try again".into(),
            retryable: true,
            retry_after_ms: Some(1),
        }],
        vec![start("notify", 2, EffectClass::Pure)],
        vec![
            EventBody::StepSucceeded {
                step: "notify".into(),
                attempt: 2,
                output: json!({"sent": true}),
            },
            EventBody::JobSucceeded {
                output: json!({"charged": "ch_1"}),
            },
        ],
    ];
    for evs in appends {
        let seq = recorded.len() as u64;
        recorded.extend(ok(
            store.append(append(id, l.token, seq, evs)).await,
            "evidence job append",
        ));
    }
    recorded
}

/// The ledger rows the recorded events imply (the runtime's own rule, at each event's
/// store time), independently of what the store keeps.
fn implied_ledger(events: &[RecordedEvent]) -> Vec<LedgerRecord> {
    let mut rows: BTreeMap<String, LedgerRow> = BTreeMap::new();
    for e in events {
        if let Some(mv) = e.body.ledger_move() {
            let next = ok(
                LedgerRow::advance(rows.get(mv.step), &mv, e.recorded_at_ms),
                "ledger move",
            );
            rows.insert(mv.step.to_string(), next);
        }
    }
    rows.iter()
        .map(|(step, row)| LedgerRecord::new(step.clone(), row))
        .collect()
}

/// The package of a tenant's job whose leaf is `index` of `log` (leaf hashes), built by
/// the proof crate straight from the recorded history.
fn expected_package(
    tenant: &str,
    recorded: &[RecordedEvent],
    log: &[[u8; 32]],
    index: u64,
    key: &SigningKey,
) -> Vec<u8> {
    let last = recorded.last().unwrap_or_else(|| panic!("no events"));
    let transparency = ok(
        prove_job(tenant, log, index, index + 1, last.recorded_at_ms, key),
        "prove",
    );
    ok(
        aetheris_proof::build(
            &EvidenceInput {
                job_id: last.job_id,
                tenant,
                events: recorded,
                ledger: &implied_ledger(recorded),
                exporter: "conformance",
                redactions: &[],
                transparency: Some(&transparency),
            },
            key,
        ),
        "expected package",
    )
}

async fn export(
    store: &DynStore,
    scope: Scope<'_>,
    id: JobId,
    redact: &[&str],
) -> crate::Result<Result<Vec<u8>, EvidenceError>> {
    let redact: Vec<String> = redact.iter().map(|s| s.to_string()).collect();
    let ev = JobEvidence::gather(store.as_ref(), scope, id, &redact, "conformance").await?;
    Ok(ev.build(&key()))
}

/// A finished job's package is exactly what `aetheris_proof::build` makes of the history
/// the store recorded (events as appended, the ledger they imply, the job's leaf proven
/// against the log right after it), so every backend exports the same bytes for the same
/// history; exporting again — also after more jobs finished — gives the same bytes. The
/// package verifies; redactions asked for and from the tenant's policy are applied and
/// listed with their reasons; an unfinished job is `Conflict`, another tenant's job
/// `NotFound`, a malformed path `Rejected`, a path matching nothing a redaction error.
pub async fn evidence_packages_are_the_recorded_history(store: DynStore) {
    let t = fresh_tenant("evidence");
    ok(store.create_tenant(&t, &t, json!({}), None).await, "tenant");
    let key = key();
    let first = recorded_job(&store, &t).await;
    let id = first[0].job_id;
    let last = first.last().unwrap_or_else(|| panic!("no events"));
    let leaf0 = job_leaf_hash(id, last.seq, &last.hash);
    let want = expected_package(&t, &first, &[leaf0], 0, &key);
    let got = ok(
        ok(export(&store, Scope::Tenant(&t), id, &[]).await, "gather"),
        "build",
    );
    assert!(
        got == want,
        "the exported package is the recorded history, byte for byte"
    );

    // The log grows; the first job's package does not change.
    let second = recorded_job(&store, &t).await;
    let last2 = second.last().unwrap_or_else(|| panic!("no events"));
    let leaf1 = job_leaf_hash(last2.job_id, last2.seq, &last2.hash);
    let again = ok(
        ok(export(&store, Scope::Tenant(&t), id, &[]).await, "gather"),
        "build",
    );
    assert!(
        again == want,
        "re-exports are byte-identical as the log grows"
    );
    let got2 = ok(
        ok(
            export(&store, Scope::System, last2.job_id, &[]).await,
            "gather",
        ),
        "build",
    );
    assert!(
        got2 == expected_package(&t, &second, &[leaf0, leaf1], 1, &key),
        "the second job is proven against the log of size 2"
    );
    let report = ok(aetheris_proof::verify(&got2, &[key.public_key()]), "verify");
    assert_eq!(report.events, second.len() as u64);
    let cp = report.checkpoint.unwrap_or_else(|| panic!("no checkpoint"));
    assert_eq!((cp.leaf_index, cp.tree_size), (1, 2));

    // The whole log's checkpoint is consistent with the one the first package carries.
    let log = ok(TenantLog::read(store.as_ref(), &t).await, "tenant log");
    assert_eq!(log.leaves, vec![leaf0, leaf1]);
    assert_eq!(log.time_ms, last2.recorded_at_ms);
    let proof = ok(log.consistency(1, 2), "consistency");
    let old = ok(aetheris_proof::verify(&want, &[key.public_key()]), "verify")
        .checkpoint
        .unwrap_or_else(|| panic!("no checkpoint"));
    let old_text = ok(
        prove_job(&t, &[leaf0], 0, 1, old.time_ms, &key),
        "old checkpoint",
    )
    .checkpoint;
    ok(
        aetheris_proof::checkpoint::verify_consistency(
            &old_text,
            &ok(log.checkpoint(&key), "checkpoint"),
            &proof,
            &[key.public_key()],
        ),
        "the log only grew",
    );

    // Redaction: asked for, and by the tenant's policy, each listed with its reason.
    let redacted = ok(
        ok(
            export(&store, Scope::Tenant(&t), id, &["steps.charge.output"]).await,
            "gather",
        ),
        "build",
    );
    let r = ok(
        aetheris_proof::verify(&redacted, &[key.public_key()]),
        "verify",
    );
    assert!(
        !r.redactions.is_empty()
            && r.redactions
                .iter()
                .all(|x| x.path == "steps.charge.output" && x.reason == REQUESTED_REASON),
        "{:?}",
        r.redactions
    );
    let rule = PolicyRule {
        path: "input".into(),
        reason: "PII".into(),
    };
    assert_eq!(
        ok(
            store
                .set_evidence_policy(&t, vec![rule.clone()], None)
                .await,
            "set policy"
        ),
        vec![rule.clone()]
    );
    assert_eq!(ok(store.evidence_policy(&t).await, "policy"), vec![rule]);
    let by_policy = ok(
        ok(export(&store, Scope::Tenant(&t), id, &[]).await, "gather"),
        "build",
    );
    let r = ok(
        aetheris_proof::verify(&by_policy, &[key.public_key()]),
        "verify",
    );
    assert_eq!(
        r.redactions
            .iter()
            .map(|x| (x.seq, x.path.as_str(), x.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "input", "PII")]
    );
    assert!(
        matches!(
            export(&store, Scope::Tenant(&t), id, &["steps.nope.output"]).await,
            Ok(Err(EvidenceError::Redaction { .. }))
        ),
        "an asked-for path that matches nothing is refused"
    );
    assert!(matches!(
        export(&store, Scope::Tenant(&t), id, &["bogus"]).await,
        Err(StoreError::Rejected(_))
    ));

    // Scope and state.
    let other = fresh_tenant("evidence-other");
    assert!(matches!(
        export(&store, Scope::Tenant(&other), id, &[]).await,
        Err(StoreError::NotFound(Entity::Job(_)))
    ));
    let open = submit(&store, &t).await.job_id;
    assert!(matches!(
        export(&store, Scope::Tenant(&t), open, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.set_evidence_policy(&other, vec![], None).await,
        Err(StoreError::NotFound(Entity::Tenant(_)))
    ));
    assert!(ok(store.evidence_policy(&other).await, "policy of nobody").is_empty());
}
