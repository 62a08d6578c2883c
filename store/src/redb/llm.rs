//! LLM providers and daily token usage on the embedded store: tenant ‖ 0x00 ‖ name → JSON
//! of the provider, and tenant ‖ 0x00 ‖ day (8, BE) → tokens (8, BE). Writes go through the
//! writer thread (a reservation's check and add are one operation of one commit, so
//! concurrent reservations never pass the limit together), with their audit rows in the
//! same commit; the day is the writer's clock's UTC day.

use super::tables::{tenant_key, LLM_PROVIDERS, LLM_USAGE, TENANTS};
use super::writer::{audited, defer, lift, Deferred, WriteOp};
use super::{db_err, now_ms, RedbStore};
use crate::{AuditEntry, LlmProvider, LlmReservation, LlmStore, Result, StoreError};
use ::redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use async_trait::async_trait;
use tokio::sync::oneshot;

/// A write of this concern, for the writer thread.
pub(super) enum LlmOp {
    PutProvider {
        tenant: String,
        provider: LlmProvider,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<LlmProvider>>,
    },
    DeleteProvider {
        tenant: String,
        name: String,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<bool>>,
    },
    Reserve {
        tenant: String,
        tokens: u64,
        limit: u64,
        reply: oneshot::Sender<Result<Option<LlmReservation>>>,
    },
    Settle {
        tenant: String,
        day: i64,
        reserved: u64,
        used: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl LlmOp {
    pub(super) fn tenant(&self) -> &str {
        match self {
            LlmOp::PutProvider { tenant, .. }
            | LlmOp::DeleteProvider { tenant, .. }
            | LlmOp::Reserve { tenant, .. }
            | LlmOp::Settle { tenant, .. } => tenant,
        }
    }
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

fn usage_key(tenant: &str, day: i64) -> Vec<u8> {
    tenant_key(tenant, &day.to_be_bytes())
}

fn read_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn put_provider_in(tx: &WriteTransaction, tenant: &str, p: LlmProvider) -> Result<LlmProvider> {
    if tx
        .open_table(TENANTS)
        .map_err(db_err)?
        .get(tenant)
        .map_err(db_err)?
        .is_none()
    {
        return Err(StoreError::tenant_not_found(tenant));
    }
    let json = serde_json::to_vec(&p).map_err(|e| StoreError::unencodable("llm provider", e))?;
    tx.open_table(LLM_PROVIDERS)
        .map_err(db_err)?
        .insert(
            tenant_key(tenant, p.name.as_bytes()).as_slice(),
            json.as_slice(),
        )
        .map_err(db_err)?;
    Ok(p)
}

fn delete_provider_in(tx: &WriteTransaction, tenant: &str, name: &str) -> Result<bool> {
    let mut t = tx.open_table(LLM_PROVIDERS).map_err(db_err)?;
    let removed = t
        .remove(tenant_key(tenant, name.as_bytes()).as_slice())
        .map_err(db_err)?
        .is_some();
    Ok(removed)
}

fn reserve_in(
    tx: &WriteTransaction,
    tenant: &str,
    tokens: u64,
    limit: u64,
    now: i64,
) -> Result<Option<LlmReservation>> {
    let day = day_of(now);
    let key = usage_key(tenant, day);
    let mut t = tx.open_table(LLM_USAGE).map_err(db_err)?;
    let current = t
        .get(key.as_slice())
        .map_err(db_err)?
        .map(|g| read_u64(g.value()));
    let total = current.unwrap_or(0).saturating_add(tokens);
    if total > limit {
        return Ok(None);
    }
    t.insert(key.as_slice(), total.to_be_bytes().as_slice())
        .map_err(db_err)?;
    Ok(Some(LlmReservation { day, used: total }))
}

fn settle_in(
    tx: &WriteTransaction,
    tenant: &str,
    day: i64,
    reserved: u64,
    used: u64,
) -> Result<()> {
    let key = usage_key(tenant, day);
    let mut t = tx.open_table(LLM_USAGE).map_err(db_err)?;
    let current = t
        .get(key.as_slice())
        .map_err(db_err)?
        .map(|g| read_u64(g.value()));
    if let Some(current) = current {
        let total = current.saturating_sub(reserved).saturating_add(used);
        t.insert(key.as_slice(), total.to_be_bytes().as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Runs one operation in the writer's transaction (see `writer::execute`).
pub(super) fn execute(tx: &WriteTransaction, op: LlmOp, now: i64) -> Result<Deferred> {
    Ok(match op {
        LlmOp::PutProvider {
            tenant,
            provider,
            audit,
            reply,
        } => {
            let r = audited(
                tx,
                audit,
                now,
                || put_provider_in(tx, &tenant, provider),
                |_, _| {},
            )?;
            defer(reply, r)
        }
        LlmOp::DeleteProvider {
            tenant,
            name,
            audit,
            reply,
        } => {
            // Audited only when something was deleted.
            let r = lift(delete_provider_in(tx, &tenant, &name))?;
            if let (Ok(true), Some(entry)) = (&r, audit) {
                super::audit::audit_in(tx, entry, now)?;
            }
            defer(reply, r)
        }
        LlmOp::Reserve {
            tenant,
            tokens,
            limit,
            reply,
        } => defer(reply, lift(reserve_in(tx, &tenant, tokens, limit, now))?),
        LlmOp::Settle {
            tenant,
            day,
            reserved,
            used,
            reply,
        } => defer(reply, lift(settle_in(tx, &tenant, day, reserved, used))?),
    })
}

#[async_trait]
impl LlmStore for RedbStore {
    async fn put_llm_provider(
        &self,
        tenant: &str,
        provider: LlmProvider,
        audit: Option<&AuditEntry>,
    ) -> Result<LlmProvider> {
        let (tenant, audit) = (tenant.to_string(), audit.cloned());
        self.send(|reply| {
            WriteOp::Llm(LlmOp::PutProvider {
                tenant,
                provider,
                audit,
                reply,
            })
        })
        .await
    }

    async fn llm_providers(&self, tenant: &str) -> Result<Vec<LlmProvider>> {
        let prefix = tenant_key(tenant, &[]);
        self.read(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(LLM_PROVIDERS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in t.range(prefix.as_slice()..).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                out.push(
                    serde_json::from_slice(v.value())
                        .map_err(|e| StoreError::Corrupt(format!("llm provider: {e}")))?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn delete_llm_provider(
        &self,
        tenant: &str,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool> {
        let (tenant, name, audit) = (tenant.to_string(), name.to_string(), audit.cloned());
        self.send(|reply| {
            WriteOp::Llm(LlmOp::DeleteProvider {
                tenant,
                name,
                audit,
                reply,
            })
        })
        .await
    }

    async fn reserve_llm_tokens(
        &self,
        tenant: &str,
        tokens: u64,
        limit: u64,
    ) -> Result<Option<LlmReservation>> {
        let tenant = tenant.to_string();
        self.send(|reply| {
            WriteOp::Llm(LlmOp::Reserve {
                tenant,
                tokens,
                limit,
                reply,
            })
        })
        .await
    }

    async fn settle_llm_tokens(
        &self,
        tenant: &str,
        day: i64,
        reserved: u64,
        used: u64,
    ) -> Result<()> {
        let tenant = tenant.to_string();
        self.send(|reply| {
            WriteOp::Llm(LlmOp::Settle {
                tenant,
                day,
                reserved,
                used,
                reply,
            })
        })
        .await
    }

    async fn llm_tokens_today(&self, tenant: &str) -> Result<u64> {
        let key = usage_key(tenant, day_of(now_ms()));
        self.read(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(LLM_USAGE).map_err(db_err)?;
            let got = t.get(key.as_slice()).map_err(db_err)?;
            Ok(got.map_or(0, |g| read_u64(g.value())))
        })
        .await
    }
}
