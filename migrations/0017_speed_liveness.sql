-- Speed layer: what it counted that the lake may not hold yet (CONTRACT §5.3). One row per
-- partition and committed batch: the offsets `[first_offset, next_offset)` of its events at or
-- after the cutover T read when it committed, and the earliest event time among them. A batch
-- run may move T to `T2` only when every row of a partition whose offsets the lake has not
-- landed has `min_event_time >= T2`. Rows the lake has landed are pruned.
CREATE TABLE speed_counted (
    topic          TEXT        NOT NULL,
    partition      INT         NOT NULL,
    first_offset   BIGINT      NOT NULL,
    next_offset    BIGINT      NOT NULL,
    min_event_time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, partition, first_offset)
);

-- Speed layer liveness, per partition of the topic, written by every running instance: the
-- broker's end offset, the speed layer's stored position seen beside it, and since when that
-- position has stood still below the end (NULL: not behind). A partition behind for longer
-- than the stall timeout has no live consumer: instances rejoin the group, and answers report
-- the buckets it may be missing as a gap.
CREATE TABLE speed_partition_liveness (
    topic        TEXT        NOT NULL,
    partition    INT         NOT NULL,
    end_offset   BIGINT      NOT NULL,
    speed_offset BIGINT      NOT NULL,
    behind_since TIMESTAMPTZ,
    observed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
