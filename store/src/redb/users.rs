//! Users of a tenant on the embedded store: tenant ‖ 0x00 ‖ id → JSON of `User` (a
//! tenant's users are one range); a put keeps the creation time and requires the tenant.

use super::tables::{tenant_key, TENANTS, USERS};
use super::writer::WriteOp;
use super::{db_err, RedbStore};
use crate::{Access, AuditEntry, Result, StoreError, User, Users};
use ::redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use async_trait::async_trait;

pub(super) fn put_user_in(tx: &WriteTransaction, mut user: User, now: i64) -> Result<User> {
    let exists = tx
        .open_table(TENANTS)
        .map_err(db_err)?
        .get(user.tenant.as_str())
        .map_err(db_err)?
        .is_some();
    if !exists {
        return Err(StoreError::tenant_not_found(&user.tenant));
    }
    let key = tenant_key(&user.tenant, user.id.as_bytes());
    let mut t = tx.open_table(USERS).map_err(db_err)?;
    let old: Option<User> = t
        .get(key.as_slice())
        .map_err(db_err)?
        .map(|g| parse_user(g.value()))
        .transpose()?;
    user.created_at_ms = old.map_or(now, |o| o.created_at_ms);
    user.updated_at_ms = now;
    let json = serde_json::to_vec(&user).map_err(|e| StoreError::unencodable("user", e))?;
    t.insert(key.as_slice(), json.as_slice()).map_err(db_err)?;
    Ok(user)
}

fn parse_user(v: &[u8]) -> Result<User> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("user row: {e}")))
}

fn read_users(db: &Database, tenant: &str) -> Result<Vec<User>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(USERS).map_err(db_err)?;
    let lo = tenant_key(tenant, b"");
    let mut hi = tenant.as_bytes().to_vec();
    hi.push(1);
    let mut out = Vec::new();
    for item in t
        .range::<&[u8]>(lo.as_slice()..hi.as_slice())
        .map_err(db_err)?
    {
        out.push(parse_user(item.map_err(db_err)?.1.value())?);
    }
    Ok(out)
}

fn read_access(db: &Database, tenant: &str, user: &str) -> Result<Access> {
    let tx = db.begin_read().map_err(db_err)?;
    let tenant_exists = tx
        .open_table(TENANTS)
        .map_err(db_err)?
        .get(tenant)
        .map_err(db_err)?
        .is_some();
    let user = tx
        .open_table(USERS)
        .map_err(db_err)?
        .get(tenant_key(tenant, user.as_bytes()).as_slice())
        .map_err(db_err)?
        .map(|g| parse_user(g.value()))
        .transpose()?;
    Ok(Access {
        tenant_exists,
        user,
    })
}

#[async_trait]
impl Users for RedbStore {
    async fn put_user(
        &self,
        tenant: &str,
        id: &str,
        roles: Vec<String>,
        disabled: bool,
        audit: Option<&AuditEntry>,
    ) -> Result<User> {
        let user = User {
            tenant: tenant.to_string(),
            id: id.to_string(),
            roles,
            disabled,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let audit = audit.cloned();
        self.send(|reply| WriteOp::PutUser { user, audit, reply })
            .await
    }

    async fn list_users(&self, tenant: &str) -> Result<Vec<User>> {
        let tenant = tenant.to_string();
        self.read(move |db| read_users(db, &tenant)).await
    }

    async fn access(&self, tenant: &str, user: &str) -> Result<Access> {
        let (tenant, user) = (tenant.to_string(), user.to_string());
        self.read(move |db| read_access(db, &tenant, &user)).await
    }
}
