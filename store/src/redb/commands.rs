//! Commands on the embedded store: stored (`COMMANDS`: job ‖ id → time ‖ JSON) with the
//! job row re-saved so a waiting job becomes claimable until they are applied; marking
//! them applied is fenced by the job's token (G3).

use super::tables::{command_key, fenced_row, load_row, next_seq, save_row, COMMANDS};
use super::writer::WriteOp;
use super::{db_err, scope_tenant, RedbStore};
use crate::{AuditEntry, CommandBody, Commands, Result, Scope, StoreError, StoredCommand};
use ::redb::{Database, ReadableDatabase, WriteTransaction};
use aetheris_runtime::JobId;
use async_trait::async_trait;

pub(super) fn put_command_in(
    tx: &WriteTransaction,
    tenant: Option<&str>,
    id: JobId,
    body: CommandBody,
    now: i64,
) -> Result<StoredCommand> {
    let row = load_row(tx, id)?
        .filter(|r| tenant.is_none_or(|t| t == r.tenant))
        .ok_or(StoreError::job_not_found(id))?;
    if row.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "job {id} already finished ({})",
            row.status.as_str()
        )));
    }
    let json = serde_json::to_vec(&body).map_err(|e| StoreError::unencodable("command", e))?;
    let cmd_id = next_seq(tx, "command_seq")?;
    let mut v = now.to_be_bytes().to_vec();
    v.extend_from_slice(&json);
    tx.open_table(COMMANDS)
        .map_err(db_err)?
        .insert(command_key(id, cmd_id).as_slice(), v.as_slice())
        .map_err(db_err)?;
    save_row(tx, id, &row)?;
    Ok(StoredCommand {
        id: cmd_id,
        job_id: id,
        body,
        created_at_ms: now,
    })
}

pub(super) fn mark_applied_in(
    tx: &WriteTransaction,
    id: JobId,
    token: u64,
    ids: &[u64],
) -> Result<()> {
    let row = fenced_row(tx, id, token)?;
    {
        let mut t = tx.open_table(COMMANDS).map_err(db_err)?;
        for c in ids {
            t.remove(command_key(id, *c).as_slice()).map_err(db_err)?;
        }
    }
    save_row(tx, id, &row)
}

pub(super) fn read_commands(db: &Database, id: JobId) -> Result<Vec<StoredCommand>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(COMMANDS).map_err(db_err)?;
    let lo = command_key(id, 0);
    let hi = command_key(id, u64::MAX);
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
        .map_err(db_err)?
    {
        let (k, v) = item.map_err(db_err)?;
        let (k, v) = (k.value(), v.value());
        if k.len() != 24 || v.len() < 8 {
            return Err(StoreError::Corrupt(format!("command row of job {id}")));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&k[16..24]);
        let mut t8 = [0u8; 8];
        t8.copy_from_slice(&v[..8]);
        let body: CommandBody = serde_json::from_slice(&v[8..])
            .map_err(|e| StoreError::Corrupt(format!("command of job {id}: {e}")))?;
        out.push(StoredCommand {
            id: u64::from_be_bytes(n),
            job_id: id,
            body,
            created_at_ms: i64::from_be_bytes(t8),
        });
    }
    Ok(out)
}

#[async_trait]
impl Commands for RedbStore {
    async fn put_command(
        &self,
        scope: Scope<'_>,
        id: JobId,
        body: CommandBody,
        audit: Option<&AuditEntry>,
    ) -> Result<StoredCommand> {
        let tenant = scope_tenant(scope);
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutCommand {
            tenant,
            id,
            body,
            audit,
            reply,
        })
        .await
    }

    async fn pending_commands(&self, id: JobId) -> Result<Vec<StoredCommand>> {
        self.read(move |db| read_commands(db, id)).await
    }

    async fn mark_commands_applied(&self, id: JobId, token: u64, ids: &[u64]) -> Result<()> {
        let ids = ids.to_vec();
        self.send(|reply| WriteOp::MarkApplied {
            id,
            token,
            ids,
            reply,
        })
        .await
    }

    fn command_hint(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.commands.subscribe()
    }
}
