-- 0009_default_tenant: the system tenant `default`, whose admins manage every tenant
-- (docs/auth.md). Without it a freshly migrated database has no tenant at all, so no
-- token is accepted (each names a tenant that must exist) and no tenant can be created:
-- the first admin token of a deployment is one for `default`. Idempotent: a `default`
-- created before (by `aetheris dev --database-url`, or by hand) is kept as it is.

INSERT INTO tenants (id, name, limits, created_at)
VALUES ('default', 'default', '{}', floor(extract(epoch FROM now()) * 1000)::bigint)
ON CONFLICT (id) DO NOTHING;
