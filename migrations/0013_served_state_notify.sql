-- Every change to what a query reads (the promoted version and T, the speed layer's partials,
-- watermarks, late counts and coverage) sends a notification on `lambda_served_state`. The
-- serving layer LISTENs and drops its cached snapshots, so it can cache them without serving
-- anything older than the latest commit (plus the notification's delivery time).
--
-- Statement-level triggers, and Postgres folds repeated notifications of one transaction into
-- one, so a speed-layer batch costs one notification however many rows it writes.
CREATE FUNCTION lambda_notify_served_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lambda_served_state', '');
    RETURN NULL;
END
$$;

-- Idempotent, so a replay that swaps in new speed tables (created without triggers) can call
-- it again.
CREATE FUNCTION lambda_watch_served_state() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    watched regclass;
BEGIN
    FOREACH watched IN ARRAY ARRAY[
        'public.serving_state', 'public.speed_aggregates', 'public.speed_offsets',
        'public.speed_late_counts', 'public.speed_coverage'
    ]::regclass[] LOOP
        EXECUTE format(
            'CREATE OR REPLACE TRIGGER notify_served_state
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s
             FOR EACH STATEMENT EXECUTE FUNCTION lambda_notify_served_state()', watched);
    END LOOP;
END
$$;

SELECT lambda_watch_served_state();
