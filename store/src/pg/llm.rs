//! LLM providers and daily token usage on PostgreSQL (`migrations/0012_llm.sql`). A
//! provider change and its audit row are one statement; a reservation is one conditional
//! upsert on the tenant's row of the day (its row lock orders concurrent reservations, so
//! the limit holds across any number of workers); days come from the database clock.

use super::conn::Conn;
use super::PgStore;
use crate::{AuditEntry, LlmProvider, LlmReservation, LlmStore, Result, StoreError};
use async_trait::async_trait;

const NOW_MS: &str = "(floor(extract(epoch FROM now()) * 1000)::bigint)";
const TODAY: &str = "(floor(extract(epoch FROM now()) / 86400)::bigint)";

fn provider(text: &str) -> Result<LlmProvider> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("llm provider: {e}")))
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn param(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl LlmStore for PgStore {
    async fn put_llm_provider(
        &self,
        tenant: &str,
        p: LlmProvider,
        audit: Option<&AuditEntry>,
    ) -> Result<LlmProvider> {
        let c = Conn::get(&self.pool).await?;
        let cols = super::audit::COLUMNS;
        let sql = format!(
            "WITH t AS (SELECT id FROM tenants WHERE id = $1), \
             p AS (INSERT INTO llm_providers (tenant, name, spec, updated_at) \
                   SELECT id, $2, $3, {NOW_MS} FROM t \
                   ON CONFLICT (tenant, name) DO UPDATE SET spec = EXCLUDED.spec, \
                                                         updated_at = EXCLUDED.updated_at \
                   RETURNING spec), \
             a AS (INSERT INTO access_audit_log ({cols}) \
                   SELECT {NOW_MS}, $4, $5, $6, $7, $8 FROM p WHERE $4::text IS NOT NULL) \
             SELECT spec FROM p"
        );
        let text =
            serde_json::to_string(&p).map_err(|e| StoreError::unencodable("llm provider", e))?;
        let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
        let rows = c
            .query(&sql, &[&tenant, &p.name, &text, &a1, &a2, &a3, &a4, &a5])
            .await
            .map_err(|e| c.err(e))?;
        match rows.first() {
            Some(r) => provider(
                r.try_get(0)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
            None => Err(StoreError::tenant_not_found(tenant)),
        }
    }

    async fn llm_providers(&self, tenant: &str) -> Result<Vec<LlmProvider>> {
        let c = Conn::get(&self.pool).await?;
        let rows = c
            .cached_query(
                "SELECT spec FROM llm_providers WHERE tenant = $1 ORDER BY name",
                &[&tenant],
            )
            .await?;
        rows.iter()
            .map(|r| {
                provider(
                    r.try_get(0)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )
            })
            .collect()
    }

    async fn delete_llm_provider(
        &self,
        tenant: &str,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool> {
        let c = Conn::get(&self.pool).await?;
        let cols = super::audit::COLUMNS;
        let sql = format!(
            "WITH p AS (DELETE FROM llm_providers WHERE tenant = $1 AND name = $2 \
                        RETURNING name), \
             a AS (INSERT INTO access_audit_log ({cols}) \
                   SELECT {NOW_MS}, $3, $4, $5, $6, $7 FROM p WHERE $3::text IS NOT NULL) \
             SELECT count(*) FROM p"
        );
        let [a1, a2, a3, a4, a5] = super::audit::nullable_params(audit);
        let row = c
            .query_one(&sql, &[&tenant, &name, &a1, &a2, &a3, &a4, &a5])
            .await
            .map_err(|e| c.err(e))?;
        let n: i64 = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(n > 0)
    }

    async fn reserve_llm_tokens(
        &self,
        tenant: &str,
        tokens: u64,
        limit: u64,
    ) -> Result<Option<LlmReservation>> {
        let c = Conn::get(&self.pool).await?;
        let sql = format!(
            "INSERT INTO llm_token_usage AS u (tenant, day, tokens) \
             SELECT $1::text, {TODAY}, $2::bigint WHERE $2::bigint <= $3::bigint \
             ON CONFLICT (tenant, day) DO UPDATE SET tokens = u.tokens + EXCLUDED.tokens \
             WHERE u.tokens + EXCLUDED.tokens <= $3::bigint \
             RETURNING day, tokens"
        );
        let rows = c
            .cached_query(&sql, &[&tenant, &param(tokens), &param(limit)])
            .await?;
        rows.first()
            .map(|r| -> Result<LlmReservation> {
                let day: i64 = r
                    .try_get(0)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let used: i64 = r
                    .try_get(1)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(LlmReservation {
                    day,
                    used: count(used),
                })
            })
            .transpose()
    }

    async fn settle_llm_tokens(
        &self,
        tenant: &str,
        day: i64,
        reserved: u64,
        used: u64,
    ) -> Result<()> {
        let c = Conn::get(&self.pool).await?;
        c.cached_execute(
            "UPDATE llm_token_usage SET tokens = greatest(0, tokens - $3::bigint + $4::bigint) \
             WHERE tenant = $1 AND day = $2",
            &[&tenant, &day, &param(reserved), &param(used)],
        )
        .await?;
        Ok(())
    }

    async fn llm_tokens_today(&self, tenant: &str) -> Result<u64> {
        let c = Conn::get(&self.pool).await?;
        let sql = format!("SELECT tokens FROM llm_token_usage WHERE tenant = $1 AND day = {TODAY}");
        let row = c.cached_query_opt(&sql, &[&tenant]).await?;
        Ok(match row {
            Some(r) => count(
                r.try_get(0)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
            None => 0,
        })
    }
}
