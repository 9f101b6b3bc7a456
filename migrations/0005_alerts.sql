-- Alerts: one row per firing episode of a rule and group; resolved rows stay for the listing.
CREATE TABLE alerts (
    rule         TEXT             NOT NULL,
    metric       TEXT             NOT NULL,
    group_key    TEXT             NOT NULL,
    state        TEXT             NOT NULL CHECK (state IN ('firing', 'resolved')),
    value        DOUBLE PRECISION NOT NULL,
    threshold    DOUBLE PRECISION NOT NULL,
    window_start TIMESTAMPTZ      NOT NULL,
    window_end   TIMESTAMPTZ      NOT NULL,
    fired_at     TIMESTAMPTZ      NOT NULL DEFAULT now(),
    resolved_at  TIMESTAMPTZ,
    PRIMARY KEY (rule, group_key, fired_at)
);
CREATE UNIQUE INDEX alerts_one_firing ON alerts (rule, group_key) WHERE state = 'firing';
