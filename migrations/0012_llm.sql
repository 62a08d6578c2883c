-- 0011_llm: agent steps' LLM providers per tenant, and each tenant's daily token usage
-- (docs/agents.md).
--
-- `llm_providers` holds a provider's JSON (name, kind, base URL, allowed models, and where
-- the workers find its API key: an environment variable or a file). The key itself is
-- never stored.
--
-- `llm_token_usage` counts a tenant's LLM tokens per UTC day of the database clock: a model
-- call adds its reservation with one conditional upsert (refused when the day's total would
-- pass the tenant's `llm_tokens_per_day`), and replaces it by its usage once answered. A
-- call cut off by a crash keeps its reservation: the count errs on the side of the budget.

CREATE TABLE llm_providers (
    tenant     text   COLLATE "C" NOT NULL,
    name       text   COLLATE "C" NOT NULL,
    spec       text   NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE llm_token_usage (
    tenant text   COLLATE "C" NOT NULL,
    day    bigint NOT NULL,          -- days since the Unix epoch, UTC
    tokens bigint NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (tenant, day)
);
