//! The PostgreSQL store: the production backend of `Store`, shared by any number of gateway
//! and worker processes (DESIGN §5). Tables are created by `migrations/*.sql` through
//! `crate::migrate`.
//!
//! Invariants kept here, with the same semantics as `RedbStore`:
//! - G1: every write is one committed PostgreSQL transaction before its future resolves
//!   (each pooled session forces `synchronous_commit` back on if the server turned it off).
//! - G3: every append, ledger change and snapshot write re-reads the job's fencing token
//!   under a row lock in the same transaction and refuses a stale one; a claim bumps the
//!   token. Time comes only from the database clock (`now()`), never from a worker.
//! - Gap-free `seq` and the hash chain (G7): an append checks `expected_last_seq` against
//!   `jobs.last_seq` under the row lock, and stores `payload` as the exact JSON text of
//!   `EventBody::payload()`, so the stored bytes are the hashed bytes and a read-back event
//!   verifies with `aetheris_proof::verify_chain`.
//! - Group commit: `append_many` runs one transaction for the whole batch; each append is
//!   planned (fence, seq, ledger, status, chain, timer: `aetheris_runtime::plan_append`,
//!   the same planner as the embedded store's) in memory against the locked rows *before*
//!   anything is written, so a rejected append writes nothing while the others commit.
//!   One append transaction is two round trips: BEGIN + row locks + ledger read pipelined, then one multi-row
//!   `UNNEST` write statement with COMMIT pipelined behind it (`append_tx`).
//! - Group commit across jobs: a single `append` goes through a batcher
//!   (`group_commit_worker`): appends queued while a transaction is in flight share the
//!   next one, so N concurrent jobs share one commit and one WAL flush, each still with
//!   its own checks. `append_stats` reports appends per transaction.
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
//! hint is only a hint: workers also poll.

use crate::fair::{FairQueue, JobTenants};
use crate::{
    append_refused, Append, AuditEntry, AuditFilter, AuditRecord, JobSummary, Lease, LedgerEntry,
    ListFilter, NewJob, Result, RunningCaps, Scope, StatusCount, Store, StoreError,
};
use aetheris_runtime::chain::{parts_around_time, GENESIS};
use aetheris_runtime::{
    plan_append, EffectClass, EventBody, JobHead, JobId, JobStatus, LedgerRow, LedgerStatus,
    RecordedEvent, TimerChange,
};
use async_trait::async_trait;
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

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

const NOW_SQL: &str = concat!("SELECT ", now_ms!());

/// Group submit: every new job of the batch (its row, its `job_submitted` event, its
/// audit row when `a_tenant` is set) in one statement and one commit, one round trip.
/// The database clock stamps them all (`recorded_at`, `created_at`, the audit time), and
/// each event's hash is computed here, around that clock: the caller sends the canonical
/// bytes before the time (`head`: prev hash, job id, seq) and after it (`tail`: kind
/// length, kind, payload digest; see `aetheris_proof::canonical_header`), and
/// `sha256(head ‖ int8send(now) ‖ tail)` is exactly `event_hash` (big-endian i64). A key
/// already taken (or twice in the batch) inserts nothing for that entry; the caller looks
/// the winner up. Returns the ids inserted, each with the clock.
const SUBMIT_BATCH_INSERT_SQL: &str = concat!(
    "WITH clock AS (SELECT ",
    now_ms!(),
    " AS now_ms),
input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                         $6::text[], $7::text[], $8::text[], $9::text[])
        AS i(job_id, tenant, key, head, tail, payload, a_tenant, a_actor, a_action)
), stamped AS MATERIALIZED (
    SELECT i.job_id, i.tenant, i.key, i.payload, i.a_tenant, i.a_actor, i.a_action,
           c.now_ms, sha256(i.head || int8send(c.now_ms) || i.tail) AS hash
    FROM input i, clock c
), j AS (
    INSERT INTO jobs (job_id, tenant, status, idempotency_key, last_seq, last_hash,
                      created_at, updated_at, token)
    SELECT job_id, tenant, 'queued', key, 1, hash, now_ms, now_ms, 0 FROM stamped
    ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING job_id
), e AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT s.job_id, 1, s.now_ms, 'job_submitted', s.payload, $10, s.hash
    FROM stamped s JOIN j ON j.job_id = s.job_id
    RETURNING job_id, recorded_at
), a AS (
    INSERT INTO access_audit_log (at, tenant, actor, action, target, result)
    SELECT s.now_ms, s.a_tenant, s.a_actor, s.a_action, s.job_id::text, 'ok'
    FROM stamped s JOIN e ON e.job_id = s.job_id WHERE s.a_tenant IS NOT NULL
)
SELECT e.job_id, e.recorded_at, pg_notify('aetheris_work', '') FROM e"
);

const SUBMIT_EXISTING_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM jobs j WHERE j.tenant = $1 AND j.idempotency_key = $2"
);

const GET_JOB_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM jobs j WHERE j.job_id = $1 AND ($2::text IS NULL OR j.tenant = $2)"
);

/// A tenant's jobs, newest first: the claimable and the settled ones from their own
/// partial indexes (`jobs_claimable`, `jobs_settled`), merged (see
/// migrations/0007_claim_index.sql for why no index covers both).
const LIST_TENANT_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM ((SELECT * FROM jobs WHERE tenant = $1 AND job_id < $2 AND claimable",
    " AND ($3::text IS NULL OR status = $3) ORDER BY job_id DESC LIMIT $4)",
    " UNION ALL (SELECT * FROM jobs WHERE tenant = $1 AND job_id < $2 AND NOT claimable",
    " AND ($3::text IS NULL OR status = $3) ORDER BY job_id DESC LIMIT $4)) j",
    " ORDER BY j.job_id DESC LIMIT $4"
);

const LIST_SYSTEM_SQL: &str = concat!(
    "SELECT ",
    job_cols!("j"),
    " FROM jobs j WHERE j.job_id < $1 AND ($2::text IS NULL OR j.status = $2)",
    " ORDER BY j.job_id DESC LIMIT $3"
);

const COUNT_SQL: &str = "SELECT tenant, status, count(*) FROM jobs \
     GROUP BY tenant, status ORDER BY tenant, status COLLATE \"C\"";

const READ_EVENTS_SQL: &str = "\
SELECT e.seq, e.recorded_at, e.kind, e.payload, e.prev_hash, e.hash
FROM jobs j
LEFT JOIN LATERAL (
    SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM events
    WHERE job_id = j.job_id AND seq > $2 ORDER BY seq LIMIT $3
) e ON true
WHERE j.job_id = $1 AND ($4::text IS NULL OR j.tenant = $4)
ORDER BY e.seq";

/// `load_job` in one statement (so one snapshot of the database: the events continue the
/// snapshot returned, even if a newer one is stored meanwhile). Rows are tagged by `part`:
/// `s` the newest snapshot (seq, blob in `b1`), `e` an event (the columns of
/// `READ_EVENTS_SQL`), `c` a pending command (id, created_at, body in `txt`).
const LOAD_JOB_SQL: &str = "\
WITH s AS (SELECT seq, blob FROM snapshots WHERE job_id = $1 ORDER BY seq DESC LIMIT 1)
SELECT 's'::text AS part, s.seq AS num, NULL::bigint AS at, NULL::text AS kind,
       NULL::text AS txt, s.blob AS b1, NULL::bytea AS b2
FROM s
UNION ALL
(SELECT 'e', e.seq, e.recorded_at, e.kind, e.payload, e.prev_hash, e.hash FROM events e
 WHERE e.job_id = $1 AND e.seq > COALESCE((SELECT seq FROM s), 0) ORDER BY e.seq LIMIT $2)
UNION ALL
(SELECT 'c', c.id, c.created_at, NULL, c.body, NULL, NULL FROM commands c
 WHERE c.job_id = $1 AND c.applied_at IS NULL ORDER BY c.id)";

const LOCK_JOBS_SQL: &str = concat!(
    "SELECT job_id, status, last_seq, last_hash, token, updated_at, ",
    now_ms!(),
    " FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE"
);

const LEDGER_FOR_JOBS_SQL: &str = "SELECT job_id, step, invocation_key, attempt, effect, status, \
     updated_at FROM ledger WHERE job_id = ANY($1)";

/// All writes of an append transaction in one statement: the events, the ledger rows and
/// the job rows (fenced again by token), each job's wake-up time kept or replaced as its
/// appends' planned `TimerChange` says (`wake_keep`, `wake_at`). The final SELECT divides by zero — failing the
/// statement, so the COMMIT pipelined behind it rolls back — unless every locked job row
/// the batch changed was updated (it cannot be otherwise while the rows are locked).
const APPEND_WRITE_SQL: &str = "\
WITH ev AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::bytea[], $7::bytea[])
), led AS (
    INSERT INTO ledger (job_id, step, invocation_key, attempt, effect, status, updated_at)
    SELECT * FROM unnest($8::uuid[], $9::text[], $10::text[], $11::bigint[], $12::text[],
                         $13::text[], $14::bigint[])
    ON CONFLICT (job_id, step) DO UPDATE SET
        invocation_key = EXCLUDED.invocation_key, attempt = EXCLUDED.attempt,
        effect = EXCLUDED.effect, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
), upd AS (
    UPDATE jobs AS j
    SET status = u.status, last_seq = u.last_seq, last_hash = u.last_hash,
        updated_at = u.updated_at,
        wake_at = CASE WHEN u.wake_keep THEN j.wake_at ELSE u.wake_at END,
        wake_due = false
    FROM unnest($15::uuid[], $16::bigint[], $17::text[], $18::bigint[], $19::bytea[],
                $20::bigint[], $21::bool[], $22::bigint[])
        AS u(job_id, token, status, last_seq, last_hash, updated_at, wake_keep, wake_at)
    WHERE j.job_id = u.job_id AND j.token = u.token
    RETURNING 1
)
SELECT 1 / (CASE WHEN (SELECT count(*) FROM upd) = cardinality($15::uuid[]) THEN 1 ELSE 0 END)";

/// Transaction control as prepared statements, so they pipeline with the statements of
/// the transaction (one round trip for BEGIN + lock + ledger read, one for write + COMMIT).
const BEGIN_SQL: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
const COMMIT_SQL: &str = "COMMIT";

/// Marks parked jobs whose timer is due as claimable (uses the `jobs_due` index).
const SWEEP_DUE_SQL: &str = concat!(
    "UPDATE jobs SET wake_due = true WHERE status = 'waiting' AND wake_at IS NOT NULL ",
    "AND NOT wake_due AND wake_at <= ",
    now_ms!()
);

const SNAPSHOT_SQL: &str = "\
WITH j AS (
    SELECT token, last_seq FROM jobs WHERE job_id = $1 FOR SHARE
), ins AS (
    INSERT INTO snapshots (job_id, seq, blob)
    SELECT $1, $3, $4 FROM j WHERE j.token = $2 AND $3 <= j.last_seq
    ON CONFLICT (job_id, seq) DO UPDATE SET blob = EXCLUDED.blob
    RETURNING 1
)
SELECT j.token, j.last_seq, (SELECT count(*) FROM ins) FROM j";

const LATEST_SNAPSHOT_SQL: &str = "SELECT seq, blob FROM snapshots \
     WHERE job_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1";

/// Claim: walk the tenants that have runnable jobs (a loose index scan of
/// `jobs_claimable`), take each tenant's oldest claimable jobs, rank them round robin
/// (rank within tenant, then tenant — starting after `CURSOR`, the tenant this store's
/// previous claim served last, so claims take turns), lock the best $10 with SKIP
/// LOCKED (re-checking claimability on the locked row version) and grant them. `{pool}`
/// is a literal so the planner sees the small row counts even with a generic plan; it
/// comes from the claim's size class (`claim_sql`), and the exact number of leases is $10,
/// so a worker whose free slots vary prepares a handful of claim statements per
/// connection, not one per slot count (each a parse and a plan, 4-5 ms under load).
///
/// Per-tenant caps on running jobs (`RunningCaps`): each tenant offers at most
/// `cap - running` candidates, where `running` counts its claimable jobs with a live lease
/// (`jobs_leased`; not computed at all when no cap is set). $3/$4 are the capped tenants
/// and their caps, $5 the default cap (NULL = none), $6 the cursor, $7/$8 the tenants
/// limited in this claim only (`RunningCaps::this_claim`) and their limits, $9 the limit of
/// this claim for the other tenants (NULL = none). With caps, run only
/// inside a transaction that holds `CLAIM_LOCK_SQL`, so no two claims count at once (see
/// `claim_within`).
const CLAIM_SQL_TEMPLATE: &str = "\
WITH RECURSIVE clock AS (SELECT NOW_MS AS now_ms),
tenants AS (
    (SELECT tenant FROM jobs WHERE claimable ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant FROM jobs j
            WHERE j.claimable AND j.tenant > t.tenant
            ORDER BY j.tenant LIMIT 1)
    FROM tenants t WHERE t.tenant IS NOT NULL
),
running AS (
    SELECT j.tenant, count(*) AS n FROM jobs j, clock
    WHERE j.lease_owner IS NOT NULL AND j.claimable AND j.lease_expires_at > clock.now_ms
      AND ($5::bigint IS NOT NULL OR cardinality($3::text[]) > 0)
    GROUP BY j.tenant
),
budget AS (
    SELECT t.tenant,
           LEAST(COALESCE(caps.cap, $5::bigint) - COALESCE(r.n, 0),
                 COALESCE(here.n, $9::bigint)) AS budget
    FROM tenants t
    LEFT JOIN unnest($3::text[], $4::bigint[]) AS caps(tenant, cap) ON caps.tenant = t.tenant
    LEFT JOIN unnest($7::text[], $8::bigint[]) AS here(tenant, n) ON here.tenant = t.tenant
    LEFT JOIN running r ON r.tenant = t.tenant
    WHERE t.tenant IS NOT NULL
),
cand AS (
    SELECT c.job_id, c.tenant, c.rn FROM (
        SELECT c.job_id, c.tenant, b.budget,
               row_number() OVER (PARTITION BY c.tenant ORDER BY c.job_id) AS rn
        FROM budget b CROSS JOIN LATERAL (
            SELECT j.job_id, j.tenant FROM jobs j, clock
            WHERE j.tenant = b.tenant AND j.claimable
              AND (j.lease_owner IS NULL OR j.lease_expires_at <= clock.now_ms)
            ORDER BY j.job_id LIMIT {pool}
        ) c
        WHERE b.budget IS NULL OR b.budget > 0
    ) c
    WHERE c.budget IS NULL OR c.rn <= c.budget
    ORDER BY c.rn, (c.tenant <= CURSOR), c.tenant, c.job_id LIMIT {pool}
),
picked AS (
    SELECT j.job_id, c.rn, c.tenant FROM cand c JOIN jobs j ON j.job_id = c.job_id, clock
    WHERE j.claimable
      AND (j.lease_owner IS NULL OR j.lease_expires_at <= clock.now_ms)
    ORDER BY c.rn, (c.tenant <= CURSOR), c.tenant, j.job_id
    LIMIT $10
    FOR UPDATE OF j SKIP LOCKED
),
granted AS (
    UPDATE jobs SET token = jobs.token + 1, lease_owner = $1,
                    lease_expires_at = clock.now_ms + $2
    FROM picked, clock WHERE jobs.job_id = picked.job_id
    RETURNING jobs.job_id, jobs.tenant, jobs.token, jobs.lease_expires_at, jobs.last_seq,
              jobs.pending_commands
)
{tail}";

/// The end of a plain claim: the leases, in the order granted.
const CLAIM_TAIL: &str = "\
SELECT g.job_id, g.tenant, g.token, g.lease_expires_at
FROM granted g JOIN picked p ON p.job_id = g.job_id
ORDER BY p.rn, (p.tenant <= CURSOR), p.tenant, g.job_id";

/// The end of `claim_and_load`: each lease with its job's events, one row per event
/// (columns 4.. as in `READ_EVENTS_SQL`, NULL when not preloaded), for jobs with at most
/// `PRELOAD_MAX_EVENTS` events and no pending command; column 4 is the job's `last_seq`
/// as updated (a load whose last event is older is dropped: see `claim_and_load`).
const CLAIM_LOAD_TAIL: &str = "\
SELECT g.job_id, g.tenant, g.token, g.lease_expires_at, g.last_seq,
       e.seq, e.recorded_at, e.kind, e.payload, e.prev_hash, e.hash
FROM granted g JOIN picked p ON p.job_id = g.job_id
LEFT JOIN LATERAL (
    SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM events
    WHERE job_id = g.job_id AND g.last_seq <= {preload} AND g.pending_commands = 0
    ORDER BY seq
) e ON true
ORDER BY p.rn, (p.tenant <= CURSOR), p.tenant, g.job_id, e.seq";

/// The claim statement for at most `max` leases (given again as $10), ending in `tail`:
/// one text per size class (the next power of two), so few are prepared.
fn claim_sql(max: usize, tail: &str) -> String {
    let class = max.clamp(1, CLAIM_POOL_CAP).next_power_of_two();
    let pool = (class * 2).min(CLAIM_POOL_CAP);
    CLAIM_SQL_TEMPLATE
        .replace("{tail}", tail)
        .replace("{preload}", &PRELOAD_MAX_EVENTS.to_string())
        .replace("CURSOR", "$6")
        .replace("NOW_MS", now_ms!())
        .replace("{pool}", &pool.to_string())
}

/// Jobs whose log is at most this long come with their events from `claim_and_load`
/// (a new job has one event; a longer log is read by the worker, with its snapshot).
const PRELOAD_MAX_EVENTS: u64 = 32;

/// Serializes capped claims across all workers (held to the end of the claim's
/// transaction): a count of running jobs is only true until the next claim commits.
const CLAIM_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(7301431263709966403)";

/// Heartbeat: renew every held lease whose token and owner still match, in one statement;
/// rows are locked in id order, results come back in the order given.
const HEARTBEAT_SQL: &str = concat!(
    "WITH clock AS (SELECT ",
    now_ms!(),
    " AS now_ms),
h AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY AS h(job_id, token, ord)),
l AS (
    SELECT j.job_id, h.ord FROM jobs j JOIN h ON j.job_id = h.job_id AND j.token = h.token
    WHERE j.lease_owner = $3 ORDER BY j.job_id FOR UPDATE OF j
),
renewed AS (
    UPDATE jobs SET lease_expires_at = clock.now_ms + $4 FROM l, clock
    WHERE jobs.job_id = l.job_id
    RETURNING jobs.job_id, jobs.tenant, jobs.token, jobs.lease_expires_at
)
SELECT r.job_id, r.tenant, r.token, r.lease_expires_at
FROM renewed r JOIN l ON l.job_id = r.job_id ORDER BY l.ord"
);

const RELEASE_SQL: &str = "\
WITH h AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS h(job_id, token)),
l AS (
    SELECT j.job_id FROM jobs j JOIN h ON j.job_id = h.job_id AND j.token = h.token
    WHERE j.lease_owner = $3 ORDER BY j.job_id FOR UPDATE OF j
),
released AS (
    UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL FROM l
    WHERE jobs.job_id = l.job_id RETURNING jobs.job_id
)
SELECT (SELECT count(*) FROM released), pg_notify('aetheris_work', '')";

const LEDGER_SQL: &str = "\
SELECT l.step, l.invocation_key, l.attempt, l.effect, l.status, l.updated_at
FROM jobs j
LEFT JOIN ledger l ON l.job_id = j.job_id
WHERE j.job_id = $1 AND ($2::text IS NULL OR j.tenant = $2)
ORDER BY l.step";

const SIZE_SQL: &str = "SELECT (pg_total_relation_size('jobs') + pg_total_relation_size('events') \
     + pg_total_relation_size('snapshots') + pg_total_relation_size('ledger'))::bigint";

/// Most jobs one claim considers per tenant, beyond `max` (room to skip rows that a
/// concurrent claimer holds locked).
const CLAIM_POOL_CAP: usize = 1024;
const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Uniquely and monotonically orders ids minted in this process within one millisecond.
static ID_CONTEXT: Mutex<uuid::ContextV7> = Mutex::new(uuid::ContextV7::new());

/// The PostgreSQL `Store`. Cheap to clone; clones share the pool and the listener, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    hint: Arc<Notify>,
    /// Job ids from `NOTIFY aetheris_cmd` (commands stored by any process).
    commands: tokio::sync::broadcast::Sender<JobId>,
    /// The group-commit queue of single appends (see `group_commit_worker`).
    group: tokio::sync::mpsc::Sender<Queued>,
    /// How appends were batched (see `append_stats`).
    stats: Arc<AppendCounters>,
    _listener: Arc<ListenerGuard>,
    /// The tenant this store's last claim served last: the next claim's round robin
    /// starts after it (`CURSOR` in the claim statements), so claims with little room
    /// take turns between tenants instead of always serving the lowest tenant id.
    claim_cursor: Arc<Mutex<String>>,
    /// The tenants of jobs this store leased, so the batcher can serve tenants in turn.
    job_tenants: Arc<Mutex<JobTenants>>,
    /// The group-submit queue (see `group_submit_worker`).
    submits: tokio::sync::mpsc::Sender<QueuedSubmit>,
    /// Batches the group-submit workers stored (see `submit_batches`).
    submit_batches: Arc<AtomicU64>,
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
    /// and starts the LISTEN task. Must be called on a long-lived runtime (module docs).
    /// Does not create tables: call [`PgStore::migrate`] (or `aetheris migrate`) first.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore> {
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

        let size = pool_size.max(1);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(Duration::from_secs(30)),
                create: Some(Duration::from_secs(15)),
                recycle: Some(Duration::from_secs(5)),
            })
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(SESSION_SETUP)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StoreError::Backend(format!("PostgreSQL pool: {e}")))?;

        // Pre-warm: open every connection now, on this (long-lived) runtime.
        let mut warm = Vec::with_capacity(size);
        for _ in 0..size {
            warm.push(get_client(&pool).await?);
        }
        drop(warm);

        let hint = Arc::new(Notify::new());
        let mut listen_config = config;
        listen_config.application_name(LISTENER_APP_NAME);
        let (commands, _) = tokio::sync::broadcast::channel(1024);
        let task = tokio::spawn(listen_loop(listen_config, hint.clone(), commands.clone()));
        // Group commit: workers on this runtime too; they stop when the last clone drops.
        let (group, queue) = tokio::sync::mpsc::channel(GROUP_QUEUE);
        let queue = Arc::new(FairChannel::new(
            queue,
            FairQueue::new(GROUP_CONTENDED_QUOTA),
        ));
        let stats = Arc::new(AppendCounters::default());
        let job_tenants: Arc<Mutex<JobTenants>> = Arc::default();
        for _ in 0..group_commit_workers(size) {
            tokio::spawn(group_commit_worker(
                pool.clone(),
                stats.clone(),
                queue.clone(),
                job_tenants.clone(),
            ));
        }
        // Group submit: the same shape as group commit, for new jobs.
        let (submits, submit_queue) = tokio::sync::mpsc::channel(SUBMIT_QUEUE);
        let submit_queue = Arc::new(FairChannel::new(
            submit_queue,
            FairQueue::new(SUBMIT_CONTENDED_QUOTA).sharing_batches(),
        ));
        let submit_batches = Arc::new(AtomicU64::new(0));
        let clock = Arc::new(DbClock::default());
        for _ in 0..group_commit_workers(size) {
            tokio::spawn(group_submit_worker(
                pool.clone(),
                hint.clone(),
                submit_queue.clone(),
                submit_batches.clone(),
                clock.clone(),
            ));
        }
        Ok(PgStore {
            pool,
            hint,
            commands,
            group,
            stats,
            _listener: Arc::new(ListenerGuard(task.abort_handle())),
            claim_cursor: Arc::default(),
            job_tenants,
            submits,
            submit_batches,
        })
    }

    /// Applies pending migrations (see `crate::migrate`) and clears the statement caches
    /// of pooled connections, so no statement prepared against the old schema is reused.
    /// Safe to call from many processes at once. Returns the files this call applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let mut client = get_client(&self.pool).await?;
        let applied = crate::migrate::run(&mut client).await;
        self.pool.manager().statement_caches.clear();
        applied
    }

    /// How this store's appends were batched so far (group commit).
    pub fn append_stats(&self) -> AppendStats {
        AppendStats {
            appends: self.stats.appends.load(Relaxed),
            transactions: self.stats.transactions.load(Relaxed),
        }
    }

    /// Group-submit batches stored so far (each: one statement and commit), for tests
    /// and the benchmark: fewer than the submissions when concurrent ones were batched.
    pub fn submit_batches(&self) -> u64 {
        self.submit_batches.load(Relaxed)
    }

    /// The connection pool, for operators' tooling and tests.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        get_client(&self.pool).await
    }

    /// Maps a driver error; statements prepared before a schema change can fail with
    /// SQLSTATE 0A000 (or 26000): drop the cached statements so the next call re-prepares.
    fn pg(&self, e: tokio_postgres::Error) -> StoreError {
        pg_in(&self.pool, e)
    }

    /// The rows of one claim statement: `CLAIM_SQL_TEMPLATE` ending in `tail`.
    async fn claim_rows(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
        tail: &str,
    ) -> Result<Vec<Row>> {
        let sql = claim_sql(max, tail);
        let mut client = self.client().await?;
        let (sweep, st) = tokio::try_join!(
            client.prepare_cached(SWEEP_DUE_SQL),
            client.prepare_cached(&sql)
        )
        .map_err(|e| self.pg(e))?;
        let cursor = self
            .claim_cursor
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let names: Vec<&str> = caps.tenants.keys().map(String::as_str).collect();
        let limits: Vec<i64> = caps.tenants.values().map(|c| to_i64(*c)).collect();
        let default = caps.default.map(to_i64);
        let here_names: Vec<&str> = caps.this_claim.keys().map(String::as_str).collect();
        let here_limits: Vec<i64> = caps.this_claim.values().map(|c| to_i64(*c)).collect();
        let here_default = caps.this_claim_default.map(to_i64);
        let leases = to_i64(max.min(CLAIM_POOL_CAP) as u64);
        let params: [&(dyn ToSql + Sync); 10] = [
            &worker,
            &to_i64(ttl_ms),
            &names,
            &limits,
            &default,
            &cursor,
            &here_names,
            &here_limits,
            &here_default,
            &leases,
        ];
        let rows = if caps.is_unlimited() {
            // Due timers become claimable (see migrations/0003_timers.sql) before the
            // claim looks: both statements go out at once (requests leave in poll order
            // and the server runs them in turn, the sweep committing first), one round
            // trip instead of two. A failed sweep does not undo the claim's leases.
            let (swept, rows) =
                tokio::join!(client.execute(&sweep, &[]), client.query(&st, &params));
            if let Err(e) = swept {
                tracing::warn!(error = %e, "timer sweep failed; due timers wait for the next claim");
            }
            rows.map_err(|e| self.pg(e))?
        } else {
            client.execute(&sweep, &[]).await.map_err(|e| self.pg(e))?;
            // Count and claim under one cluster-wide lock, in a transaction: the claim
            // statement's snapshot is taken after the lock, so it sees every earlier
            // claim's leases, and no later claim counts before this one commits.
            let tx = client.transaction().await.map_err(|e| self.pg(e))?;
            tx.execute(CLAIM_LOCK_SQL, &[])
                .await
                .map_err(|e| self.pg(e))?;
            let rows = tx.query(&st, &params).await.map_err(|e| self.pg(e))?;
            tx.commit().await.map_err(|e| self.pg(e))?;
            rows
        };
        Ok(rows)
    }

    /// Book-keeping after a claim: the next claim's round robin starts after the tenant
    /// served last; the batcher learns the tenants of the leased jobs.
    fn claimed(&self, leases: &[Lease]) {
        if let (Some(last), Ok(mut c)) = (leases.last(), self.claim_cursor.lock()) {
            c.clone_from(&last.tenant);
        }
        if let Ok(mut t) = self.job_tenants.lock() {
            t.leased(leases);
        }
    }

    fn wake_local(&self) {
        fire(&self.hint);
    }
}

/// `PgStore::pg` for code that has only the pool.
fn pg_in(pool: &Pool, e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        if *code == SqlState::FEATURE_NOT_SUPPORTED || *code == SqlState::INVALID_SQL_STATEMENT_NAME
        {
            pool.manager().statement_caches.clear();
        }
    }
    pg_err(e)
}

async fn get_client(pool: &Pool) -> Result<deadpool_postgres::Object> {
    pool.get()
        .await
        .map_err(|e| StoreError::Backend(format!("PostgreSQL connection: {e}")))
}

/// A driver error as `StoreError::Backend`, with the SQLSTATE and server message.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(pg_msg(&e))
}

/// The message of a driver error: SQLSTATE, server message and detail, or the I/O cause.
pub(crate) fn pg_msg(e: &tokio_postgres::Error) -> String {
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

fn fire(hint: &Notify) {
    hint.notify_waiters();
    hint.notify_one();
}

/// Keeps one LISTEN connection alive for the life of the store.
async fn listen_loop(
    config: tokio_postgres::Config,
    hint: Arc<Notify>,
    commands: tokio::sync::broadcast::Sender<JobId>,
) {
    let mut delay = LISTEN_BACKOFF_MIN;
    loop {
        match listen_once(&config, &hint, &commands).await {
            Ok(()) => {
                tracing::warn!("aetheris: LISTEN connection closed; reconnecting");
                delay = LISTEN_BACKOFF_MIN;
            }
            Err((e, was_listening)) => {
                tracing::warn!(error = %e, "aetheris: LISTEN connection failed; reconnecting");
                if was_listening {
                    delay = LISTEN_BACKOFF_MIN;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// One LISTEN session: connect, LISTEN, fire the hint (anything sent while we were away
/// was lost), then fire it on every notification until the connection ends. The error
/// side says whether LISTEN had succeeded, so the backoff resets after a good session.
async fn listen_once(
    config: &tokio_postgres::Config,
    hint: &Notify,
    commands: &tokio::sync::broadcast::Sender<JobId>,
) -> std::result::Result<(), (tokio_postgres::Error, bool)> {
    let (client, mut conn) = config.connect(NoTls).await.map_err(|e| (e, false))?;
    let listen = client.batch_execute("LISTEN aetheris_work; LISTEN aetheris_cmd");
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| (e, false))?;
                listening = true;
                fire(hint);
            }
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == crate::pg_commands::COMMAND_CHANNEL => {
                    if let Ok(job) = n.payload().parse::<JobId>() {
                        let _ = commands.send(job);
                    }
                    // A command may make a parked job claimable: wake the claimers too.
                    fire(hint);
                }
                Some(Ok(AsyncMessage::Notification(_))) => fire(hint),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err((e, listening)),
                None => return Ok(()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Row decoding

/// An event from `row`, whose columns from `first` on are those of `READ_EVENTS_SQL`
/// (seq already read), checking that the kind column agrees with the payload.
fn event_row(id: JobId, r: &Row, first: usize, seq: i64) -> Result<RecordedEvent> {
    let seq = to_u64(seq, "seq")?;
    let kind: &str = col(r, first + 2)?;
    let payload: &str = col(r, first + 3)?;
    let body: EventBody = serde_json::from_str(payload)
        .map_err(|e| StoreError::Corrupt(format!("event {id}/{seq}: {e}")))?;
    if body.kind() != kind {
        return Err(StoreError::Corrupt(format!(
            "event {id}/{seq}: kind column {kind:?} disagrees with payload {:?}",
            body.kind()
        )));
    }
    Ok(RecordedEvent {
        job_id: id,
        seq,
        recorded_at_ms: col(r, first + 1)?,
        body,
        prev_hash: hash32(col(r, first + 4)?, "prev_hash")?,
        hash: hash32(col(r, first + 5)?, "hash")?,
    })
}

fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

/// u64 → bigint; values beyond i64::MAX cannot be stored, so they can match nothing.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn hash32(b: &[u8], what: &str) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is {} bytes, not 32", b.len())))
}

fn parse_status(s: &str) -> Result<JobStatus> {
    JobStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown job status {s:?}")))
}

fn parse_ledger_status(s: &str) -> Result<LedgerStatus> {
    use LedgerStatus::*;
    [Started, Succeeded, Failed, OutcomeUnknown, Confirmed]
        .into_iter()
        .find(|x| x.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown ledger status {s:?}")))
}

fn parse_effect(s: &str) -> Result<EffectClass> {
    use EffectClass::*;
    [Pure, Idempotent, SideEffect]
        .into_iter()
        .find(|x| x.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown effect class {s:?}")))
}

/// A `JobSummary` from the seven `job_cols!` columns starting at `at`.
fn summary_at(row: &Row, at: usize) -> Result<JobSummary> {
    Ok(JobSummary {
        job_id: JobId(col(row, at)?),
        tenant: col(row, at + 1)?,
        status: parse_status(col(row, at + 2)?)?,
        idempotency_key: col(row, at + 3)?,
        last_seq: to_u64(col(row, at + 4)?, "last_seq")?,
        created_at_ms: col(row, at + 5)?,
        updated_at_ms: col(row, at + 6)?,
    })
}

fn lease_row(row: &Row) -> Result<Lease> {
    Ok(Lease {
        job_id: JobId(col(row, 0)?),
        tenant: col(row, 1)?,
        token: to_u64(col(row, 2)?, "token")?,
        expires_at_ms: col(row, 3)?,
    })
}

fn scope_tenant<'a>(scope: Scope<'a>) -> Option<&'a str> {
    match scope {
        Scope::Tenant(t) => Some(t),
        Scope::System => None,
    }
}

/// A claim's preload, if it is the job's whole log `1..=last_seq` (`last_seq` as the
/// lease's row was updated). The events come from the claim statement's snapshot, the
/// row from its locked version: an append that committed between the two leaves the
/// events short of `last_seq`, and the job actor must then read the log itself.
fn whole_log(last_seq: u64, events: Vec<RecordedEvent>) -> Option<crate::JobLoad> {
    let whole =
        events.len() as u64 == last_seq && events.iter().zip(1u64..).all(|(e, seq)| e.seq == seq);
    (whole && last_seq > 0).then(|| crate::JobLoad {
        snapshot: None,
        events,
        commands: Vec::new(),
    })
}

/// The database clock as this process last saw it, moved on by local time since (the
/// time stamped into new job ids; see `submit_batch`). Before the first sighting, the
/// local clock.
#[derive(Debug, Default)]
struct DbClock(Mutex<Option<(i64, std::time::Instant)>>);

impl DbClock {
    fn estimate(&self) -> i64 {
        let seen = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        match seen {
            Some((ms, at)) => {
                ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(0))
            }
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
                .unwrap_or(0),
        }
    }

    fn saw(&self, ms: i64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((ms, std::time::Instant::now()));
    }
}

/// A fresh job id: UUIDv7 stamped with (an estimate of) the database clock.
fn new_job_id(now_ms: i64) -> JobId {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let ctx = ID_CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
    let ts = uuid::Timestamp::from_unix(&*ctx, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    JobId(Uuid::new_v7(ts))
}

fn payload_text(body: &EventBody) -> Result<String> {
    let bytes = body.payload();
    if bytes.is_empty() {
        return Err(StoreError::Rejected(format!(
            "{} event cannot be serialized",
            body.kind()
        )));
    }
    String::from_utf8(bytes).map_err(|e| StoreError::Rejected(format!("payload: {e}")))
}

// ---------------------------------------------------------------------------------------
// append_many planning (pure: validates against the locked rows, writes nothing)

/// A locked job row as the batch sees it, including earlier appends of the same batch.
struct JobMem {
    head: JobHead,
    dirty: bool,
    /// What this batch's appends do to the job's timer, in order.
    timer: TimerChange,
}

/// Rows to write, column by column (for the `UNNEST` statements).
#[derive(Default)]
struct EventCols {
    job: Vec<Uuid>,
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    payload: Vec<String>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

/// Plans one append (`aetheris_runtime::plan_append`) against the batch's view of the
/// locked rows; on success updates the view and the write buffers and returns the recorded
/// events. On failure nothing is changed.
fn plan_one(
    a: Append,
    jobs: &mut HashMap<Uuid, JobMem>,
    ledger: &mut HashMap<(Uuid, String), LedgerRow>,
    dirty_ledger: &mut BTreeMap<(Uuid, String), LedgerRow>,
    events: &mut EventCols,
    db_now: i64,
) -> Result<Vec<RecordedEvent>> {
    let id = a.job_id;
    let job = jobs.get_mut(&id.0).ok_or(StoreError::NotFound(id))?;
    let lookup = |step: &str| Ok::<_, Infallible>(ledger.get(&(id.0, step.to_string())).cloned());
    let planned = plan_append(&job.head, a, db_now, lookup).map_err(|e| append_refused(id, e))?;
    for (step, row) in planned.ledger {
        let k = (id.0, step);
        ledger.insert(k.clone(), row.clone());
        dirty_ledger.insert(k, row);
    }
    for (e, payload) in planned.events.iter().zip(planned.payloads) {
        events.job.push(id.0);
        events.seq.push(to_i64(e.seq));
        events.at.push(e.recorded_at_ms);
        events.kind.push(e.body.kind());
        events.payload.push(payload);
        events.prev.push(e.prev_hash.to_vec());
        events.hash.push(e.hash.to_vec());
    }
    job.head = planned.head;
    job.timer = job.timer.then(planned.timer);
    job.dirty = true;
    Ok(planned.events)
}

/// A timer change as the write statement's columns: keep the stored wake-up time, or
/// replace it with the given one (NULL: no timer).
fn timer_columns(change: TimerChange) -> (bool, Option<i64>) {
    match change {
        TimerChange::Keep => (true, None),
        TimerChange::Set(at) => (false, Some(at)),
        TimerChange::Clear => (false, None),
    }
}

// ---------------------------------------------------------------------------------------
// append transactions and the group-commit batcher

/// Why an append transaction failed. `unwritten`: it certainly wrote nothing (it failed
/// before COMMIT was sent, or the server answered with an error, which rolls back).
struct TxFailed {
    error: StoreError,
    unwritten: bool,
}

impl From<StoreError> for TxFailed {
    fn from(error: StoreError) -> Self {
        TxFailed {
            error,
            unwritten: true,
        }
    }
}

/// A pooled connection inside an append transaction. Unless `release` is called (the
/// transaction is over), dropping it takes the connection out of the pool and closes it,
/// so the server rolls the transaction back: a connection must never return to the pool
/// with a transaction open (e.g. when a caller drops its future half-way, or on errors).
struct TxConn(Option<deadpool_postgres::Object>);

impl TxConn {
    fn client(&self) -> Result<&deadpool_postgres::Object> {
        self.0
            .as_ref()
            .ok_or_else(|| StoreError::Backend("append connection already released".into()))
    }

    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

/// One append transaction for a batch (group commit), in two round trips: (1) BEGIN, lock
/// the job rows in id order, read their ledger rows — pipelined; the ledger read is its own
/// statement so its snapshot is taken after the locks are held; (2) one statement writing
/// events, ledger and job rows, with COMMIT pipelined behind it (a failed statement turns
/// that COMMIT into a rollback). Every append is planned in memory against the locked rows
/// first (`plan_one`), so a rejected append writes nothing while the others commit.
async fn append_tx(
    pool: &Pool,
    batch: Vec<Append>,
) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, TxFailed> {
    let mut ids: Vec<Uuid> = batch.iter().map(|a| a.job_id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut ledger_ids: Vec<Uuid> = batch
        .iter()
        .filter(|a| a.events.iter().any(|e| e.ledger_move().is_some()))
        .map(|a| a.job_id.0)
        .collect();
    ledger_ids.sort_unstable();
    ledger_ids.dedup();

    let conn = TxConn(Some(get_client(pool).await?));
    let c = conn.client()?;
    // Cached after the first use on a connection: no round trip.
    let (begin, lock_st, ledger_st, write_st, commit) = tokio::try_join!(
        c.prepare_cached(BEGIN_SQL),
        c.prepare_cached(LOCK_JOBS_SQL),
        c.prepare_cached(LEDGER_FOR_JOBS_SQL),
        c.prepare_cached(APPEND_WRITE_SQL),
        c.prepare_cached(COMMIT_SQL)
    )
    .map_err(|e| pg_in(pool, e))?;
    // Round trip 1. Requests go out in poll order, so BEGIN precedes the lock.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (_, job_rows, ledger_rows) = tokio::try_join!(
        c.execute(&begin, &[]),
        c.query(&lock_st, &lock_params),
        async {
            if ledger_ids.is_empty() {
                Ok(vec![])
            } else {
                c.query(&ledger_st, &[&ledger_ids]).await
            }
        }
    )
    .map_err(|e| pg_in(pool, e))?;

    let mut db_now = 0i64;
    let mut jobs = HashMap::with_capacity(job_rows.len());
    for r in &job_rows {
        jobs.insert(
            col::<Uuid>(r, 0)?,
            JobMem {
                head: JobHead {
                    status: parse_status(col(r, 1)?)?,
                    last_seq: to_u64(col(r, 2)?, "last_seq")?,
                    last_hash: hash32(col(r, 3)?, "last_hash")?,
                    token: to_u64(col(r, 4)?, "token")?,
                    updated_at_ms: col(r, 5)?,
                },
                dirty: false,
                timer: TimerChange::Keep,
            },
        );
        db_now = col(r, 6)?;
    }
    let mut ledger = HashMap::with_capacity(ledger_rows.len());
    for r in &ledger_rows {
        let attempt: i64 = col(r, 3)?;
        ledger.insert(
            (col::<Uuid>(r, 0)?, col::<String>(r, 1)?),
            LedgerRow {
                invocation_key: col(r, 2)?,
                attempt: u32::try_from(attempt)
                    .map_err(|_| StoreError::Corrupt(format!("ledger attempt {attempt}")))?,
                effect: parse_effect(col(r, 4)?)?,
                status: parse_ledger_status(col(r, 5)?)?,
                updated_at_ms: col(r, 6)?,
            },
        );
    }

    let mut dirty_ledger = BTreeMap::new();
    let mut events = EventCols::default();
    let results: Vec<Result<Vec<RecordedEvent>>> = batch
        .into_iter()
        .map(|a| {
            plan_one(
                a,
                &mut jobs,
                &mut ledger,
                &mut dirty_ledger,
                &mut events,
                db_now,
            )
        })
        .collect();

    let mut upd = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut wake_keep, mut wake_at): (Vec<bool>, Vec<Option<i64>>) = (vec![], vec![]);
    for (id, j) in jobs.iter().filter(|(_, j)| j.dirty) {
        upd.0.push(*id);
        upd.1.push(to_i64(j.head.token));
        upd.2.push(j.head.status.as_str());
        upd.3.push(to_i64(j.head.last_seq));
        upd.4.push(j.head.last_hash.to_vec());
        upd.5.push(j.head.updated_at_ms);
        let (keep, at) = timer_columns(j.timer);
        wake_keep.push(keep);
        wake_at.push(at);
    }
    if upd.0.is_empty() {
        // Every append failed validation: nothing to write.
        c.batch_execute("ROLLBACK")
            .await
            .map_err(|e| pg_in(pool, e))?;
        conn.release();
        return Ok(results);
    }
    let mut led = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((id, step), l) in &dirty_ledger {
        led.0.push(*id);
        led.1.push(step.as_str());
        led.2.push(l.invocation_key.as_str());
        led.3.push(i64::from(l.attempt));
        led.4.push(l.effect.as_str());
        led.5.push(l.status.as_str());
        led.6.push(l.updated_at_ms);
    }

    // Round trip 2: all writes, then COMMIT.
    let write_params: [&(dyn ToSql + Sync); 22] = [
        &events.job,
        &events.seq,
        &events.at,
        &events.kind,
        &events.payload,
        &events.prev,
        &events.hash,
        &led.0,
        &led.1,
        &led.2,
        &led.3,
        &led.4,
        &led.5,
        &led.6,
        &upd.0,
        &upd.1,
        &upd.2,
        &upd.3,
        &upd.4,
        &upd.5,
        &wake_keep,
        &wake_at,
    ];
    let written = tokio::try_join!(
        c.query_one(&write_st, &write_params),
        c.execute(&commit, &[])
    );
    match written {
        Ok(_) => {
            conn.release();
            Ok(results)
        }
        Err(e) => {
            let unwritten = e.as_db_error().is_some();
            let error = if e.code() == Some(&SqlState::DIVISION_BY_ZERO) {
                StoreError::Backend(
                    "append: a locked job row was not updated; nothing was written".into(),
                )
            } else {
                pg_in(pool, e)
            };
            Err(TxFailed { error, unwritten })
        }
    }
}

/// Counts of appends and of the transactions that carried them.
#[derive(Default)]
struct AppendCounters {
    appends: AtomicU64,
    transactions: AtomicU64,
}

/// How a store's appends were batched (cumulative), for the benchmark and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// Appends written or rejected by an append transaction.
    pub appends: u64,
    /// Append transactions run (each one commit, or one rollback if all were rejected).
    pub transactions: u64,
}

/// Appends a batch in one transaction (`append_tx`), each append with its own fence, seq
/// and ledger checks, failing alone. If the transaction fails as a whole and certainly
/// wrote nothing, each append is retried in a transaction of its own, so one append the
/// server refuses cannot fail the others. `Err` only when the batch failed as a whole.
async fn append_batch(
    pool: &Pool,
    stats: &AppendCounters,
    batch: Vec<Append>,
) -> std::result::Result<Vec<Result<Vec<RecordedEvent>>>, TxFailed> {
    let n = batch.len() as u64;
    let retry = (batch.len() > 1).then(|| batch.clone());
    stats.transactions.fetch_add(1, Relaxed);
    match append_tx(pool, batch).await {
        Ok(results) => {
            stats.appends.fetch_add(n, Relaxed);
            Ok(results)
        }
        Err(f) if f.unwritten && retry.is_some() => {
            tracing::warn!(error = %f.error, "append transaction failed; retrying its appends one by one");
            let mut results = Vec::new();
            for a in retry.into_iter().flatten() {
                stats.transactions.fetch_add(1, Relaxed);
                stats.appends.fetch_add(1, Relaxed);
                results.push(match append_tx(pool, vec![a]).await {
                    Ok(mut v) => v
                        .pop()
                        .unwrap_or_else(|| Err(StoreError::Backend("empty batch result".into()))),
                    Err(f) => Err(f.error),
                });
            }
            Ok(results)
        }
        Err(f) => Err(f),
    }
}

/// An append waiting for the group-commit batcher, with where its result goes.
type Queued = (
    Append,
    tokio::sync::oneshot::Sender<Result<Vec<RecordedEvent>>>,
);

/// Group-commit transactions in flight at once, each on its own pooled connection: one
/// can be in its WAL flush while the next is being validated and written. At most half
/// the pool, so claims, heartbeats and reads always find a connection. (Measured on a
/// 2-core machine with local PostgreSQL: 1, 2 and 4 perform alike within noise.)
fn group_commit_workers(pool_size: usize) -> usize {
    GROUP_IN_FLIGHT.min(pool_size / 2).max(1)
}

const GROUP_IN_FLIGHT: usize = 2;

/// Most appends one group-commit transaction carries: enough to share commits widely, few
/// enough that a transaction stays short, since the next tenant's append waits for one.
const GROUP_MAX_APPENDS: usize = 128;
/// A tenant's appends per group-commit transaction while other tenants are active too
/// (`FairQueue`): a flood's transactions stay short, so another tenant's append waits
/// for a short one (W6).
const GROUP_CONTENDED_QUOTA: usize = 16;
/// Appends that may wait for the batcher before `append` callers wait to enqueue.
const GROUP_QUEUE: usize = 8_192;

/// A batcher's queue: what callers sent, and what waits its turn (`FairQueue`); for a
/// queue `sharing_batches`, also the tenants of batches that finished since a batcher
/// last looked (kept outside the lock, which a waiting batcher holds).
struct FairChannel<T> {
    queue: tokio::sync::Mutex<(tokio::sync::mpsc::Receiver<T>, FairQueue<T>)>,
    finished: Mutex<Vec<Arc<str>>>,
    batch_done: Notify,
}

impl<T> FairChannel<T> {
    fn new(rx: tokio::sync::mpsc::Receiver<T>, queue: FairQueue<T>) -> Self {
        FairChannel {
            queue: tokio::sync::Mutex::new((rx, queue)),
            finished: Mutex::new(Vec::new()),
            batch_done: Notify::new(),
        }
    }

    /// A batch of a queue `sharing_batches` is done: its tenants may be served again.
    fn finished(&self, tenants: Vec<Arc<str>>) {
        if tenants.is_empty() {
            return;
        }
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(tenants);
        self.batch_done.notify_one();
    }
}

/// The next batch of a batcher (group commit, group submit) and its tenants: waits for
/// one item if none waits (or, on a queue `sharing_batches`, until a tenant with queued
/// items has no batch in flight), takes everything else already sent, and returns up to
/// `max`, tenants in turn. `None` once every sender is gone.
async fn next_fair_batch<T>(
    channel: &FairChannel<T>,
    tenant: impl Fn(&T) -> Option<Arc<str>>,
    max: usize,
) -> Option<(Vec<T>, Vec<Arc<str>>)> {
    let mut guard = channel.queue.lock().await;
    let (rx, waiting) = &mut *guard;
    loop {
        let done = std::mem::take(&mut *channel.finished.lock().unwrap_or_else(|e| e.into_inner()));
        waiting.finished(done);
        while let Ok(item) = rx.try_recv() {
            waiting.push(tenant(&item), item);
        }
        let (batch, tenants) = waiting.next_batch_with_tenants(max);
        if !batch.is_empty() {
            return Some((batch, tenants));
        }
        // Nothing to serve yet: a new item, or a batch in flight finishing, may change it.
        tokio::select! {
            item = rx.recv() => {
                let item = item?;
                waiting.push(tenant(&item), item);
            }
            _ = channel.batch_done.notified() => {}
        }
    }
}

/// Group commit across jobs: single `append`s from all callers queue here; a worker takes
/// whatever is queued (up to `GROUP_MAX_APPENDS`) and commits it as one `append_tx`, so N
/// concurrent jobs share one transaction and one WAL flush. `group_commit_workers` such
/// workers run, so that many transactions are in flight at once and a lone append never
/// waits for another's commit. Each append keeps its own fence, seq and ledger checks and
/// fails alone (see `append_batch`). Ends when every `PgStore` clone (every sender) is
/// gone.
async fn group_commit_worker(
    pool: Pool,
    stats: Arc<AppendCounters>,
    queue: Arc<FairChannel<Queued>>,
    job_tenants: Arc<Mutex<JobTenants>>,
) {
    let tenant = |q: &Queued| job_tenants.lock().ok().map(|t| t.of(&q.0.job_id));
    loop {
        // Tenants in turn (W6): a tenant's backlog of appends does not fill every
        // transaction ahead of another tenant's next append.
        let Some((batch, _)) = next_fair_batch(&queue, tenant, GROUP_MAX_APPENDS).await else {
            return;
        };
        // A caller that gave up (dropped its future) gets nothing written.
        let (appends, replies): (Vec<Append>, Vec<_>) =
            batch.into_iter().filter(|(_, r)| !r.is_closed()).unzip();
        if appends.is_empty() {
            continue;
        }
        match append_batch(&pool, &stats, appends).await {
            Ok(results) => {
                for (r, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(r);
                }
            }
            Err(f) => {
                for reply in replies {
                    let _ = reply.send(Err(same_error(&f.error)));
                }
            }
        }
    }
}

/// A submission waiting for the group-submit batcher, with where its answer goes.
struct QueuedSubmit {
    job: NewJob,
    audit: Option<AuditEntry>,
    reply: tokio::sync::oneshot::Sender<Result<(JobSummary, bool)>>,
}

/// Most submissions one group-submit statement carries.
const SUBMIT_MAX_BATCH: usize = 128;
/// A tenant's submissions per batch while other tenants submit too (`FairQueue`): a
/// flood's batches stay short, and another tenant's submission waits for one of them at
/// most, not for the flood (W6).
const SUBMIT_CONTENDED_QUOTA: usize = 16;
/// Submissions that may wait for the batcher before `submit` callers wait to enqueue.
const SUBMIT_QUEUE: usize = 8_192;

/// Group submit: `submit` callers queue here; a worker takes what is queued (tenants in
/// turn, up to `SUBMIT_MAX_BATCH`) and stores it with one statement (`submit_batch`):
/// every new row, event and audit row, stamped with the database clock and committed
/// together; only an entry whose idempotency key was taken costs a lookup more. A flood
/// of concurrent submitters thus costs the database one statement per batch instead of
/// two round trips and one commit per job,
/// and waits here, in the process, not as busy backends that another tenant's statements
/// queue behind (W6). Ends when every `PgStore` clone (every sender) is gone.
async fn group_submit_worker(
    pool: Pool,
    hint: Arc<Notify>,
    queue: Arc<FairChannel<QueuedSubmit>>,
    batches: Arc<AtomicU64>,
    clock: Arc<DbClock>,
) {
    let tenant = |q: &QueuedSubmit| Some(Arc::<str>::from(q.job.tenant.as_str()));
    loop {
        let Some((batch, tenants)) = next_fair_batch(&queue, tenant, SUBMIT_MAX_BATCH).await else {
            return;
        };
        // A caller that gave up (dropped its future) gets nothing stored.
        let batch: Vec<QueuedSubmit> = batch.into_iter().filter(|q| !q.reply.is_closed()).collect();
        if batch.is_empty() {
            queue.finished(tenants);
            continue;
        }
        let single = batch.len() == 1;
        let (jobs, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|q| ((q.job, q.audit), q.reply))
            .unzip();
        batches.fetch_add(1, Relaxed);
        match submit_batch(&pool, &clock, &jobs).await {
            Ok(results) => {
                for (r, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(r);
                }
            }
            // One bad entry must not fail other callers' (other tenants') submissions:
            // a batch that certainly stored nothing is retried one job at a time, so only
            // its own caller fails. (One whose fate is unknown is not: a job without an
            // idempotency key would be stored twice.)
            Err(f) if f.unwritten && !single => {
                for (job, reply) in jobs.into_iter().zip(replies) {
                    let one = std::slice::from_ref(&job);
                    let r = match submit_batch(&pool, &clock, one).await {
                        Ok(mut rs) => rs.pop().unwrap_or_else(|| {
                            Err(StoreError::Backend("empty submit result".into()))
                        }),
                        Err(f) => Err(f.error),
                    };
                    let _ = reply.send(r);
                }
            }
            Err(f) => {
                for reply in replies {
                    let _ = reply.send(Err(same_error(&f.error)));
                }
            }
        }
        queue.finished(tenants);
        fire(&hint);
    }
}

/// Stores a batch of submissions (see `group_submit_worker`); one result per entry, in
/// order. `Err` when a statement failed (nothing of the batch was stored).
async fn submit_batch(
    pool: &Pool,
    clock: &DbClock,
    jobs: &[(NewJob, Option<AuditEntry>)],
) -> std::result::Result<Vec<Result<(JobSummary, bool)>>, TxFailed> {
    let client = get_client(pool).await?;
    // Job ids are UUIDv7 stamped with the database clock as last seen plus the time
    // since (`clock`), so ids stay in database-clock order across gateways without a
    // round trip of their own; the times recorded are the database's own, at insert.
    let id_ms = clock.estimate();
    let mut results: Vec<Option<Result<(JobSummary, bool)>>> = Vec::with_capacity(jobs.len());
    let mut ids = Vec::new();
    let mut tenants = Vec::new();
    let mut new_keys = Vec::new();
    let mut heads = Vec::new();
    let mut tails = Vec::new();
    let mut payloads = Vec::new();
    let (mut a_tenants, mut a_actors, mut a_actions) = (Vec::new(), Vec::new(), Vec::new());
    let mut new_at: Vec<(usize, JobId)> = Vec::new();
    for (job, audit) in jobs {
        let id = new_job_id(id_ms);
        let body = EventBody::JobSubmitted {
            tenant: job.tenant.clone(),
            plan: job.plan.clone(),
            input: job.input.clone(),
            idempotency_key: job.idempotency_key.clone(),
        };
        let payload = match payload_text(&body) {
            Ok(p) => p,
            Err(e) => {
                results.push(Some(Err(e)));
                continue;
            }
        };
        let (head, tail) = parts_around_time(&GENESIS, id, 1, body.kind(), payload.as_bytes());
        new_at.push((results.len(), id));
        results.push(None);
        ids.push(id.0);
        tenants.push(job.tenant.as_str());
        new_keys.push(job.idempotency_key.as_deref());
        heads.push(head);
        tails.push(tail);
        payloads.push(payload);
        a_tenants.push(audit.as_ref().map(|a| a.tenant.as_str()));
        a_actors.push(audit.as_ref().map(|a| a.actor.as_str()));
        a_actions.push(audit.as_ref().map(|a| a.action.as_str()));
    }
    let mut inserted: HashMap<Uuid, i64> = HashMap::new();
    if !ids.is_empty() {
        let insert = client
            .prepare_cached(SUBMIT_BATCH_INSERT_SQL)
            .await
            .map_err(|e| pg_in(pool, e))?;
        let rows = client
            .query(
                &insert,
                &[
                    &ids,
                    &tenants,
                    &new_keys,
                    &heads,
                    &tails,
                    &payloads,
                    &a_tenants,
                    &a_actors,
                    &a_actions,
                    &GENESIS.as_slice(),
                ],
            )
            .await
            .map_err(|e| TxFailed {
                // A server error rolled the statement back; anything else (a lost
                // connection) may have come after its commit.
                unwritten: e.as_db_error().is_some(),
                error: pg_in(pool, e),
            })?;
        for r in &rows {
            // Committed already: a failure here is not a batch that stored nothing.
            let (id, at) = col::<Uuid>(r, 0)
                .and_then(|id| Ok((id, col::<i64>(r, 1)?)))
                .map_err(|error| TxFailed {
                    error,
                    unwritten: false,
                })?;
            clock.saw(at);
            inserted.insert(id, at);
        }
    }
    for (i, id) in new_at {
        let job = &jobs[i].0;
        results[i] = Some(if let Some(&now) = inserted.get(&id.0) {
            Ok((
                JobSummary {
                    job_id: id,
                    tenant: job.tenant.clone(),
                    status: JobStatus::Queued,
                    idempotency_key: job.idempotency_key.clone(),
                    last_seq: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                },
                true,
            ))
        } else {
            // Another submission with the same key won (concurrently, or earlier in this
            // batch); it has committed.
            submit_existing(&client, pool, job)
                .await
                .map(|s| (s, false))
        });
    }
    // An idempotent repeat changes nothing; its audit row is written on its own.
    let mut out = Vec::with_capacity(jobs.len());
    for (r, (_, audit)) in results.into_iter().zip(jobs) {
        let r = r.unwrap_or_else(|| Err(StoreError::Backend("submit result missing".into())));
        if let (Ok((existing, false)), Some(a)) = (&r, audit) {
            let entry = AuditEntry {
                target: existing.job_id.to_string(),
                result: "existing".into(),
                ..a.clone()
            };
            if let Err(e) = crate::pg_audit::record(pool, &entry).await {
                out.push(Err(e));
                continue;
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// The job holding `job`'s (tenant, idempotency key), which has committed.
async fn submit_existing(
    client: &deadpool_postgres::Object,
    pool: &Pool,
    job: &NewJob,
) -> Result<JobSummary> {
    let st = client
        .prepare_cached(SUBMIT_EXISTING_SQL)
        .await
        .map_err(|e| pg_in(pool, e))?;
    let row = client
        .query_opt(&st, &[&job.tenant, &job.idempotency_key])
        .await
        .map_err(|e| pg_in(pool, e))?
        .ok_or_else(|| StoreError::Backend("idempotency conflict on a job that is gone".into()))?;
    summary_at(&row, 0)
}

/// A copy of a transaction-level error for every append of the failed batch.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn put_command(
        &self,
        scope: Scope<'_>,
        id: JobId,
        body: crate::CommandBody,
        audit: Option<&AuditEntry>,
    ) -> Result<crate::StoredCommand> {
        crate::pg_commands::put_command(self.pool(), scope, id, body, audit).await
    }

    async fn pending_commands(&self, id: JobId) -> Result<Vec<crate::StoredCommand>> {
        crate::pg_commands::pending_commands(self.pool(), id).await
    }

    /// One statement, one round trip (`LOAD_JOB_SQL`) instead of three reads, two of them
    /// in turn: under a flood each round trip queues behind other tenants' work (W6).
    async fn load_job(&self, id: JobId, event_limit: usize) -> Result<crate::JobLoad> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(LOAD_JOB_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let rows = client
            .query(&st, &[&id.0, &to_i64(event_limit as u64)])
            .await
            .map_err(|e| self.pg(e))?;
        let mut load = crate::JobLoad::default();
        for r in &rows {
            let part: &str = col(r, 0)?;
            let num: i64 = col(r, 1)?;
            match part {
                "s" => load.snapshot = Some((to_u64(num, "snapshot seq")?, col(r, 5)?)),
                "e" => load.events.push(event_row(id, r, 1, num)?),
                "c" => load.commands.push(crate::pg_commands::stored_command(
                    id,
                    num,
                    col(r, 4)?,
                    col(r, 2)?,
                )?),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "load_job: unknown part {other:?}"
                    )))
                }
            }
        }
        // UNION ALL keeps no order of its own.
        load.events.sort_by_key(|e| e.seq);
        load.commands.sort_by_key(|c| c.id);
        if load.snapshot.is_none() && load.events.is_empty() {
            // Every job has `job_submitted`: nothing at all means no such job.
            return Err(StoreError::NotFound(id));
        }
        Ok(load)
    }

    async fn mark_commands_applied(&self, id: JobId, token: u64, ids: &[u64]) -> Result<()> {
        crate::pg_commands::mark_applied(self.pool(), id, token, ids).await
    }

    fn command_hint(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.commands.subscribe()
    }

    async fn create_tenant(
        &self,
        id: &str,
        name: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<crate::Tenant> {
        crate::pg_tenants::create(self.pool(), id, name, limits, audit).await
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<crate::Tenant>> {
        crate::pg_tenants::get(self.pool(), id).await
    }

    async fn list_tenants(&self) -> Result<Vec<crate::Tenant>> {
        crate::pg_tenants::list(self.pool()).await
    }

    async fn set_tenant_limits(
        &self,
        id: &str,
        limits: serde_json::Value,
        audit: Option<&AuditEntry>,
    ) -> Result<crate::Tenant> {
        crate::pg_tenants::set_limits(self.pool(), id, limits, audit).await
    }

    async fn put_user(
        &self,
        tenant: &str,
        id: &str,
        roles: Vec<String>,
        disabled: bool,
        audit: Option<&AuditEntry>,
    ) -> Result<crate::User> {
        crate::pg_users::put(self.pool(), tenant, id, roles, disabled, audit).await
    }

    async fn list_users(&self, tenant: &str) -> Result<Vec<crate::User>> {
        crate::pg_users::list(self.pool(), tenant).await
    }

    async fn access(&self, tenant: &str, user: &str) -> Result<crate::Access> {
        crate::pg_users::access(self.pool(), tenant, user).await
    }

    async fn announce_process(
        &self,
        kind: crate::ProcessKind,
        id: &str,
        ttl_ms: u64,
    ) -> Result<u32> {
        crate::pg_presence::announce(self.pool(), kind, id, ttl_ms).await
    }

    async fn retire_process(&self, kind: crate::ProcessKind, id: &str) -> Result<()> {
        crate::pg_presence::retire(self.pool(), kind, id).await
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<AuditRecord> {
        crate::pg_audit::record(self.pool(), entry).await
    }

    async fn list_audit(&self, scope: Scope<'_>, filter: AuditFilter) -> Result<Vec<AuditRecord>> {
        crate::pg_audit::list(self.pool(), scope, filter).await
    }

    /// Through the group-submit batcher (`group_submit_worker`): concurrent submissions
    /// share one round trip and one commit.
    async fn submit(&self, job: NewJob, audit: Option<&AuditEntry>) -> Result<(JobSummary, bool)> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = QueuedSubmit {
            job,
            audit: audit.cloned(),
            reply,
        };
        self.submits
            .send(queued)
            .await
            .map_err(|_| StoreError::Backend("submit batcher has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Backend("submit batcher stopped before answering; outcome unknown".into())
        })?
    }

    async fn get_job(&self, scope: Scope<'_>, id: JobId) -> Result<Option<JobSummary>> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(GET_JOB_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let row = client
            .query_opt(&st, &[&id.0, &scope_tenant(scope)])
            .await
            .map_err(|e| self.pg(e))?;
        row.map(|r| summary_at(&r, 0)).transpose()
    }

    async fn list_jobs(&self, scope: Scope<'_>, filter: ListFilter) -> Result<Vec<JobSummary>> {
        let client = self.client().await?;
        let before = filter.before.map(|b| b.0).unwrap_or(Uuid::max());
        let status = filter.status.map(|s| s.as_str());
        let limit = to_i64(filter.limit.max(1) as u64);
        let rows = match scope {
            Scope::Tenant(t) => {
                let st = client
                    .prepare_cached(LIST_TENANT_SQL)
                    .await
                    .map_err(|e| self.pg(e))?;
                client.query(&st, &[&t, &before, &status, &limit]).await
            }
            Scope::System => {
                let st = client
                    .prepare_cached(LIST_SYSTEM_SQL)
                    .await
                    .map_err(|e| self.pg(e))?;
                client.query(&st, &[&before, &status, &limit]).await
            }
        }
        .map_err(|e| self.pg(e))?;
        rows.iter().map(|r| summary_at(r, 0)).collect()
    }

    async fn count_by_status(&self) -> Result<Vec<StatusCount>> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(COUNT_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let rows = client.query(&st, &[]).await.map_err(|e| self.pg(e))?;
        rows.iter()
            .map(|r| {
                Ok(StatusCount {
                    tenant: col(r, 0)?,
                    status: parse_status(col(r, 1)?)?,
                    count: to_u64(col(r, 2)?, "count")?,
                })
            })
            .collect()
    }

    async fn read_events(
        &self,
        scope: Scope<'_>,
        id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(READ_EVENTS_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        // A limit of 0 returns no events (but still reports an unknown job).
        let limit = to_i64(limit as u64);
        let rows = client
            .query(
                &st,
                &[&id.0, &to_i64(after_seq), &limit, &scope_tenant(scope)],
            )
            .await
            .map_err(|e| self.pg(e))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(seq) = col::<Option<i64>>(r, 0)? else {
                continue; // the job exists but has no events past after_seq
            };
            out.push(event_row(id, r, 0, seq)?);
        }
        Ok(out)
    }

    async fn append_many(&self, batch: Vec<Append>) -> Result<Vec<Result<Vec<RecordedEvent>>>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        append_batch(&self.pool, &self.stats, batch)
            .await
            .map_err(|f| f.error)
    }

    /// One append, through the group-commit batcher: appends of concurrent jobs share a
    /// transaction (see `group_commit_worker`).
    async fn append(&self, a: Append) -> Result<Vec<RecordedEvent>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.group
            .send((a, reply))
            .await
            .map_err(|_| StoreError::Backend("append batcher has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Backend("append batcher stopped before answering; outcome unknown".into())
        })?
    }

    async fn put_snapshot(&self, id: JobId, token: u64, seq: u64, blob: Vec<u8>) -> Result<()> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(SNAPSHOT_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let row = client
            .query_opt(&st, &[&id.0, &to_i64(token), &to_i64(seq), &blob])
            .await
            .map_err(|e| self.pg(e))?
            .ok_or(StoreError::NotFound(id))?;
        let current = to_u64(col(&row, 0)?, "token")?;
        let last_seq = to_u64(col(&row, 1)?, "last_seq")?;
        let written: i64 = col(&row, 2)?;
        if written > 0 {
            return Ok(());
        }
        if current != token {
            return Err(StoreError::Fenced {
                job: id,
                presented: token,
                current,
            });
        }
        Err(StoreError::Rejected(format!(
            "snapshot at seq {seq} is beyond the log (seq {last_seq})"
        )))
    }

    async fn latest_snapshot(&self, id: JobId, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(LATEST_SNAPSHOT_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let row = client
            .query_opt(&st, &[&id.0, &to_i64(max_seq)])
            .await
            .map_err(|e| self.pg(e))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((to_u64(col(&r, 0)?, "seq")?, col(&r, 1)?))),
        }
    }

    async fn claim_within(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let rows = self
            .claim_rows(worker, ttl_ms, max, caps, CLAIM_TAIL)
            .await?;
        let leases: Vec<Lease> = rows.iter().map(lease_row).collect::<Result<_>>()?;
        self.claimed(&leases);
        Ok(leases)
    }

    /// The claim statement also returns the events of each leased job with a short log
    /// and no pending command (`CLAIM_LOAD_TAIL`), read in the same statement: one round
    /// trip for the lease and the load. The events are as of the statement's snapshot; if
    /// an earlier lease holder's append committed just before the row was locked, the
    /// job's updated `last_seq` is past them and the load is dropped (the worker reads
    /// it), so a preload is never stale.
    async fn claim_and_load(
        &self,
        worker: &str,
        ttl_ms: u64,
        max: usize,
        caps: &RunningCaps,
    ) -> Result<Vec<(Lease, Option<crate::JobLoad>)>> {
        if max == 0 {
            return Ok(vec![]);
        }
        let rows = self
            .claim_rows(worker, ttl_ms, max, caps, CLAIM_LOAD_TAIL)
            .await?;
        let mut out: Vec<(Lease, u64, Vec<RecordedEvent>)> = Vec::new();
        for r in &rows {
            let lease = lease_row(r)?;
            if out.last().map(|(l, _, _)| l.job_id) != Some(lease.job_id) {
                let last_seq = to_u64(col(r, 4)?, "last_seq")?;
                out.push((lease.clone(), last_seq, Vec::new()));
            }
            if let (Some(seq), Some((_, _, events))) = (col::<Option<i64>>(r, 5)?, out.last_mut()) {
                events.push(event_row(lease.job_id, r, 5, seq)?);
            }
        }
        let leases: Vec<Lease> = out.iter().map(|(l, _, _)| l.clone()).collect();
        self.claimed(&leases);
        Ok(out
            .into_iter()
            .map(|(lease, last_seq, events)| (lease, whole_log(last_seq, events)))
            .collect())
    }

    async fn heartbeat(
        &self,
        worker: &str,
        ttl_ms: u64,
        held: &[(JobId, u64)],
    ) -> Result<Vec<Lease>> {
        if held.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<Uuid> = held.iter().map(|(j, _)| j.0).collect();
        let tokens: Vec<i64> = held.iter().map(|(_, t)| to_i64(*t)).collect();
        let client = self.client().await?;
        let st = client
            .prepare_cached(HEARTBEAT_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let rows = client
            .query(&st, &[&ids, &tokens, &worker, &to_i64(ttl_ms)])
            .await
            .map_err(|e| self.pg(e))?;
        rows.iter().map(lease_row).collect()
    }

    async fn release(&self, worker: &str, held: &[(JobId, u64)]) -> Result<()> {
        if let Ok(mut t) = self.job_tenants.lock() {
            t.released(held.iter().map(|(j, _)| *j));
        }
        if !held.is_empty() {
            let ids: Vec<Uuid> = held.iter().map(|(j, _)| j.0).collect();
            let tokens: Vec<i64> = held.iter().map(|(_, t)| to_i64(*t)).collect();
            let client = self.client().await?;
            let st = client
                .prepare_cached(RELEASE_SQL)
                .await
                .map_err(|e| self.pg(e))?;
            client
                .execute(&st, &[&ids, &tokens, &worker])
                .await
                .map_err(|e| self.pg(e))?;
        }
        self.wake_local();
        Ok(())
    }

    async fn ledger(&self, scope: Scope<'_>, id: JobId) -> Result<Vec<LedgerEntry>> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(LEDGER_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let rows = client
            .query(&st, &[&id.0, &scope_tenant(scope)])
            .await
            .map_err(|e| self.pg(e))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(step) = col::<Option<String>>(r, 0)? else {
                continue; // the job exists but has no ledger rows
            };
            let attempt: i64 = col(r, 2)?;
            out.push(LedgerEntry {
                invocation_key: col(r, 1)?,
                job_id: id,
                step,
                attempt: u32::try_from(attempt)
                    .map_err(|_| StoreError::Corrupt(format!("ledger attempt {attempt}")))?,
                effect: parse_effect(col(r, 3)?)?,
                status: parse_ledger_status(col(r, 4)?)?,
                updated_at_ms: col(r, 5)?,
            });
        }
        Ok(out)
    }

    async fn now_ms(&self) -> Result<i64> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(NOW_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let row = client.query_one(&st, &[]).await.map_err(|e| self.pg(e))?;
        col(&row, 0)
    }

    fn work_hint(&self) -> Arc<Notify> {
        self.hint.clone()
    }

    async fn size_bytes(&self) -> Result<u64> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(SIZE_SQL)
            .await
            .map_err(|e| self.pg(e))?;
        let row = client.query_one(&st, &[]).await.map_err(|e| self.pg(e))?;
        to_u64(col(&row, 0)?, "size")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewJob, Store};

    /// `n` one-step jobs of `tenant`, submitted concurrently (so in shared batches).
    async fn queue_jobs(store: &PgStore, tenant: &str, n: usize) {
        let plan: aetheris_runtime::Plan =
            serde_json::from_value(serde_json::json!({"steps": [{"id": "a", "tool": "echo"}]}))
                .expect("plan");
        let submits: Vec<_> = (0..n)
            .map(|_| {
                let (store, plan, tenant) = (store.clone(), plan.clone(), tenant.to_string());
                tokio::spawn(async move {
                    let job = NewJob {
                        tenant,
                        idempotency_key: None,
                        plan,
                        input: serde_json::json!({}),
                    };
                    store.submit(job, None).await
                })
            })
            .collect();
        for s in submits {
            s.await.expect("task").expect("submit");
        }
    }

    /// A connection keeps the generic claim plan it made first. Made while a tenant's
    /// jobs were all queued, it must still find that tenant's runnable jobs without
    /// reading its settled ones once most have finished (migrations/0007): no index
    /// led by `tenant` covers both, so the walk can only take `jobs_claimable`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_plan_made_on_a_queued_table_skips_settled_jobs_later() {
        let url = crate::pg_test::fresh_database_url().await;
        let store = PgStore::connect(&url, 1).await.expect("connect");
        store.migrate().await.expect("migrate");
        queue_jobs(&store, "flood", 400).await;
        let client = store.client().await.expect("client");
        let sql = claim_sql(4, CLAIM_LOAD_TAIL);
        let types =
            "text, bigint, text[], bigint[], bigint, text, text[], bigint[], bigint, bigint";
        let args = "('w', 60000, '{}', '{}', NULL, '', '{}', '{}', NULL, 4)";
        client
            .batch_execute(&format!("PREPARE probe ({types}) AS {sql}"))
            .await
            .expect("prepare");
        // The plan is made now (the pooled session forces generic plans), on a table whose
        // jobs are all queued.
        client
            .batch_execute(&format!("EXECUTE probe {args}"))
            .await
            .expect("first claim");
        client
            .batch_execute(
                "UPDATE jobs SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL \
                 WHERE job_id IN (SELECT job_id FROM jobs ORDER BY job_id LIMIT 390)",
            )
            .await
            .expect("settle");
        let rows = client
            .simple_query(&format!(
                "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE probe {args}"
            ))
            .await
            .expect("explain");
        let text: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        let text = text.join("\n");
        let most_removed = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Rows Removed by Filter: "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        assert!(most_removed < 10, "the claim read settled jobs:\n{text}");
        assert!(text.contains("jobs_claimable"), "{text}");
        // And no index led by `tenant` may cover claimable and settled jobs alike.
        let defs = client
            .query(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'jobs' \
                 AND indexdef LIKE '%(tenant%'",
                &[],
            )
            .await
            .expect("indexes");
        for d in defs {
            let def: String = d.get(0);
            assert!(def.contains(" WHERE "), "a full index led by tenant: {def}");
        }
    }

    /// A preload older than the row the claim locked (an append committed in between)
    /// is not used, nor one with a gap; the whole log is.
    #[test]
    fn a_preload_is_used_only_when_it_is_the_whole_log() {
        let job = JobId::new();
        let event = |seq: u64| RecordedEvent {
            job_id: job,
            seq,
            recorded_at_ms: 1,
            body: EventBody::JobSucceeded {
                output: serde_json::Value::Null,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        assert!(whole_log(2, vec![event(1), event(2)]).is_some());
        assert!(whole_log(3, vec![event(1), event(2)]).is_none(), "stale");
        assert!(whole_log(2, vec![event(1), event(3)]).is_none(), "gap");
        assert!(whole_log(0, vec![]).is_none());
    }

    /// Every claim size shares one of a few statement texts (a prepared statement per
    /// text and connection), and the text never fixes the number of leases.
    #[test]
    fn claim_sizes_share_a_few_statements() {
        let texts: std::collections::HashSet<String> = (0..=2 * CLAIM_POOL_CAP)
            .map(|max| claim_sql(max, CLAIM_LOAD_TAIL))
            .collect();
        assert_eq!(texts.len(), 10, "candidate pools of 2, 4, … 1024");
        assert!(texts.iter().all(|t| t.contains("LIMIT $10")));
    }

    /// A claim's cost must not grow with a tenant's backlog: on a fresh (unanalyzed)
    /// database, with a backlog far larger than a claim takes, the claim's plan (as a
    /// pooled session makes it: `SESSION_SETUP`) walks `jobs_claimable` in order and stops,
    /// instead of reading the whole backlog with a bitmap scan and sorting it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_walk_the_queue_in_order() {
        let url = crate::pg_test::fresh_database_url().await;
        let store = PgStore::connect(&url, 2).await.expect("connect");
        store.migrate().await.expect("migrate");
        queue_jobs(&store, "backlog", 600).await;
        let client = store.client().await.expect("client");
        let names: Vec<&str> = vec![];
        let limits: Vec<i64> = vec![];
        let none: Option<i64> = None;
        let params: [&(dyn ToSql + Sync); 10] = [
            &"w", &60_000i64, &names, &limits, &none, &"", &names, &limits, &none, &4i64,
        ];
        let explain = format!(
            "EXPLAIN (ANALYZE, COSTS OFF) {}",
            claim_sql(4, CLAIM_LOAD_TAIL)
        );
        let rows = client.query(&explain, &params).await.expect("explain");
        let text: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let text = text.join("\n");
        assert!(
            !text.contains("Bitmap"),
            "the claim reads the backlog at large:\n{text}"
        );
        assert!(
            text.contains("Index Scan using jobs_claimable"),
            "the claim walks the queue index:\n{text}"
        );
    }
}
