-- 0001_core: the core tables of the PostgreSQL store (store/src/pg_store.rs).
--
-- Forward-only: never edit this file once released (the runner records its SHA-256 and
-- refuses to start if it changed); add a new numbered file instead. Runs inside one
-- transaction under an advisory lock, so no CREATE INDEX CONCURRENTLY here.
--
-- Conventions:
-- * Every time is `bigint` milliseconds since the Unix epoch, taken from the database clock
--   (G3). The hash chain hashes `recorded_at` in ms, so one exact integer representation is
--   kept everywhere instead of rounding timestamptz; `to_timestamp(x / 1000.0)` shows it.
-- * `tenant` and `step` use the "C" collation: byte order, the same order the embedded
--   store lists them in, and cheaper comparisons.
-- * `events` is the source of truth; `jobs` and `ledger` are projections written in the
--   same transaction as the events that change them.

CREATE TABLE jobs (
    job_id           uuid    NOT NULL PRIMARY KEY,
    tenant           text    COLLATE "C" NOT NULL,
    status           text    NOT NULL
        CHECK (status IN ('queued', 'running', 'waiting', 'succeeded', 'failed')),
    idempotency_key  text,
    last_seq         bigint  NOT NULL,
    last_hash        bytea   NOT NULL,
    created_at       bigint  NOT NULL,
    updated_at       bigint  NOT NULL,
    -- fencing token: bumped on every lease grant; every write for the job presents it (G3)
    token            bigint  NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at bigint
) WITH (fillfactor = 80); -- leave room for HOT updates: heartbeats rewrite the row often

-- Idempotent submission: one job per (tenant, key).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Claiming: runnable jobs per tenant, oldest first (round robin walks tenants in order).
CREATE INDEX jobs_runnable ON jobs (tenant, job_id)
    WHERE status IN ('queued', 'running');

-- A tenant's job list, newest first (G6 reads are always by tenant).
CREATE INDEX jobs_tenant ON jobs (tenant, job_id);

-- The event log. Only the primary key is indexed, to keep bytes per event small (W7).
-- `payload` is the exact JSON text of `EventBody::payload()`, so the stored bytes are the
-- hashed bytes; hashes are raw 32-byte bytea.
CREATE TABLE events (
    job_id      uuid   NOT NULL,
    seq         bigint NOT NULL,
    recorded_at bigint NOT NULL,
    kind        text   NOT NULL,
    payload     text   NOT NULL,
    prev_hash   bytea  NOT NULL,
    hash        bytea  NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE snapshots (
    job_id uuid   NOT NULL,
    seq    bigint NOT NULL,
    blob   bytea  NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- The invocation ledger (G2), one row per step, projected from step events.
CREATE TABLE ledger (
    job_id         uuid   NOT NULL,
    step           text   COLLATE "C" NOT NULL,
    invocation_key text   NOT NULL,
    attempt        bigint NOT NULL,
    effect         text   NOT NULL CHECK (effect IN ('pure', 'idempotent', 'side_effect')),
    status         text   NOT NULL
        CHECK (status IN ('started', 'succeeded', 'failed', 'outcome_unknown', 'confirmed')),
    updated_at     bigint NOT NULL,
    PRIMARY KEY (job_id, step)
);
