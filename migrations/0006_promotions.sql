-- Every change of what is served, in order: runs, pins and rollbacks. A rollback marks the
-- promotion it undoes and serves the one before it again.
CREATE TABLE promotions (
    id          BIGSERIAL   PRIMARY KEY,
    version     TEXT        NOT NULL REFERENCES batch_versions (version),
    cutover     TIMESTAMPTZ NOT NULL,
    reason      TEXT        NOT NULL CHECK (reason IN ('run', 'pin', 'rollback')),
    rolled_back BOOLEAN     NOT NULL DEFAULT false,
    promoted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO promotions (version, cutover, reason, promoted_at)
SELECT version, cutover, 'run', promoted_at FROM batch_versions WHERE promoted_at IS NOT NULL
ORDER BY promoted_at;
