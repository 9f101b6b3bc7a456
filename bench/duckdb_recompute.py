"""The DuckDB side of the batch benchmark: the same dedupe and per-metric aggregation that
`batch-layer run` plans with DataFusion, over the same Parquet files. Prints JSON."""

import json
import sys
import time

import duckdb

lake_glob, cutover_ms = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
started = time.perf_counter()
con.execute(
    """
    CREATE TEMP TABLE deduped AS
    SELECT event_id, event_type, epoch_ms(event_time) AS t, user_id, product_id, amount, country
    FROM (SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY kafka_partition, kafka_offset) AS copy
          FROM read_parquet(?))
    WHERE copy = 1 AND epoch_ms(event_time) < ?
    """,
    [lake_glob, cutover_ms],
)
bucket = "(t // 60000) * 60000"
views = {
    "purchases": f"SELECT {bucket} AS b, country, count(*) FROM deduped WHERE event_type = 'purchase' GROUP BY ALL",
    "revenue": f"SELECT {bucket} AS b, country, count(*), sum(amount), min(amount), max(amount) FROM deduped WHERE event_type = 'purchase' AND amount IS NOT NULL GROUP BY ALL",
    "page_views": f"SELECT {bucket} AS b, product_id, count(*) FROM deduped WHERE event_type = 'page_view' GROUP BY ALL",
    "errors": f"SELECT {bucket} AS b, product_id, count(*) FROM deduped WHERE event_type = 'error' GROUP BY ALL",
    "active_users": f"SELECT {bucket} AS b, approx_count_distinct(user_id) FROM deduped WHERE user_id IS NOT NULL GROUP BY ALL",
    "failed_logins": f"SELECT {bucket} AS b, user_id, count(*) FROM deduped WHERE event_type = 'login_failed' GROUP BY ALL",
    "sessions": f"""WITH s AS (SELECT t, lag(t) OVER (PARTITION BY user_id ORDER BY t) AS prev
                             FROM deduped WHERE user_id IS NOT NULL)
                   SELECT {bucket} AS b, count(*) FROM s WHERE prev IS NULL OR t - prev >= 1800000 GROUP BY ALL""",
}
rows = 0
for name, sql in views.items():
    rows += len(con.execute(sql).fetchall())
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "view_rows": rows}))
