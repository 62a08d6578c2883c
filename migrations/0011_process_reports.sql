-- 0011_process_reports: what each live process says about itself (docs/operations.md,
-- "The supervision view"). With every announcement a gateway or worker now also records
-- when it announced (`seen_ms`, database clock: the heartbeat age is `now - seen_ms` and
-- its TTL `expires_ms - seen_ms`) and its report (`report`: JSON text of its supervision
-- figures — actors by kind, restarts, panics, mailbox depth, leases held, version, start
-- time — which the store does not read). Rows of a process of an older version that
-- announces during a rolling upgrade keep `seen_ms` NULL and report '{}'.

ALTER TABLE processes ADD COLUMN seen_ms bigint;
ALTER TABLE processes ADD COLUMN report text NOT NULL DEFAULT '{}';
