-- Partials carry minimum, maximum and a distinct-count sketch besides count and sum, so every
-- aggregation of the metric definitions can be stored and merged.
ALTER TABLE speed_aggregates
    ADD COLUMN min_micros BIGINT,
    ADD COLUMN max_micros BIGINT,
    ADD COLUMN sketch     BYTEA;
