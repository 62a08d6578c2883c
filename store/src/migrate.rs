//! The PostgreSQL migration runner: owns the schema history of the production store.
//!
//! Invariants kept here:
//! - Forward-only: the files in `migrations/` are embedded at build time (`MIGRATIONS`, in
//!   name order) and applied in that order, each exactly once.
//! - No races: the whole run — history check and every pending file — is ONE transaction
//!   that first takes `pg_advisory_xact_lock(LOCK_KEY)`, so processes starting together
//!   apply each file once (the others wait, then find nothing to do), and a failed file
//!   leaves the schema as it was. Files must therefore not use statements that cannot run
//!   in a transaction (e.g. `CREATE INDEX CONCURRENTLY`).
//! - No silent drift: each applied file's name, SHA-256 and time (database clock) are
//!   recorded in `aetheris_migrations`; if an applied file's content changed, the run fails
//!   naming the file. A database with migrations this build does not know (a newer version
//!   migrated it) is accepted with a warning, so rolling upgrades work.

use crate::pg::{describe, error};
use crate::{Result, StoreError};
use ring::digest::{digest, SHA256};

/// A driver error of the migration transaction (the caller clears statement caches after
/// migrating, so none are cleared here).
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    error(e, None)
}

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file name in `migrations/`, e.g. `0001_core.sql`; applied in name order.
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration of this build, in order. A test checks this list against the
/// directory, so a new file cannot be forgotten here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_core.sql",
        sql: include_str!("../../migrations/0001_core.sql"),
    },
    Migration {
        name: "0002_commands.sql",
        sql: include_str!("../../migrations/0002_commands.sql"),
    },
    Migration {
        name: "0003_timers.sql",
        sql: include_str!("../../migrations/0003_timers.sql"),
    },
    Migration {
        name: "0004_tenants.sql",
        sql: include_str!("../../migrations/0004_tenants.sql"),
    },
    Migration {
        name: "0005_audit.sql",
        sql: include_str!("../../migrations/0005_audit.sql"),
    },
    Migration {
        name: "0006_users.sql",
        sql: include_str!("../../migrations/0006_users.sql"),
    },
    Migration {
        name: "0007_claim_index.sql",
        sql: include_str!("../../migrations/0007_claim_index.sql"),
    },
    Migration {
        name: "0008_processes.sql",
        sql: include_str!("../../migrations/0008_processes.sql"),
    },
    Migration {
        name: "0009_default_tenant.sql",
        sql: include_str!("../../migrations/0009_default_tenant.sql"),
    },
    Migration {
        name: "0010_transparency.sql",
        sql: include_str!("../../migrations/0010_transparency.sql"),
    },
    Migration {
        name: "0011_process_reports.sql",
        sql: include_str!("../../migrations/0011_process_reports.sql"),
    },
    Migration {
        name: "0012_llm.sql",
        sql: include_str!("../../migrations/0012_llm.sql"),
    },
    Migration {
        name: "0013_append_chain.sql",
        sql: include_str!("../../migrations/0013_append_chain.sql"),
    },
];

/// The advisory lock key held while migrating ("aetheris" in ASCII).
pub const LOCK_KEY: i64 = 0x6165_7468_6572_6973;

const HISTORY_DDL: &str = "CREATE TABLE IF NOT EXISTS aetheris_migrations (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Hex SHA-256 of a migration's text, as recorded in `aetheris_migrations.checksum`.
pub fn checksum(sql: &str) -> String {
    hex::encode(digest(&SHA256, sql.as_bytes()))
}

/// Applies the pending `MIGRATIONS` on `client` under the advisory lock; returns the
/// names it applied (empty when the schema was already current).
pub async fn run(client: &mut tokio_postgres::Client) -> Result<Vec<String>> {
    run_migrations(client, MIGRATIONS).await
}

/// `run` with an explicit list (for tests of the runner itself).
pub async fn run_migrations(
    client: &mut tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<Vec<String>> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(HISTORY_DDL).await.map_err(pg_err)?;
    let rows = tx
        .query("SELECT name, checksum FROM aetheris_migrations", &[])
        .await
        .map_err(pg_err)?;
    let mut recorded = std::collections::BTreeMap::new();
    for r in &rows {
        let name: String = r
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("aetheris_migrations.name: {e}")))?;
        let sum: String = r
            .try_get(1)
            .map_err(|e| StoreError::Corrupt(format!("aetheris_migrations.checksum: {e}")))?;
        recorded.insert(name, sum);
    }

    let mut pending = Vec::new();
    for m in migrations {
        let sum = checksum(m.sql);
        match recorded.remove(m.name) {
            Some(old) if old == sum => {}
            Some(old) => {
                return Err(StoreError::Backend(format!(
                    "migration {} was changed after it was applied (recorded checksum {old}, \
                     this build has {sum}); migrations are forward-only: restore the file \
                     and add a new one",
                    m.name
                )))
            }
            None => pending.push((m, sum)),
        }
    }
    for unknown in recorded.keys() {
        tracing::warn!(
            migration = %unknown,
            "aetheris: database has a migration this build does not know (newer version?)"
        );
    }

    let mut applied = Vec::with_capacity(pending.len());
    for (m, sum) in pending {
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Backend(format!("migration {} failed: {}", m.name, describe(&e)))
        })?;
        tx.execute(
            "INSERT INTO aetheris_migrations (name, checksum) VALUES ($1, $2)",
            &[&m.name, &sum],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(migration = %m.name, "aetheris: applied migration");
        applied.push(m.name.to_string());
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_directory_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let names: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_string()).collect();
        assert_eq!(
            names, files,
            "MIGRATIONS must list every migrations/*.sql in order"
        );
        for m in MIGRATIONS {
            let on_disk = std::fs::read_to_string(dir.join(m.name)).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            checksum(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // FIPS 180-2 test vector: checksums recorded before the move to ring still match.
        assert_eq!(
            checksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
