-- 0003_timers: durable timers for parked jobs (sleep steps, wait timeouts, retry delays).
--
-- A job parks (`job_parked`, status waiting) with an optional `wake_at`. A claim first
-- sweeps due timers (`wake_at <= now`, via `jobs_due`) into `wake_due`, which makes the
-- job claimable; any later append clears `wake_due` (the job is running again, or parked
-- anew with a new `wake_at`).

ALTER TABLE jobs ADD COLUMN wake_at bigint;
ALTER TABLE jobs ADD COLUMN wake_due boolean NOT NULL DEFAULT false;

ALTER TABLE jobs DROP COLUMN claimable; -- drops jobs_claimable with it
ALTER TABLE jobs ADD COLUMN claimable boolean NOT NULL
    GENERATED ALWAYS AS (status IN ('queued', 'running')
                         OR (status = 'waiting' AND (pending_commands > 0 OR wake_due))) STORED;
CREATE INDEX jobs_claimable ON jobs (tenant, job_id) WHERE claimable;

CREATE INDEX jobs_due ON jobs (wake_at)
    WHERE status = 'waiting' AND wake_at IS NOT NULL AND NOT wake_due;
