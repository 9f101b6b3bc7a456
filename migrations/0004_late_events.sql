-- Event-time progress and late events of the speed layer.

-- Per partition: newest event time minus the out-of-orderness, NULL while the partition is
-- idle. The served speed watermark is the minimum over partitions.
ALTER TABLE speed_offsets ADD COLUMN watermark TIMESTAMPTZ;

-- Late events per metric and bucket, under every policy.
CREATE TABLE speed_late_counts (
    metric       TEXT        NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL,
    partition    INT         NOT NULL,
    late_count   BIGINT      NOT NULL,
    PRIMARY KEY (metric, bucket_start, partition)
);

-- The `side_output` policy's record of late events kept out of the speed side, for
-- reconciliation; the lake has them all.
CREATE TABLE speed_late_events (
    metric       TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    event_time   TIMESTAMPTZ NOT NULL,
    partition    INT         NOT NULL,
    kafka_offset BIGINT      NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (metric, event_id)
);
