-- What each batch view version was computed from, so that the next run can recompute only the
-- lake hours that changed since (batch-layer/src/incremental.rs).
CREATE TABLE batch_version_lake (
    version          TEXT    PRIMARY KEY REFERENCES batch_versions (version) ON DELETE CASCADE,
    -- Per lake hour (epoch ms of its start), a digest of the files the run saw.
    hours            BIGINT[] NOT NULL,
    digests          TEXT[]  NOT NULL,
    -- NULL for a full recompute.
    recomputed_hours INT
);
