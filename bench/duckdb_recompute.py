"""The DuckDB side of the batch benchmark: the same dedupe and per-metric aggregation that
`batch-layer run` plans with DataFusion, over the same Parquet files. The dedupe is timed in two
formulations, a window over every id and a join of the repeated ids only (the one the batch
layer uses), and the faster one is the baseline. Prints JSON."""

import json
import sys
import time

import duckdb

lake_glob, cutover_ms = sys.argv[1], int(sys.argv[2])
DEDUPES = {
    "window": """
        CREATE OR REPLACE TEMP TABLE deduped AS
        SELECT event_id, event_type, epoch_ms(event_time) AS t, user_id, product_id, amount, country
        FROM (SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY kafka_partition, kafka_offset) AS copy
              FROM read_parquet($1))
        WHERE copy = 1 AND epoch_ms(event_time) < $2
    """,
    "repeated_join": """
        CREATE OR REPLACE TEMP TABLE deduped AS
        WITH lake AS (SELECT *, CAST(kafka_partition AS BIGINT) * 1099511627776 + kafka_offset AS pos
                      FROM read_parquet($1)),
             repeated AS (SELECT event_id, min(pos) AS first_copy FROM lake
                          GROUP BY event_id HAVING count(*) > 1)
        SELECT l.event_id, l.event_type, epoch_ms(l.event_time) AS t, l.user_id, l.product_id, l.amount, l.country
        FROM lake l LEFT JOIN repeated r ON l.event_id = r.event_id
        WHERE (r.first_copy IS NULL OR l.pos = r.first_copy) AND epoch_ms(l.event_time) < $2
    """,
}
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
con = duckdb.connect()
timings = {}
for dedupe_name, dedupe in DEDUPES.items():
    started = time.perf_counter()
    con.execute(dedupe, [lake_glob, cutover_ms])
    rows = 0
    for name, sql in views.items():
        rows += len(con.execute(sql).fetchall())
    timings[dedupe_name] = time.perf_counter() - started
print(json.dumps({"seconds": min(timings.values()), "by_dedupe": timings, "view_rows": rows}))
