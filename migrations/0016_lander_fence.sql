-- One lander per topic (issue 15). A lander holds a session advisory lock for the topic for as
-- long as it runs, and on taking it raises the topic's epoch here. Every commit of the lake
-- manifest and positions checks, under a share lock on this row, that its epoch is still the
-- current one: a lander whose lock connection died while another took over cannot commit what
-- it read, even before it notices.
CREATE TABLE lander_fence (
    topic TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    holder_pid INT NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Raises `lander_fenced` (SQLSTATE LF001) unless `held` is the current epoch of `fenced_topic`;
-- the row stays share-locked until the calling transaction ends, so a new owner's epoch waits
-- for a commit in flight instead of overtaking it.
CREATE FUNCTION lambda_check_lander_fence(fenced_topic TEXT, held BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch BIGINT;
BEGIN
    SELECT epoch INTO current_epoch FROM lander_fence WHERE topic = fenced_topic FOR SHARE;
    IF current_epoch IS DISTINCT FROM held THEN
        RAISE EXCEPTION 'lander_fenced: epoch % of topic % is not the current epoch %',
            held, fenced_topic, current_epoch
            USING ERRCODE = 'LF001';
    END IF;
END
$$;
