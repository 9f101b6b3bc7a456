-- The platform's metadata and speed-layer state. Timestamps are UTC instants.

-- Bad input from any consumer, once per message (CONTRACT §1).
CREATE TABLE quarantine (
    topic        TEXT        NOT NULL,
    partition    INT         NOT NULL,
    kafka_offset BIGINT      NOT NULL,
    raw          BYTEA,
    reason       TEXT        NOT NULL,
    detected_by  TEXT        NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, kafka_offset)
);

-- Speed layer: the next offset to read per partition, committed in the same transaction as
-- the aggregates it produced.
CREATE TABLE speed_offsets (
    topic          TEXT        NOT NULL,
    partition      INT         NOT NULL,
    next_offset    BIGINT      NOT NULL,
    max_event_time TIMESTAMPTZ,
    caught_up      BOOLEAN     NOT NULL DEFAULT false,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Speed layer: every event_id counted, across all partitions and instances. A row is removed
-- only with its bucket's speed state, once a promoted batch view covers that bucket.
CREATE TABLE speed_dedupe (
    event_id     TEXT        PRIMARY KEY,
    bucket_start TIMESTAMPTZ NOT NULL
);
CREATE INDEX speed_dedupe_bucket ON speed_dedupe (bucket_start);

-- Speed layer: partial aggregates per metric, bucket, group and source partition. Serving sums
-- over partitions, so partitions can move between instances with their rows.
CREATE TABLE speed_aggregates (
    metric       TEXT        NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL,
    dims         TEXT        NOT NULL,
    partition    INT         NOT NULL,
    event_count  BIGINT      NOT NULL,
    sum_micros   NUMERIC     NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (metric, bucket_start, dims, partition)
);
CREATE INDEX speed_aggregates_bucket ON speed_aggregates (bucket_start);

-- Speed layer: from when its state is complete (NULL: from the start of the topic).
CREATE TABLE speed_coverage (
    topic        TEXT PRIMARY KEY,
    covered_from TIMESTAMPTZ
);

-- Lander: the next offset to land per partition, committed with the files it published.
CREATE TABLE lake_progress (
    topic          TEXT        NOT NULL,
    partition      INT         NOT NULL,
    next_offset    BIGINT      NOT NULL,
    max_event_time TIMESTAMPTZ,
    caught_up      BOOLEAN     NOT NULL DEFAULT false,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Lander: the manifest of published files. A file on disk that is not listed here was left by
-- a crash before its commit and is never read.
CREATE TABLE lake_files (
    path           TEXT        PRIMARY KEY,
    topic          TEXT        NOT NULL,
    dt             DATE        NOT NULL,
    hour           INT         NOT NULL,
    row_count      BIGINT      NOT NULL,
    min_event_time TIMESTAMPTZ NOT NULL,
    max_event_time TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Batch layer: every view version written; immutable once finished.
CREATE TABLE batch_versions (
    version     TEXT        PRIMARY KEY,
    cutover     TIMESTAMPTZ NOT NULL,
    view_path   TEXT        NOT NULL,
    row_count   BIGINT      NOT NULL,
    lake_files  BIGINT      NOT NULL,
    lake_rows   BIGINT      NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    promoted_at TIMESTAMPTZ
);

-- What is served: one row, changed only inside a promotion transaction.
CREATE TABLE serving_state (
    id          INT PRIMARY KEY CHECK (id = 1),
    version     TEXT REFERENCES batch_versions (version),
    cutover     TIMESTAMPTZ,
    promoted_at TIMESTAMPTZ
);
INSERT INTO serving_state (id) VALUES (1);
