-- 0006_users: users of a tenant as data. `id` is the token's `sub`; `roles` a JSON array
-- of role names. A token for a user with a row acts only with the roles the row also
-- grants, and not at all while `disabled` (revocation without rotating keys); a token for
-- a user without a row acts with its own roles.

CREATE TABLE users (
    tenant     text    COLLATE "C" NOT NULL REFERENCES tenants (id),
    id         text    COLLATE "C" NOT NULL,
    roles      text    NOT NULL DEFAULT '[]',
    disabled   boolean NOT NULL DEFAULT false,
    created_at bigint  NOT NULL,
    updated_at bigint  NOT NULL,
    PRIMARY KEY (tenant, id)
);
