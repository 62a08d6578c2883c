//! The embedded store on redb, for `aetheris dev` and single-machine use.
//!
//! All writes go through one writer thread that drains its queue into a single redb write
//! transaction and commits it with `Durability::Immediate` (fsync) before answering anyone:
//! group commit across jobs, each operation keeping its own fence and seq checks (G1, G3).
//! The writer serves its queue fairly (`crate::fair::FairQueue`): the deployment's
//! operations first, then tenants in turn (each capped per commit while several are
//! active), so one tenant's flood of writes does not queue ahead of another tenant's next
//! write. Claims run last in their commit, so they can lease jobs submitted in it.
//! An operation validates everything before it writes, so one rejected operation never
//! leaves partial writes in the shared transaction. Reads use redb's MVCC read
//! transactions on the blocking pool. The writer's clock is the store clock (monotonic
//! within the process).
//!
//! Layout: one file per concern — `tables` (table definitions, row and key codecs), `writer`
//! (the writer thread and its operations), `jobs`, `leases` (claims and timers),
//! `commands`, `tenants` (with evidence policies), `users`, `audit`, `presence` (live
//! processes and their reports, in memory), `operations` (backlog and unknown outcomes), `transparency` (each tenant's log of finished jobs), `retention` (deleting finished jobs past their tenant's retention). Every
//! append is planned by `aetheris_runtime::plan_append`, the planner PostgreSQL uses too.

mod audit;
mod commands;
mod jobs;
mod leases;
mod llm;
mod operations;
mod presence;
mod retention;
mod tables;
mod tenants;
mod transparency;
mod users;
mod writer;

use crate::{Result, Scope, StoreError};
use ::redb::Database;
use aetheris_runtime::JobId;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};
use writer::WriteOp;

pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    /// `None` only while dropping (see `Drop`).
    writer: Option<mpsc::Sender<WriteOp>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    hint: Arc<Notify>,
    commands: tokio::sync::broadcast::Sender<JobId>,
    presence: presence::LocalPresence,
}

/// Fix (found by the conformance suite's reopen test): the writer thread holds its own
/// `Arc<Database>`, and used to outlive the store for a moment after a drop, so reopening
/// the same file right away (a restart in the same process) failed with "Database already
/// open". Dropping the store now closes the queue and waits for the writer to finish its
/// last commit (a few ms at most), so the file lock is released when the drop returns.
impl Drop for RedbStore {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(t) = self.writer_thread.take() {
            if t.join().is_err() {
                tracing::error!("redb writer thread panicked");
            }
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, creating its tables.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
            }
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        tables::create(&db)?;
        let db = Arc::new(db);
        let hint = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel();
        let (commands, _) = tokio::sync::broadcast::channel(1024);
        let writer_thread = {
            let (db, hint, commands) = (db.clone(), hint.clone(), commands.clone());
            std::thread::Builder::new()
                .name("aetheris-redb-writer".into())
                .spawn(move || writer::writer_loop(db, rx, hint, commands))
                .map_err(|e| StoreError::Backend(format!("start the writer thread: {e}")))?
        };
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            hint,
            commands,
            presence: presence::LocalPresence::default(),
        })
    }

    /// Queues a write for the writer thread; its answer comes after the commit.
    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store is closing".into()))?
            .send(make(tx))
            .map_err(|_| StoreError::Backend("writer thread is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("writer thread dropped the request".into()))?
    }

    /// Runs a read on the blocking pool (redb reads are MVCC snapshots).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("read task: {e}")))?
    }
}

/// The writer's clock (ms since the epoch), the store clock of this backend.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The one mapper of redb errors: an I/O failure is `Unavailable` (transient, e.g. a full
/// disk), anything else `Backend`.
fn db_err<E: Into<::redb::Error>>(e: E) -> StoreError {
    match e.into() {
        ::redb::Error::Io(io) => StoreError::unavailable(format!("redb: {io}"), io),
        other => StoreError::Backend(other.to_string()),
    }
}

/// The tenant a scoped read is limited to (`None`: every tenant), owned for the reader.
fn scope_tenant(scope: Scope<'_>) -> Option<String> {
    match scope {
        Scope::Tenant(t) => Some(t.to_string()),
        Scope::System => None,
    }
}
