-- 0013_append_chain: the event hashes of an append, computed where its time is read.
--
-- An append is one statement (store/src/pg/append.rs): the job row's fence (token, seq,
-- chain head, time and status as the writer last saw them), the events, the ledger rows
-- and a finished job's transparency leaf, stamped with the database clock when the
-- statement runs. The hash chain (docs/architecture.md, G7) hashes that time, so the
-- hashes are computed in the statement, by this function: for each event i of the batch,
--
--   hash[i] = SHA-256(coalesce(prev[i], hash[i-1]) ‖ uuid_send(job[i]) ‖ int8send(seq[i])
--                     ‖ int8send(greatest(now_ms, floor_ms[i])) ‖ tail[i])
--
-- where `prev[i]` is the job's chain head for the first event of each job (NULL for the
-- events that follow it, which chain from the one before), `floor_ms[i]` the job's last
-- event time (times never run backwards within a job) and `tail[i]` the canonical bytes
-- after the time: kind length (u16 BE) ‖ kind ‖ SHA-256(payload) (see
-- `aetheris_runtime::chain::parts_around_time`). The writer recomputes every hash from
-- the time the statement returns and checks the job's new chain head against the stored
-- one.

CREATE FUNCTION aetheris_chain_hashes(now_ms bigint, job uuid[], seq bigint[],
                                      floor_ms bigint[], tail bytea[], prev bytea[])
RETURNS bytea[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    h   bytea;
    out bytea[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(array_length(job, 1), 0) LOOP
        h := sha256(coalesce(prev[i], h) || uuid_send(job[i]) || int8send(seq[i])
                    || int8send(greatest(now_ms, floor_ms[i])) || tail[i]);
        out[i] := h;
    END LOOP;
    RETURN out;
END
$$;
