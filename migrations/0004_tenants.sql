-- 0004_tenants: tenants as data. `id` is the `tenant` claim of tokens; `limits` is the
-- JSON of the tenant's rate limits (applied by the gateway and workers without restart).

CREATE TABLE tenants (
    id         text   COLLATE "C" PRIMARY KEY,
    name       text   NOT NULL,
    limits     text   NOT NULL DEFAULT '{}',
    created_at bigint NOT NULL
);
