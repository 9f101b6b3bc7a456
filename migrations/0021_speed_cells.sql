-- Issue 17: the speed layer's cells, packed. A checkpoint writes one row per bucket it changed,
-- holding per metric every changed cell of that bucket (`shared_schema::metrics::cells`),
-- instead of one `speed_aggregates` row per cell and Kafka partition. Readers sum all rows of a
-- bucket.
-- Once a bucket has piled up rows, the checkpoint that next touches it merges them into one.
-- Every writer holds the log head (`speed_log_head`) while it writes, so merges never race.
CREATE TABLE speed_cells (
    bucket_start TIMESTAMPTZ NOT NULL,
    -- The log head's `seq` of the checkpoint that wrote the row (or merged it).
    seq          BIGINT      NOT NULL,
    -- The metrics the row holds, in the order of the body's sections, and for each the events
    -- the checkpoint counted in the bucket and how many of them were late (under every late
    -- policy): what `speed_late_counts` held per partition before.
    metrics      TEXT[]      NOT NULL,
    seen         BIGINT[]    NOT NULL,
    late         BIGINT[]    NOT NULL,
    -- Cells in the body, over all its sections.
    cells        INT         NOT NULL,
    body         BYTEA       NOT NULL,
    PRIMARY KEY (bucket_start, seq)
);
-- Mostly hashes, counts and sketch registers: compressing them would cost Postgres more CPU
-- than it saves bytes.
ALTER TABLE speed_cells ALTER COLUMN body SET STORAGE EXTERNAL;

-- `speed_aggregates` and `speed_late_counts` get no more writes; the readers still add their
-- rows, which retention removes as T passes them, so an upgrade neither loses nor doubles what
-- was counted before.

-- Serving caches drop on changes to the new table too.
CREATE OR REPLACE FUNCTION lambda_watch_served_state() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    watched regclass;
BEGIN
    FOREACH watched IN ARRAY ARRAY[
        'public.serving_state', 'public.speed_aggregates', 'public.speed_cells',
        'public.speed_offsets', 'public.speed_late_counts', 'public.speed_coverage'
    ]::regclass[] LOOP
        EXECUTE format(
            'CREATE OR REPLACE TRIGGER notify_served_state
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s
             FOR EACH STATEMENT EXECUTE FUNCTION lambda_notify_served_state()', watched);
    END LOOP;
END
$$;

SELECT lambda_watch_served_state();
