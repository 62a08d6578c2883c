-- 0010_transparency: each tenant's transparency log and evidence redaction policy
-- (docs/evidence.md).
--
-- The log is an append-only list of leaves, one per finished job, numbered 0, 1, 2, … per
-- tenant: a leaf is appended in the transaction that appends the job's terminal event
-- (job_succeeded, job_failed, job_cancelled), and its `leaf_hash` is the RFC 9162 leaf
-- hash of the job's id, last seq and chain head (`aetheris_proof::checkpoint::
-- job_leaf_hash`). Signed checkpoints (tree size and Merkle root) are computed from the
-- leaves when asked for; nothing here is signed.
--
-- `transparency_heads` holds each tenant's leaf count. An append transaction takes the
-- next indexes with `INSERT … ON CONFLICT (tenant) DO UPDATE SET size = size + k
-- RETURNING size`: the row lock it takes serializes the tenant's appends until commit, so
-- indexes are gap-free and unique under group commit and any number of workers, and
-- leaves commit in index order (a reader always sees a prefix of the log).

CREATE TABLE transparency_heads (
    tenant text   COLLATE "C" PRIMARY KEY,
    size   bigint NOT NULL CHECK (size >= 0)
);

CREATE TABLE transparency_leaves (
    tenant      text   COLLATE "C" NOT NULL,
    idx         bigint NOT NULL CHECK (idx >= 0),
    job_id      uuid   NOT NULL UNIQUE,        -- a job finishes once
    leaf_hash   bytea  NOT NULL CHECK (length(leaf_hash) = 32),
    appended_at bigint NOT NULL,               -- the terminal event's store time (ms)
    PRIMARY KEY (tenant, idx)
);

-- Jobs that finished before this migration join their tenant's log now, in the order
-- they finished (then by id), with the leaf they would have got:
-- SHA-256(0x00 ‖ "aetheris:job:v1\0" ‖ job id ‖ last seq (u64 BE) ‖ chain head).
INSERT INTO transparency_leaves (tenant, idx, job_id, leaf_hash, appended_at)
SELECT tenant,
       row_number() OVER (PARTITION BY tenant ORDER BY updated_at, job_id) - 1,
       job_id,
       sha256('\x00'::bytea || '\x61657468657269733a6a6f623a763100'::bytea
              || uuid_send(job_id) || int8send(last_seq) || last_hash),
       updated_at
FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled');

INSERT INTO transparency_heads (tenant, size)
SELECT tenant, count(*) FROM transparency_leaves GROUP BY tenant;

-- Per-tenant redaction policy of evidence exports: a JSON array of
-- {"path": "...", "reason": "..."} applied to every export of the tenant's jobs.
ALTER TABLE tenants ADD COLUMN evidence_policy text NOT NULL DEFAULT '[]';
