-- Speed layer partition leases, used with `speed.assignment = "leases"`: the instances share the
-- partitions among themselves, without the broker's group coordinator. Each instance renews
-- its row in speed_members every third of the session timeout; one whose heartbeat is older
-- than the session timeout is gone. Every partition is leased to at most one live member at a
-- time, renewed with the heartbeat. Times are Postgres's own, so instances' clocks never
-- disagree. The lease decides who reads; the partition's epoch (speed_partition_epochs) still
-- fences what an instance that lost it may commit.
CREATE TABLE speed_members (
    topic        TEXT        NOT NULL,
    member       TEXT        NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, member)
);

CREATE TABLE speed_leases (
    topic      TEXT        NOT NULL,
    partition  INT         NOT NULL,
    owner      TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, partition)
);
