-- Divergence: after each promotion by `batch-layer run`, every metric of the new view compared
-- with what the speed layer held for the buckets the promotion newly covered, [previous T, T).
-- The batch layer keeps the newest `batch.keep_versions` comparisons per metric.
CREATE TABLE divergence (
    version           TEXT             NOT NULL REFERENCES batch_versions (version),
    metric            TEXT             NOT NULL,
    -- The newly covered buckets.
    range_start       TIMESTAMPTZ      NOT NULL,
    range_end         TIMESTAMPTZ      NOT NULL,
    -- The part of the range the speed layer covered and was compared; NULL when none was. The
    -- rest of the range (before the speed layer's coverage, or past what it had read) is not
    -- divergence and is left out.
    compared_start    TIMESTAMPTZ,
    compared_end      TIMESTAMPTZ,
    -- Finished totals over the compared buckets; NULL where a side has no value (no events, or
    -- nothing to divide).
    batch_total       DOUBLE PRECISION,
    speed_total       DOUBLE PRECISION,
    -- speed_total - batch_total, a missing total counting as 0; NULL when nothing was compared.
    difference        DOUBLE PRECISION,
    -- |difference| / max(|batch_total|, |speed_total|), 0 when both are 0; NULL when nothing
    -- was compared.
    ratio             DOUBLE PRECISION,
    -- Buckets holding a value on either side, and those whose finished values differ.
    buckets           BIGINT           NOT NULL,
    differing_buckets BIGINT           NOT NULL,
    computed_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (version, metric)
);
CREATE INDEX divergence_by_metric ON divergence (metric, computed_at DESC);
