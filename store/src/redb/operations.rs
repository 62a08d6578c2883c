//! The operator's figures on the embedded store: one read transaction over the job rows
//! (a job is backlog when it is in the claimable index without a live lease; a waiting
//! job's ledger rows are read for unknown outcomes). The embedded store has no SQL
//! migrations, so it reports none.

use super::tables::{dec, tenant_key, JobRow, JOBS, LEDGER, RUNNABLE};
use super::{db_err, now_ms, RedbStore};
use crate::{OperationalFigures, Operations, Result, StoreError, TenantBacklog};
use ::redb::{ReadableDatabase, ReadableTable};
use aetheris_runtime::{JobStatus, LedgerRow, LedgerStatus};
use async_trait::async_trait;
use std::collections::BTreeMap;

#[async_trait]
impl Operations for RedbStore {
    async fn operational_figures(&self) -> Result<OperationalFigures> {
        self.read(|db| {
            let now = now_ms();
            let tx = db.begin_read().map_err(db_err)?;
            let jobs = tx.open_table(JOBS).map_err(db_err)?;
            let runnable = tx.open_table(RUNNABLE).map_err(db_err)?;
            let ledger = tx.open_table(LEDGER).map_err(db_err)?;
            let mut by_tenant: BTreeMap<String, (TenantBacklog, i64, i64)> = BTreeMap::new();
            for item in jobs.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let row: JobRow = dec(v.value())?;
                let id = k.value().to_vec();
                let claimable = runnable
                    .get(tenant_key(&row.tenant, &id).as_slice())
                    .map_err(db_err)?
                    .is_some();
                let unleased = row.lease_owner.is_none() || row.lease_expires_ms <= now;
                let backlog = claimable && unleased;
                let mut unknown = Vec::new();
                if row.status == JobStatus::Waiting {
                    let mut hi = id.clone();
                    hi.push(0xff);
                    for l in ledger
                        .range::<&[u8]>(id.as_slice()..hi.as_slice())
                        .map_err(db_err)?
                    {
                        let (_, lv) = l.map_err(db_err)?;
                        let lr: LedgerRow = dec(lv.value())?;
                        if lr.status == LedgerStatus::OutcomeUnknown {
                            unknown.push(lr.updated_at_ms);
                        }
                    }
                }
                if !backlog && unknown.is_empty() {
                    continue;
                }
                let (b, oldest_runnable, oldest_unknown) =
                    by_tenant.entry(row.tenant.clone()).or_insert_with(|| {
                        let b = TenantBacklog {
                            tenant: row.tenant.clone(),
                            ..TenantBacklog::default()
                        };
                        (b, i64::MAX, i64::MAX)
                    });
                if backlog {
                    b.runnable += 1;
                    *oldest_runnable = (*oldest_runnable).min(row.updated_at_ms);
                }
                for at in unknown {
                    b.outcome_unknown += 1;
                    *oldest_unknown = (*oldest_unknown).min(at);
                }
            }
            let age = |oldest: i64| {
                if oldest == i64::MAX {
                    0
                } else {
                    u64::try_from(now - oldest).unwrap_or(0)
                }
            };
            let tenants = by_tenant
                .into_values()
                .map(|(mut b, r, u)| {
                    b.runnable_oldest_ms = age(r);
                    b.outcome_unknown_oldest_ms = age(u);
                    b
                })
                .collect();
            Ok::<_, StoreError>(OperationalFigures {
                tenants,
                migrations_applied: None,
            })
        })
        .await
    }
}
