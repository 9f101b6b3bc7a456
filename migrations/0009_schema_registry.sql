-- The schema registry: which event schema versions the platform knows, and which metric
-- definitions every service instance and every batch view was computed with.

-- Every event schema version a binary has decoded with. A binary that means something else by
-- a recorded version (another fingerprint) is refused at start.
CREATE TABLE event_schema_versions (
    version       INT         PRIMARY KEY,
    description   TEXT        NOT NULL,
    -- [{"name","type","required"}], sorted by name; the fingerprint covers version and fields.
    fields        JSONB       NOT NULL,
    fingerprint   TEXT        NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every set of metric definitions ever used, by fingerprint: the canonical form of the parsed
-- catalogue (shared_schema::fingerprint), kept so a disagreement can be told field by field.
CREATE TABLE metric_definitions (
    fingerprint TEXT        PRIMARY KEY,
    definitions JSONB       NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per start of a service that computes or serves metrics, refused starts included.
CREATE TABLE service_instances (
    id          BIGSERIAL   PRIMARY KEY,
    service     TEXT        NOT NULL,
    fingerprint TEXT        NOT NULL REFERENCES metric_definitions (fingerprint),
    host        TEXT        NOT NULL,
    pid         INT         NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome     TEXT        NOT NULL CHECK (outcome IN ('started', 'accepted', 'refused')),
    -- For a refusal, what differed.
    detail      TEXT
);

-- The definitions each view version was computed with. NULL for versions written before the
-- registry existed: nothing is compared against those.
ALTER TABLE batch_versions
    ADD COLUMN definitions_fingerprint TEXT REFERENCES metric_definitions (fingerprint);
