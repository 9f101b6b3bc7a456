-- The user_profiles dimension (source of record) and what the layers keep of its changelog.

-- The source of record. `updated_at` is business time: a version is valid from it until the
-- next version's. FULL replica identity puts the whole old row in the log, for `before`.
CREATE TABLE user_profiles (
    user_id        TEXT        PRIMARY KEY,
    tier           TEXT        NOT NULL,
    signup_country TEXT,
    updated_at     TIMESTAMPTZ NOT NULL
);
ALTER TABLE user_profiles REPLICA IDENTITY FULL;

-- CDC publisher: the slots whose initial snapshot of the table was published. The slot itself
-- holds the confirmed LSN.
CREATE TABLE cdc_snapshots (
    slot         TEXT        PRIMARY KEY,
    lsn          BIGINT      NOT NULL,
    rows         BIGINT      NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Speed layer: the changelog as state, one row per change (a change delivered twice is one
-- row). Kept whole: an event of any time may need any version.
CREATE TABLE speed_profile_versions (
    user_id        TEXT    NOT NULL,
    valid_from     BIGINT  NOT NULL,
    lsn            BIGINT  NOT NULL,
    tier           TEXT,
    signup_country TEXT,
    deleted        BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, valid_from, lsn)
);

-- Changelog readers (the speed layer and the lander): the next offset per partition,
-- committed with what they made of the records.
CREATE TABLE changelog_positions (
    consumer    TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    partition   INT    NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);

-- Batch layer: a digest of the changelog files a view was joined with. A different digest at
-- the next run means the dimension's history changed, so the enriched metrics are recomputed.
ALTER TABLE batch_version_lake ADD COLUMN changelog_digest TEXT;
