-- Every event the speed layer counted for a metric, late or not, so the late rate is
-- late_count / seen_count over any range.
ALTER TABLE speed_late_counts ADD COLUMN seen_count BIGINT NOT NULL DEFAULT 0;
