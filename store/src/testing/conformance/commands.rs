//! Conformance checks of commands: they wake waiting jobs and marking them applied is
//! fenced (G1, G3).

use super::*;

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
