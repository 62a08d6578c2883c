-- 0008_processes: the live processes of a deployment, so each can take its share of a
-- tenant's global rate limits (docs/limits.md, "Several processes"). Every gateway and
-- worker re-announces itself each heartbeat with an expiry on the database clock; a
-- process that stops announcing (killed) drops out of the count when its row expires, a
-- draining one deletes its row at once. Rows long expired are removed by later
-- announcements.

CREATE TABLE processes (
    kind       text   COLLATE "C" NOT NULL CHECK (kind IN ('gateway', 'worker')),
    id         text   COLLATE "C" NOT NULL,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (kind, id)
);
