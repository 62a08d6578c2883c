//! Conformance checks of the audit log: a change's row commits with the change, and
//! rows are scoped by tenant (G6).

use super::*;

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
