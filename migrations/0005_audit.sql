-- 0005_audit: the access audit log, and an index for per-tenant running-job caps.
--
-- Every mutating API call and every export writes one `access_audit_log` row in the same
-- transaction (usually the same statement) as its change, so a row exists exactly when
-- the change committed; a refused attempt (403) writes a `denied` row on its own. Rows are
-- read per tenant in id order (`GET /v1/audit`).

CREATE TABLE access_audit_log (
    id     bigserial PRIMARY KEY,
    at     bigint    NOT NULL,              -- ms since the epoch, database clock
    tenant text      COLLATE "C" NOT NULL,
    actor  text      NOT NULL,              -- the token's `sub`
    action text      NOT NULL,              -- e.g. job.submit, job.cancel, tenant.create
    target text      NOT NULL,              -- a job id, a tenant id, a path
    result text      NOT NULL               -- ok, existing, denied
);
CREATE INDEX access_audit_log_tenant ON access_audit_log (tenant, id);

-- Claims with per-tenant caps count each tenant's leased jobs; the set of leased jobs is
-- small (what workers run right now), so a partial index keeps that count cheap.
CREATE INDEX jobs_leased ON jobs (tenant) WHERE lease_owner IS NOT NULL;
