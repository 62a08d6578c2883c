//! The one statement that writes a planned batch of appends (`append_plan::WriteCols`):
//! each job's fence, its events with their hashes, its ledger rows and, for a job the
//! batch finishes, its transparency leaf. One text (`write_sql!`) in four shapes: with or
//! without leaves, and for many jobs or for one (`sql_for`; the one-job shape reads the
//! same parameters as scalars and so plans a smaller statement, which matters at one job
//! at a time, where executor start-up is a good part of an append's cost).
//!
//! Invariants kept here (G3, G7, G1):
//! - Per-job fence in the statement: a job's row is updated only if it still holds
//!   exactly the head its appends were planned against (token, seq, chain head, time,
//!   status); its events, ledger rows and leaf are written only joined to that update.
//!   The UPDATE takes the row lock and, under READ COMMITTED, re-checks the fence on the
//!   newest row version, so a job whose head moved (another writer, a new lease) gets
//!   nothing written while the others of the batch are. A job's events are all or none.
//! - The time is the database clock as the statement reads it (`now()`: the transaction's
//!   start, one value wherever it is read), stamped as `greatest(now, the job's last
//!   time)` so times never run backwards within a job, and the hashes are computed around
//!   it (`aetheris_chain_hashes`, migrations/0013_append_chain.sql).
//! - A finished job's lease is given back in the same update (lease owner and expiry
//!   cleared, token kept): its holder needs no release, one write per job fewer
//!   (`JobLog::append_many`; the heartbeat reports such a job finished, not lost).
//! - Leaves: a finished job's leaf takes the next index of its tenant's log
//!   (`transparency_heads` row locked by `INSERT … ON CONFLICT DO UPDATE`, tenants in
//!   order, so transactions never wait for each other's heads in a cycle), gap-free and
//!   unique across transactions and processes (see migrations/0010_transparency.sql).
//! - Alone (outside a transaction block) the statement is its own transaction, committed
//!   before the server answers it (the driver waits for ReadyForQuery): one round trip.

use super::append_plan::{WriteCols, Written};
use super::rows::{col, hash32};
use crate::Result;
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

/// The statement's parameters, by number:
/// - events, each job's together and in order: $1 job, $2 seq, $3 kind, $4 payload, $5
///   tail (the canonical bytes after the time), $6 prev (the job's chain head before the
///   batch on its first event, NULL on the others), $7 floor (the job's last time);
/// - jobs: $8 id, and the fence $9 token, $10 seq, $11 chain head, $12 time, $13 status;
///   then $14 new status, $15 new last seq, $16 the 1-based index of its last event, $17
///   keep the wake-up time, $18 the new wake-up time, $19 the leaf's bytes before the
///   chain head (NULL unless the batch finishes the job), $26 its `back` (how many of its
///   tenant's leaves in this batch come from it on, in batch order: its index is the
///   tenant's new size minus that);
/// - ledger rows: $20 job, $21 step, $22 invocation key, $23 attempt, $24 effect, $25
///   status, $27 new (inserted; else the row existed before the batch and is updated —
///   whoever planned the batch read every ledger row of the job, under its lock or as
///   known, and a known job's rows are exactly those while its `last_seq` is: see
///   `known`).
///
/// Returns one row per job written: its id, the time stamped and the chain head stored.
macro_rules! write_sql {
    ($jobs:expr, $join_e:expr, $join_l:expr, $leaves:expr) => {
        concat!(
            "WITH hs AS MATERIALIZED (
    SELECT ",
            now_ms!(),
            " AS now_ms,
           aetheris_chain_hashes(",
            now_ms!(),
            ", $1::uuid[], $2::bigint[], $7::bigint[], $5::bytea[], $6::bytea[]) AS h
),
upd AS (
    UPDATE jobs AS j
    SET status = u.status, last_seq = u.last_seq, last_hash = hs.h[u.last_ix],
        updated_at = greatest(hs.now_ms, u.at_before),
        wake_at = CASE WHEN u.wake_keep THEN j.wake_at ELSE u.wake_at END,
        wake_due = false,
        lease_owner = CASE WHEN u.status IN ",
            finished_statuses!(),
            " THEN NULL ELSE j.lease_owner END,
        lease_expires_at = CASE WHEN u.status IN ",
            finished_statuses!(),
            " THEN NULL ELSE j.lease_expires_at END
    FROM ",
            $jobs,
            " AS u(job_id, token, seq_before, hash_before, at_before, status_before, status,
             last_seq, last_ix, wake_keep, wake_at, leaf_prefix, leaf_back),
        hs
    WHERE j.job_id = u.job_id AND j.token = u.token AND j.last_seq = u.seq_before
      AND j.last_hash = u.hash_before AND j.updated_at = u.at_before
      AND j.status = u.status_before
    RETURNING j.job_id, j.tenant, j.updated_at, j.last_seq, j.last_hash, u.leaf_prefix,
              u.leaf_back
),
ev AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT e.job_id, e.seq, upd.updated_at, e.kind, e.payload,
           coalesce(e.prev, hs.h[e.ord::int - 1]), hs.h[e.ord::int]
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $6::bytea[])
             WITH ORDINALITY AS e(job_id, seq, kind, payload, prev, ord)
        ",
            $join_e,
            ", hs
),
led_new AS (
    INSERT INTO ledger (job_id, step, invocation_key, attempt, effect, status, updated_at)
    SELECT l.job_id, l.step, l.key, l.attempt, l.effect, l.status, upd.updated_at
    FROM unnest($20::uuid[], $21::text[], $22::text[], $23::bigint[], $24::text[],
                $25::text[], $27::bool[]) AS l(job_id, step, key, attempt, effect, status, is_new)
        ",
            $join_l,
            "
    WHERE l.is_new
),
led_old AS (
    UPDATE ledger AS d
    SET invocation_key = l.key, attempt = l.attempt, effect = l.effect, status = l.status,
        updated_at = upd.updated_at
    FROM unnest($20::uuid[], $21::text[], $22::text[], $23::bigint[], $24::text[],
                $25::text[], $27::bool[]) AS l(job_id, step, key, attempt, effect, status, is_new)
        ",
            $join_l,
            "
    WHERE NOT l.is_new AND d.job_id = l.job_id AND d.step = l.step
)",
            $leaves,
            "
SELECT upd.job_id, upd.updated_at, upd.last_hash FROM upd"
        )
    };
}

/// The jobs of a batch, one row each.
macro_rules! jobs_of_batch {
    () => {
        "unnest($8::uuid[], $9::bigint[], $10::bigint[], $11::bytea[], $12::bigint[],
                $13::text[], $14::text[], $15::bigint[], $16::int[], $17::bool[],
                $18::bigint[], $19::bytea[], $26::bigint[])"
    };
}

/// The job of a batch of one job: the same columns as scalars, so the plan looks the job
/// row up by its key directly, with no set-returning scan and join to set up (at one job
/// at a time every append is such a batch; executor start-up is a good part of its cost).
macro_rules! job_of_one {
    () => {
        "(SELECT ($8::uuid[])[1], ($9::bigint[])[1], ($10::bigint[])[1], ($11::bytea[])[1],
                ($12::bigint[])[1], ($13::text[])[1], ($14::text[])[1], ($15::bigint[])[1],
                ($16::int[])[1], ($17::bool[])[1], ($18::bigint[])[1], ($19::bytea[])[1],
                ($26::bigint[])[1])"
    };
}

/// How a batch's events and ledger rows meet the job row the statement updated.
macro_rules! join_e {
    () => {
        "JOIN upd ON upd.job_id = e.job_id"
    };
}
macro_rules! join_l {
    () => {
        "JOIN upd ON upd.job_id = l.job_id"
    };
}
/// In a batch of one job every row is that job's: a plain product with its 0 or 1 updated
/// row (no hash join to build).
macro_rules! one_job {
    () => {
        "CROSS JOIN upd"
    };
}

/// The write of a batch that finishes no job.
pub(super) const WRITE_SQL: &str = write_sql!(jobs_of_batch!(), join_e!(), join_l!(), "");

/// `WRITE_SQL` for a batch of one job.
pub(super) const WRITE_ONE_SQL: &str = write_sql!(job_of_one!(), one_job!(), one_job!(), "");

/// The leaves of the jobs a batch finishes (`write_sql!`'s second part).
macro_rules! leaves {
    () => {
        ",
n AS (
    SELECT upd.tenant, upd.job_id, sha256(upd.leaf_prefix || upd.last_hash) AS leaf_hash,
           upd.updated_at AS appended_at, upd.leaf_back AS back
    FROM upd WHERE upd.leaf_prefix IS NOT NULL
),
heads AS (
    INSERT INTO transparency_heads AS h (tenant, size)
    SELECT tenant, count(*) FROM n GROUP BY tenant ORDER BY tenant COLLATE \"C\"
    ON CONFLICT (tenant) DO UPDATE SET size = h.size + EXCLUDED.size
    RETURNING h.tenant, h.size
),
leaves AS (
    INSERT INTO transparency_leaves (tenant, idx, job_id, leaf_hash, appended_at)
    SELECT n.tenant, heads.size - n.back, n.job_id, n.leaf_hash, n.appended_at
    FROM n JOIN heads ON heads.tenant = n.tenant
)"
    };
}

/// The write of a batch that finishes a job: also each finished job's transparency leaf.
pub(super) const WRITE_WITH_LEAVES_SQL: &str =
    write_sql!(jobs_of_batch!(), join_e!(), join_l!(), leaves!());

/// `WRITE_WITH_LEAVES_SQL` for a batch of one job.
pub(super) const WRITE_ONE_WITH_LEAF_SQL: &str =
    write_sql!(job_of_one!(), one_job!(), one_job!(), leaves!());

/// The statement text for `cols`.
pub(super) fn sql_for(cols: &WriteCols) -> &'static str {
    match (cols.j_job.len() == 1, cols.has_leaves()) {
        (true, false) => WRITE_ONE_SQL,
        (true, true) => WRITE_ONE_WITH_LEAF_SQL,
        (false, false) => WRITE_SQL,
        (false, true) => WRITE_WITH_LEAVES_SQL,
    }
}

/// The statement's parameters, in order.
pub(super) fn params<'a>(c: &'a WriteCols<'_>) -> [&'a (dyn ToSql + Sync); 27] {
    [
        &c.e_job,
        &c.e_seq,
        &c.e_kind,
        &c.e_payload,
        &c.e_tail,
        &c.e_prev,
        &c.e_floor,
        &c.j_job,
        &c.j_token,
        &c.j_seq_before,
        &c.j_hash_before,
        &c.j_at_before,
        &c.j_status_before,
        &c.j_status,
        &c.j_last_seq,
        &c.j_last_ix,
        &c.j_wake_keep,
        &c.j_wake_at,
        &c.j_leaf_prefix,
        &c.l_job,
        &c.l_step,
        &c.l_key,
        &c.l_attempt,
        &c.l_effect,
        &c.l_status,
        &c.j_leaf_back,
        &c.l_new,
    ]
}

/// The jobs the statement wrote, from its rows.
pub(super) fn written(rows: &[Row]) -> Result<HashMap<Uuid, Written>> {
    rows.iter()
        .map(|r| {
            Ok((
                col::<Uuid>(r, 0)?,
                Written {
                    at_ms: col(r, 1)?,
                    last_hash: hash32(col(r, 2)?, "last_hash")?,
                },
            ))
        })
        .collect()
}
