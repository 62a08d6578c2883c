-- 0002_commands: operator commands for jobs (cancel now; signals and confirmations later)
-- and the `cancelled` job status.
--
-- A command is stored durably before the gateway answers (G1), then applied by the worker
-- holding the job's lease, which appends the matching event under its fencing token and
-- marks the command applied. A job with unapplied commands is claimable even while it
-- waits, so a cancel reaches a job no worker holds.

ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled'));

ALTER TABLE jobs ADD COLUMN pending_commands integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN claimable boolean NOT NULL
    GENERATED ALWAYS AS (status IN ('queued', 'running')
                         OR (status = 'waiting' AND pending_commands > 0)) STORED;

DROP INDEX jobs_runnable;
CREATE INDEX jobs_claimable ON jobs (tenant, job_id) WHERE claimable;

CREATE TABLE commands (
    id         bigserial PRIMARY KEY,
    job_id     uuid      NOT NULL REFERENCES jobs (job_id),
    body       text      NOT NULL,
    created_at bigint    NOT NULL,
    applied_at bigint
);
CREATE INDEX commands_pending ON commands (job_id, id) WHERE applied_at IS NULL;
