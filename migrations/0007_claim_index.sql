-- 0007_claim_index: a tenant's job list no longer has an index a claim could walk.
--
-- `jobs_tenant (tenant, job_id)` covered every job, so it could serve the claim's walk
-- of tenants with runnable work (`WHERE claimable ORDER BY tenant LIMIT 1`) as well as
-- `jobs_claimable` could, as far as the planner could tell from the statistics it had
-- when it made the claim's generic plan (a new table, or one whose jobs were all queued,
-- makes the two look alike). Each connection keeps the plan it made; one that took
-- `jobs_tenant` read past every finished job of the first tenant, on every claim, to find
-- a runnable one: 20-47 ms per claim behind a tenant with 10,000 finished jobs (W6, found
-- with auto_explain), against well under a millisecond on `jobs_claimable`.
--
-- The job list now reads two partial indexes, the claimable jobs (`jobs_claimable`) and
-- the settled ones (below), merged newest first; no index on `tenant` covers the jobs a
-- claim looks for except `jobs_claimable`, whatever the statistics say.

DROP INDEX jobs_tenant;
CREATE INDEX jobs_settled ON jobs (tenant, job_id) WHERE NOT claimable;
