//! The access audit log on the embedded store: tenant ‖ 0x00 ‖ id (8, BE) → JSON of
//! `AuditRecord`, so a tenant's rows are one range in id order; ids come from the
//! `audit_seq` counter, so they increase in commit order.

use super::tables::{audit_key, next_seq, AUDIT};
use super::writer::WriteOp;
use super::{db_err, scope_tenant, RedbStore};
use crate::{Audit, AuditEntry, AuditFilter, AuditRecord, Result, Scope, StoreError};
use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use async_trait::async_trait;

pub(super) fn audit_in(tx: &WriteTransaction, entry: AuditEntry, now: i64) -> Result<AuditRecord> {
    let rec = AuditRecord {
        id: next_seq(tx, "audit_seq")?,
        at_ms: now,
        entry,
    };
    let json = serde_json::to_vec(&rec).map_err(|e| StoreError::unencodable("audit row", e))?;
    tx.open_table(AUDIT)
        .map_err(db_err)?
        .insert(
            audit_key(&rec.entry.tenant, rec.id).as_slice(),
            json.as_slice(),
        )
        .map_err(db_err)?;
    Ok(rec)
}

fn read_audit(db: &Database, tenant: Option<&str>, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(AUDIT).map_err(db_err)?;
    let parse = |v: &[u8]| -> Result<AuditRecord> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("audit row: {e}")))
    };
    let wanted = |r: &AuditRecord| {
        r.id > f.after_id && f.action.as_ref().is_none_or(|a| *a == r.entry.action)
    };
    let mut out = Vec::new();
    match tenant {
        Some(tenant) => {
            let lo = audit_key(tenant, f.after_id.saturating_add(1));
            let hi = audit_key(tenant, u64::MAX);
            for item in t
                .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
                .map_err(db_err)?
            {
                let r = parse(item.map_err(db_err)?.1.value())?;
                if wanted(&r) {
                    out.push(r);
                    if out.len() >= f.limit {
                        break;
                    }
                }
            }
        }
        None => {
            // All tenants (operators only): keyed by tenant, so merge by id.
            for item in t.iter().map_err(db_err)? {
                let r = parse(item.map_err(db_err)?.1.value())?;
                if wanted(&r) {
                    out.push(r);
                }
            }
            out.sort_by_key(|r| r.id);
            out.truncate(f.limit);
        }
    }
    Ok(out)
}

#[async_trait]
impl Audit for RedbStore {
    async fn record_audit(&self, entry: &AuditEntry) -> Result<AuditRecord> {
        let entry = entry.clone();
        self.send(|reply| WriteOp::RecordAudit { entry, reply })
            .await
    }

    async fn list_audit(&self, scope: Scope<'_>, filter: AuditFilter) -> Result<Vec<AuditRecord>> {
        let tenant = scope_tenant(scope);
        self.read(move |db| read_audit(db, tenant.as_deref(), &filter))
            .await
    }
}
