//! Tenants on the embedded store: id → JSON of `Tenant`, and id → JSON of the tenant's
//! evidence redaction policy; written on the writer thread, with their audit row in the
//! same commit.

use super::tables::{EVIDENCE_POLICY, TENANTS};
use super::writer::WriteOp;
use super::{db_err, RedbStore};
use crate::{AuditEntry, PolicyRule, Result, StoreError, Tenant, Tenants};
use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use async_trait::async_trait;

pub(super) fn put_tenant_in(
    tx: &WriteTransaction,
    mut t: Tenant,
    create: bool,
    now: i64,
) -> Result<Tenant> {
    let mut table = tx.open_table(TENANTS).map_err(db_err)?;
    let existing: Option<Tenant> = table
        .get(t.id.as_str())
        .map_err(db_err)?
        .map(|g| serde_json::from_slice(g.value()))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("tenant row: {e}")))?;
    match (existing, create) {
        (Some(_), true) => return Err(StoreError::Conflict(format!("tenant {:?} exists", t.id))),
        (None, false) => return Err(StoreError::tenant_not_found(&t.id)),
        (Some(old), false) => {
            t.name = old.name;
            t.created_at_ms = old.created_at_ms;
        }
        (None, true) => t.created_at_ms = now,
    }
    let json = serde_json::to_vec(&t).map_err(|e| StoreError::unencodable("tenant", e))?;
    table
        .insert(t.id.as_str(), json.as_slice())
        .map_err(db_err)?;
    Ok(t)
}

/// Replaces the policy of an existing tenant.
pub(super) fn put_policy_in(
    tx: &WriteTransaction,
    id: &str,
    rules: Vec<PolicyRule>,
) -> Result<Vec<PolicyRule>> {
    if tx
        .open_table(TENANTS)
        .map_err(db_err)?
        .get(id)
        .map_err(db_err)?
        .is_none()
    {
        return Err(StoreError::tenant_not_found(id));
    }
    let json =
        serde_json::to_vec(&rules).map_err(|e| StoreError::unencodable("evidence policy", e))?;
    tx.open_table(EVIDENCE_POLICY)
        .map_err(db_err)?
        .insert(id, json.as_slice())
        .map_err(db_err)?;
    Ok(rules)
}

fn read_policy(db: &Database, id: &str) -> Result<Vec<PolicyRule>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(EVIDENCE_POLICY).map_err(db_err)?;
    let Some(g) = t.get(id).map_err(db_err)? else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(g.value())
        .map_err(|e| StoreError::Corrupt(format!("evidence policy of {id:?}: {e}")))
}

fn read_tenants(db: &Database, id: Option<&str>) -> Result<Vec<Tenant>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(TENANTS).map_err(db_err)?;
    let parse = |v: &[u8]| -> Result<Tenant> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("tenant row: {e}")))
    };
    let mut out = Vec::new();
    match id {
        Some(id) => {
            if let Some(g) = t.get(id).map_err(db_err)? {
                out.push(parse(g.value())?);
            }
        }
        None => {
            for item in t.iter().map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
                out.push(parse(v.value())?);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Tenants for RedbStore {
    async fn create_tenant(
        &self,
        id: &str,
        name: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant> {
        let tenant = Tenant {
            id: id.to_string(),
            name: name.to_string(),
            limits,
            created_at_ms: 0,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutTenant {
            tenant,
            create: true,
            audit,
            reply,
        })
        .await
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let id = id.to_string();
        self.read(move |db| Ok(read_tenants(db, Some(&id))?.pop()))
            .await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|db| read_tenants(db, None)).await
    }

    async fn set_tenant_limits(
        &self,
        id: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<Tenant> {
        let tenant = Tenant {
            id: id.to_string(),
            name: String::new(),
            limits,
            created_at_ms: 0,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutTenant {
            tenant,
            create: false,
            audit,
            reply,
        })
        .await
    }

    async fn evidence_policy(&self, id: &str) -> Result<Vec<PolicyRule>> {
        let id = id.to_string();
        self.read(move |db| read_policy(db, &id)).await
    }

    async fn set_evidence_policy(
        &self,
        id: &str,
        rules: Vec<PolicyRule>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<PolicyRule>> {
        let tenant = id.to_string();
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutPolicy {
            tenant,
            rules,
            audit,
            reply,
        })
        .await
    }
}
