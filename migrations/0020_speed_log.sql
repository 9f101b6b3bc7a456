-- Issue 17: the speed layer keeps its dedupe and session state in memory, beside the partitions
-- it owns, instead of a Postgres row per event (`speed_dedupe`, `speed_session_events`).
-- What makes that state durable and shared is the id log: one row per checkpoint, packing the
-- id hash, event time and session keys of every event it counted. Every instance reads every
-- row, so a duplicate counts once whichever partition or instance saw its first copy.
CREATE TABLE speed_log (
    seq            BIGINT      PRIMARY KEY,
    entries        INT         NOT NULL,
    -- Retention deletes a row once every entry is older than the session horizon.
    max_event_time TIMESTAMPTZ NOT NULL,
    body           BYTEA       NOT NULL,
    written_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Hashes do not compress: do not try.
ALTER TABLE speed_log ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX speed_log_max_event_time ON speed_log (max_event_time);

-- The ordering point: each checkpoint raises `seq` first and holds the row lock until it
-- commits, so rows are written in sequence order. `generation` names this log; a replay swaps
-- in another, which running instances notice and load.
CREATE TABLE speed_log_head (
    id         INT    PRIMARY KEY CHECK (id = 1),
    seq        BIGINT NOT NULL,
    generation BIGINT NOT NULL
);
INSERT INTO speed_log_head (id, seq, generation)
VALUES (1, 0, (random() * 9e15)::bigint);

-- Who owns each partition: the group's assignee raises the epoch, and a checkpoint holding an
-- older one is refused, so an instance that lost a partition while paused cannot write for it.
CREATE TABLE speed_partition_epochs (
    topic      TEXT        NOT NULL,
    partition  INT         NOT NULL,
    epoch      BIGINT      NOT NULL,
    owner      TEXT        NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
