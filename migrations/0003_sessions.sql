-- Speed layer: the event times of each session key (user), so that a late event can be placed
-- among its neighbours and the session starts it adds or removes counted. Kept, like the other
-- speed state, only until a promoted batch view covers it (plus the session gap).
CREATE TABLE speed_session_events (
    metric      TEXT        NOT NULL,
    session_key TEXT        NOT NULL,
    event_time  TIMESTAMPTZ NOT NULL,
    event_id    TEXT        NOT NULL,
    PRIMARY KEY (metric, session_key, event_time, event_id)
);
CREATE INDEX speed_session_events_time ON speed_session_events (event_time);
