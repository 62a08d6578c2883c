//! The only way this backend talks to PostgreSQL: one pool checkout ([`Conn::get`]) and one
//! mapper of driver errors ([`error`]), used by every concern.
//!
//! Invariants kept here:
//! - Stale statements (DESIGN §8): a statement cached on a connection before a migration
//!   changed its tables fails with SQLSTATE 0A000 ("cached plan must not change result
//!   type") or 26000. Every such error clears the statement caches of all pooled
//!   connections, and [`Conn::cached_query`] and [`Conn::cached_execute`] (cached statements outside a
//!   transaction) re-prepare and run the statement once more: a failed autocommit statement
//!   changed nothing, so the retry is safe, and a request does not fail because another
//!   process migrated the schema under it.
//! - Transient failures (no connection, a connection lost or closed, the server shutting
//!   down or out of resources, a serialization failure, a stale statement) are
//!   `StoreError::Unavailable` with the driver error as source; errors the server gives to
//!   a statement it refuses are `Backend`, with the SQLSTATE and message.

use crate::{Result, StoreError};
use deadpool_postgres::{Object, Pool};
use std::ops::{Deref, DerefMut};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// A pooled connection, with the pool it came from (whose statement caches an error may
/// have to clear).
pub(crate) struct Conn {
    client: Object,
    pool: Pool,
}

impl Conn {
    /// Checks a connection out of the pool.
    pub(crate) async fn get(pool: &Pool) -> Result<Conn> {
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::unavailable(format!("PostgreSQL connection: {e}"), e))?;
        Ok(Conn {
            client,
            pool: pool.clone(),
        })
    }

    /// [`error`] for this connection's pool.
    pub(crate) fn err(&self, e: tokio_postgres::Error) -> StoreError {
        error(e, Some(&self.pool))
    }

    /// Runs `sql` as a cached prepared statement outside a transaction; a stale statement
    /// is re-prepared and run once more (module docs).
    pub(crate) async fn cached_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        match self.try_query(sql, params).await {
            Err(e) if is_stale_statement(&e) => {
                self.pool.manager().statement_caches.clear();
                self.try_query(sql, params).await.map_err(|e| self.err(e))
            }
            other => other.map_err(|e| self.err(e)),
        }
    }

    /// [`Conn::cached_query`] for a statement that returns at most one row.
    pub(crate) async fn cached_query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let mut rows = self.cached_query(sql, params).await?;
        if rows.len() > 1 {
            return Err(StoreError::Backend(format!(
                "expected at most one row, got {}",
                rows.len()
            )));
        }
        Ok(rows.pop())
    }

    /// [`Conn::cached_query`] for a statement that returns exactly one row.
    pub(crate) async fn cached_query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        self.cached_query_opt(sql, params)
            .await?
            .ok_or_else(|| StoreError::Backend("expected one row, got none".into()))
    }

    /// [`Conn::cached_query`] for a statement whose rows are not needed; the rows it changed.
    pub(crate) async fn cached_execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        match self.try_execute(sql, params).await {
            Err(e) if is_stale_statement(&e) => {
                self.pool.manager().statement_caches.clear();
                self.try_execute(sql, params).await.map_err(|e| self.err(e))
            }
            other => other.map_err(|e| self.err(e)),
        }
    }

    async fn try_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.client.prepare_cached(sql).await?;
        self.client.query(&st, params).await
    }

    async fn try_execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let st = self.client.prepare_cached(sql).await?;
        self.client.execute(&st, params).await
    }

    /// The pooled object, for a caller that manages it itself (the append transaction).
    pub(crate) fn into_object(self) -> Object {
        self.client
    }
}

/// The driver's client, for transactions and pipelined statements (map their errors with
/// [`Conn::err`]).
impl Deref for Conn {
    type Target = Object;
    fn deref(&self) -> &Object {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Object {
        &mut self.client
    }
}

/// The one mapper of driver errors (module docs). With `pool`, a stale statement clears
/// the statement caches of all its connections, so the next use re-prepares (without one,
/// the caller clears them: the migration runner's caller does, after migrating).
pub(crate) fn error(e: tokio_postgres::Error, pool: Option<&Pool>) -> StoreError {
    if let (true, Some(pool)) = (is_stale_statement(&e), pool) {
        pool.manager().statement_caches.clear();
    }
    let message = describe(&e);
    if is_transient(&e) {
        StoreError::unavailable(message, e)
    } else {
        StoreError::Backend(message)
    }
}

/// A statement prepared before a schema change (DESIGN §8).
fn is_stale_statement(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        *code == SqlState::FEATURE_NOT_SUPPORTED || *code == SqlState::INVALID_SQL_STATEMENT_NAME
    })
}

/// Whether the same statement may succeed later: no answer from the server (connection
/// lost or closed, I/O), or an answer that says so (connection exceptions, shutdown or
/// restart, insufficient resources, serialization failure or deadlock, stale statement).
fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || is_stale_statement(e)
        }
        None => e.is_closed() || caused_by_io(e),
    }
}

fn caused_by_io(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The message of a driver error: SQLSTATE, server message and detail, or the I/O cause.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut msg = format!("PostgreSQL error {}: {}", db.code().code(), db.message());
            if let Some(d) = db.detail() {
                msg.push_str(&format!(" ({d})"));
            }
            msg
        }
        None => {
            let mut msg = format!("PostgreSQL: {e}");
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        }
    }
}
