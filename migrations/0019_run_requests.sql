-- Batch runs requested over HTTP (`POST /v1/admin/runs`). The serving layer only records them;
-- `batch-layer schedule` (or the one-shot `batch-layer run --requested`) claims and runs them,
-- and writes their outcome here, which `GET /v1/admin/runs/{id}` reads.
CREATE TABLE run_requests (
    id               BIGSERIAL   PRIMARY KEY,
    state            TEXT        NOT NULL DEFAULT 'requested'
                     CHECK (state IN ('requested', 'running', 'succeeded', 'failed')),
    -- The cutover asked for (`--cutover`); NULL: the latest boundary at which the lake is complete.
    cutover          TIMESTAMPTZ,
    requested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    -- Once succeeded: the promoted version and its cutover.
    version          TEXT,
    promoted_cutover TIMESTAMPTZ,
    -- Once failed: why.
    error            TEXT
);
-- One request open at a time: a second is refused (409) until the first has finished.
CREATE UNIQUE INDEX run_requests_one_open ON run_requests ((true))
    WHERE state IN ('requested', 'running');
