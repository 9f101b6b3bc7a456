-- Alert transitions waiting for the webhook (an outbox): written in the alert evaluator's
-- transaction with the alert's own state, so every stored transition is queued exactly once, a
-- restart loses none, and one that the receiver keeps refusing stays queued (retried with a
-- backoff capped at five minutes) until it is delivered. `body` is what is POSTed, in the format
-- `serving.webhook_format` chose when it was queued. Delivered rows are kept a week.
CREATE TABLE alert_deliveries (
    id              BIGSERIAL   PRIMARY KEY,
    queued_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The alert (rule, unit separator, group key): Alertmanager's resends find its latest body.
    alert_key       TEXT        NOT NULL,
    body            JSONB       NOT NULL,
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX alert_deliveries_pending ON alert_deliveries (next_attempt_at) WHERE delivered_at IS NULL;
