//! The PostgreSQL store: the production backend of the store traits, shared by any number
//! of gateway and worker processes (DESIGN §5). Tables are created by `migrations/*.sql`
//! through `crate::migrate`.
//!
//! Invariants kept here, with the same semantics as `RedbStore`:
//! - G1: every write is one committed PostgreSQL transaction before its future resolves
//!   (each pooled session forces `synchronous_commit` back on if the server turned it off).
//! - G3: every append, ledger change and snapshot write checks the job's fencing token
//!   under the job's row lock in the same transaction and refuses a stale one; a claim
//!   bumps the token. Time comes only from the database clock (`now()`), never from a
//!   worker. A job handed off at submission (`crate::handoff`, `submit`) is stored leased
//!   with token 1, its first grant, in the commit that stores it.
//! - Gap-free `seq` and the hash chain (G7): an append is written only if the job row
//!   still holds the seq (and token, chain head, time, status) it was planned against, and
//!   stores `payload` as the exact JSON text of `EventBody::payload()`, so the stored bytes
//!   are the hashed bytes and a read-back event verifies with `aetheris_proof::verify_chain`.
//!   The hashes are computed where the time is read, in the write statement
//!   (migrations/0013_append_chain.sql), and checked again by the writer.
//! - Group commit: `append_many` writes the whole batch with one statement; each append is
//!   planned (fence, seq, ledger, status, chain, timer: `aetheris_runtime::plan_append`,
//!   the same planner as the embedded store's) in memory *before* anything is written, so
//!   a rejected append writes nothing while the others commit. When this process knows
//!   every job of the batch (`known`: it wrote or claimed it last) the statement alone is
//!   the transaction, one round trip; otherwise BEGIN + row locks + ledger read come first
//!   (pipelined), then the statement with COMMIT pipelined behind it (`append`).
//! - Group commit across jobs: a single `append` goes through a batcher
//!   (`append::group_commit_worker`): appends queued while a transaction is in flight share the
//!   next one, so N concurrent jobs share one commit and one WAL flush, each still with
//!   its own checks. `append_stats` reports appends per transaction, and how many
//!   transactions were the one statement alone.
//! - Stale statements (DESIGN §8): every driver error goes through one mapper
//!   (`conn::error`), which clears the statement caches on SQLSTATE 0A000/26000, and
//!   cached statements outside a transaction are prepared again and retried once.
//! - Pooled sessions use generic plans with sequential scans and JIT off (`SESSION_SETUP`):
//!   re-planning the array statements on every call cost more than executing them.
//! - No deadlocks between writers: every statement that locks several job rows locks them
//!   in `job_id` order; `claim` never waits (`FOR UPDATE SKIP LOCKED`).
//!
//! Times are stored as `bigint` milliseconds since the epoch (the unit the hash chain
//! hashes). Event times are `max(now, job.updated_at)`, so they never go backwards within a
//! job even if transactions commit out of start order. Job ids are UUIDv7 stamped with the
//! database clock.
//!
//! Runtime caveat (DESIGN §8): deadpool-postgres runs each connection's I/O task on the
//! tokio runtime that created it, and a connection dies with that runtime. Call
//! `PgStore::connect` (which pre-warms the whole pool and starts the LISTEN task) on a
//! long-lived runtime — the process's main tokio runtime or a dedicated arbiter that lives
//! as long as the store — never on a short-lived per-request or per-actor arbiter.
//!
//! Wake-ups: `submit` and `release` call `pg_notify('aetheris_work', '')` inside their own
//! transaction (delivered at commit) and fire the local `Notify`; a dedicated, non-pooled
//! connection LISTENs on that channel, reconnects with backoff when it drops and fires the
//! hint after every (re)connect, since notifications sent while it was away are lost. The
//! hint is only a hint: workers also poll. A work notification sent by one of this
//! store's own connections is not fired again (`OwnBackends`): its local hint already was.
//!
//! Layout: one file per concern — `conn` (the only pool checkout and error mapper), `rows`
//! (row decoding), `listen` (LISTEN/NOTIFY), `clock` (the database clock and job ids),
//! `jobs`, `append` (group commit and the two ways a batch is written), `append_plan` (a
//! batch planned in memory, as the write's columns), `append_write` (the write statement),
//! `known` (what this process knows of the jobs it writes), `submit` (group submit),
//! `batch` (the batchers' fair queue), `leases`, `commands`, `tenants` (with evidence
//! policies), `users`, `audit`, `presence`, `transparency` (each tenant's log of finished
//! jobs), `retention` (deleting finished jobs past their tenant's retention).

use crate::fair::JobTenants;
use crate::handoff::Handoff;
use crate::{Result, StoreError};
use aetheris_runtime::JobId;
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime, Timeouts,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::NoTls;

/// The NOTIFY channel that carries "new work may be claimable".
pub const WORK_CHANNEL: &str = "aetheris_work";
/// `application_name` of the LISTEN connection (visible in `pg_stat_activity`).
pub const LISTENER_APP_NAME: &str = "aetheris-listen";

/// The database clock in ms since the epoch, as a SQL expression.
macro_rules! now_ms {
    () => {
        "(floor(extract(epoch FROM now()) * 1000)::bigint)"
    };
}

/// The statuses of a finished job (`JobStatus::is_terminal`), as an SQL list.
macro_rules! finished_statuses {
    () => {
        "('succeeded', 'failed', 'cancelled')"
    };
}

/// The columns of a `JobSummary`, in the order `summary_at` reads them.
macro_rules! job_cols {
    ($p:literal) => {
        concat!(
            $p,
            ".job_id, ",
            $p,
            ".tenant, ",
            $p,
            ".status, ",
            $p,
            ".idempotency_key, ",
            $p,
            ".last_seq, ",
            $p,
            ".created_at, ",
            $p,
            ".updated_at"
        )
    };
}

mod append;
mod append_plan;
mod append_write;
mod audit;
mod batch;
mod clock;
mod commands;
mod conn;
mod jobs;
mod known;
mod leases;
mod listen;
mod llm;
mod operations;
mod presence;
mod retention;
mod rows;
mod submit;
mod tenants;
#[cfg(test)]
mod test_jobs;
mod transparency;
mod users;

pub use append::AppendStats;
pub use commands::COMMAND_CHANNEL;
pub(crate) use conn::{describe, error};

/// Run on every new pooled session: READ COMMITTED is what the locking below relies on
/// (re-checked predicates after a row lock wait), and G1 needs synchronous commit; a
/// server-wide `off` is overridden, stronger settings (`remote_apply`, …) are kept. An
/// abandoned transaction must not hold job row locks for long.
///
/// Plans: every statement of this store is a point, range or `unnest`-array query driven by
/// an index, whose best plan does not depend on the parameter values; in `auto` mode
/// PostgreSQL re-plans the array statements on every call (measured: 0.1–0.5 ms of
/// planning per statement, more than their execution). So plans are generic (made once per
/// session and statement), and sequential and bitmap scans are off so that a plan made
/// while a table is still empty or unanalyzed (a fresh database) is not a cached scan of
/// everything for the session's life: a claim planned on a fresh database read a tenant's
/// whole backlog through a bitmap scan and sorted it, every time, to take its oldest few
/// (W6 on PostgreSQL: 1.28 ms of server time per claim with an 18,000-job backlog, 0.41
/// ms once it walks `jobs_claimable` in order; B's flood p50 20 → 10 ms). The test
/// `claims_walk_the_queue_in_order` keeps it so. JIT is off: it never pays for OLTP statements, and a disabled-seqscan
/// cost estimate would otherwise trigger it.
const SESSION_SETUP: &str = "SET default_transaction_isolation = 'read committed'; \
     SELECT set_config('synchronous_commit', 'on', false) \
     WHERE current_setting('synchronous_commit') = 'off'; \
     SET idle_in_transaction_session_timeout = '60s'; \
     SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
     SET enable_bitmapscan = off; SET jit = off";

/// The PostgreSQL store. Cheap to clone; clones share the pool and the listener, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    hint: Arc<Notify>,
    /// Job ids from `NOTIFY aetheris_cmd` (commands stored by any process).
    commands: tokio::sync::broadcast::Sender<JobId>,
    /// The group-commit queues of single appends (see `append::GroupCommit`).
    group: append::GroupCommit,
    /// The pool, what is known of the jobs written, and how appends were batched (see
    /// `append_stats`), as the append batchers share them.
    appender: append::Appender,
    _listener: Arc<ListenerGuard>,
    /// The tenant this store's last claim served last: the next claim's round robin
    /// starts after it (`CURSOR` in the claim statements), so claims with little room
    /// take turns between tenants instead of always serving the lowest tenant id.
    claim_cursor: Arc<Mutex<String>>,
    /// The tenants of jobs this store leased, so the batcher can serve tenants in turn.
    job_tenants: Arc<Mutex<JobTenants>>,
    /// The group-submit queue (see `submit::group_submit_worker`).
    submits: tokio::sync::mpsc::Sender<submit::QueuedSubmit>,
    /// Batches the group-submit workers stored (see `submit_batches`).
    submit_batches: Arc<AtomicU64>,
    /// Where this store's worker offers free slots to submissions (`crate::handoff`).
    handoff: Arc<Handoff>,
    /// Jobs stored handed off (see `handed_off`).
    handed_off: Arc<AtomicU64>,
}

/// Aborts the LISTEN task (and so closes its connection) when dropped.
struct ListenerGuard(tokio::task::AbortHandle);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (a libpq-style URL or key=value string) with a pool of
    /// `pool_size` connections, all opened now (pre-warmed) on the current tokio runtime,
    /// and starts the LISTEN task and the group-commit and group-submit batchers. Must be
    /// called on a long-lived runtime (module docs). Does not create tables: call
    /// [`PgStore::migrate`] (or `aetheris migrate`) first.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore> {
        let config = session_config(url)?;
        let size = pool_size.max(1);
        let own_backends = OwnBackends::default();
        let pool = pool(&config, size, own_backends.clone())?;
        // Pre-warm: open every connection now, on this (long-lived) runtime.
        let mut warm = Vec::with_capacity(size);
        for _ in 0..size {
            warm.push(conn::Conn::get(&pool).await?);
        }
        drop(warm);

        let hint = Arc::new(Notify::new());
        let mut listen_config = config;
        listen_config.application_name(LISTENER_APP_NAME);
        let (commands, _) = tokio::sync::broadcast::channel(1024);
        let task = tokio::spawn(listen::listen_loop(
            listen_config,
            own_backends,
            hint.clone(),
            commands.clone(),
        ));
        // The batchers run on this runtime too; they stop when the last clone drops.
        let job_tenants: Arc<Mutex<JobTenants>> = Arc::default();
        let appender = append::Appender {
            pool: pool.clone(),
            known: Arc::default(),
            stats: Arc::default(),
        };
        let group = append::start_group_commit(&appender, size, job_tenants.clone());
        let handoff: Arc<Handoff> = Arc::default();
        let handed_off: Arc<AtomicU64> = Arc::default();
        let (submits, submit_batches) = submit::start_group_submit(
            &submit::Submitting {
                pool: pool.clone(),
                hint: hint.clone(),
                handoff: handoff.clone(),
                known: appender.known.clone(),
                job_tenants: job_tenants.clone(),
                handed_off: handed_off.clone(),
            },
            size,
        );
        Ok(PgStore {
            pool,
            hint,
            commands,
            group,
            appender,
            _listener: Arc::new(ListenerGuard(task.abort_handle())),
            claim_cursor: Arc::default(),
            job_tenants,
            submits,
            submit_batches,
            handoff,
            handed_off,
        })
    }

    /// Applies pending migrations (see `crate::migrate`) and clears the statement caches
    /// of pooled connections, so no statement prepared against the old schema is reused.
    /// Safe to call from many processes at once. Returns the files this call applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let mut client = conn::Conn::get(&self.pool).await?;
        let applied = crate::migrate::run(&mut client).await;
        self.pool.manager().statement_caches.clear();
        applied
    }

    /// How this store's appends were batched so far (group commit).
    pub fn append_stats(&self) -> AppendStats {
        let stats = &self.appender.stats;
        AppendStats {
            appends: stats.appends.load(Relaxed),
            transactions: stats.transactions.load(Relaxed),
            one_statement: stats.one_statement.load(Relaxed),
        }
    }

    /// Group-submit batches stored so far (each: one statement and commit), for tests
    /// and the benchmark: fewer than the submissions when concurrent ones were batched.
    pub fn submit_batches(&self) -> u64 {
        self.submit_batches.load(Relaxed)
    }

    /// Jobs this store's submissions stored handed off to its worker's free slots
    /// (`crate::handoff`: leased in the commit that stored them, started with no claim),
    /// for tests and the benchmark.
    pub fn handed_off(&self) -> u64 {
        self.handed_off.load(Relaxed)
    }

    /// The connection pool, for operators' tooling and tests.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection (`conn::Conn`: the one checkout of this backend).
    async fn conn(&self) -> Result<conn::Conn> {
        conn::Conn::get(&self.pool).await
    }

    /// `conn::error` for this store's pool.
    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        error(e, Some(&self.pool))
    }
}

/// The session settings of `url`, with this store's defaults where the URL has none.
fn session_config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL url: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("aetheris");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // Notice a dead server (or a partition) on idle pooled and LISTEN connections
    // within a minute instead of the 2 h TCP default, unless the URL chose otherwise.
    config.keepalives(true);
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    Ok(config)
}

/// The server process ids of this store's pooled connections. Work notifications they
/// send (a submit, a release) were already turned into the local hint when they
/// committed, so the listener does not fire it a second time for them (each firing is a
/// claim statement).
#[derive(Clone, Default)]
pub(super) struct OwnBackends(Arc<Mutex<std::collections::HashSet<i32>>>);

impl OwnBackends {
    fn add(&self, pid: i32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
    }

    pub(super) fn contains(&self, pid: i32) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pid)
    }
}

/// The pool: `size` connections, each set up with `SESSION_SETUP` when it is opened, its
/// server process id noted in `own`.
fn pool(config: &tokio_postgres::Config, size: usize, own: OwnBackends) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        // The most recently returned connection first: at low load one or two server
        // backends do all the work with warm caches, instead of every backend in turn
        // (FIFO) each starting cold (issue 15: measured in docs/benchmarks.md).
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_secs(30)),
            create: Some(Duration::from_secs(15)),
            recycle: Some(Duration::from_secs(5)),
        })
        .post_create(Hook::async_fn(move |client, _| {
            let own = own.clone();
            Box::pin(async move {
                client
                    .batch_execute(SESSION_SETUP)
                    .await
                    .map_err(HookError::Backend)?;
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .map_err(HookError::Backend)?
                    .try_get(0)
                    .map_err(HookError::Backend)?;
                own.add(pid);
                Ok(())
            })
        }))
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL pool: {e}")))
}

/// Wakes everyone waiting on `hint` now, and the next one to wait.
fn fire(hint: &Notify) {
    hint.notify_waiters();
    hint.notify_one();
}
