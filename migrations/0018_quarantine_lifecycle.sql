-- The quarantine's lifecycle: kept by age and size (quarantine.max_age, quarantine.max_mb), and
-- re-injected into its topic once the cause is fixed (`speed-layer quarantine replay`).

-- What one kept message costs, counted by the size bound: its payload and its reason.
ALTER TABLE quarantine
    ADD COLUMN kept_bytes BIGINT GENERATED ALWAYS AS
        (coalesce(octet_length(raw), 0) + octet_length(reason)) STORED;
-- Set when `replay` produced the payload again: where the copy went (`partition:offset`).
ALTER TABLE quarantine ADD COLUMN replayed_at TIMESTAMPTZ;
ALTER TABLE quarantine ADD COLUMN replayed_to TEXT;

-- Retention removes the oldest first.
CREATE INDEX quarantine_received_at ON quarantine (received_at);
