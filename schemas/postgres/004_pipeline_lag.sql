-- pipeline_health gains the lag in messages per partition.
--
-- `weir run` now records each assigned partition's high watermark on its weir_offsets row
-- (high_watermark, watermark_at) every few seconds, so the lag is in Postgres too:
--
-- | metric                 | subject                  | at                  | value |
-- | ---------------------- | ------------------------ | ------------------- | ----- |
-- | rows_per_minute        | tick table               | the minute          | rows written in that minute (by written_at), each of the last 15 whole minutes and the current one, 0 when none |
-- | dead_letters_last_hour | stage                    | null                | dead letters created in the last hour; framing, schema, decode, guest and sink always listed |
-- | seconds_since_commit   | group_id/topic/partition | the last commit     | seconds since the partition's last committed batch |
-- | lag_messages           | group_id/topic/partition | the measurement     | messages between the committed offset and the high watermark as last measured (0 when caught up) |
--
-- seconds_since_commit grows on an idle partition as well as a stuck one; lag_messages
-- tells them apart (an idle partition has no lag). A partition no member has measured
-- yet has no lag_messages row.
CREATE OR REPLACE VIEW pipeline_health AS
WITH
    minutes AS (
        SELECT generate_series(date_trunc('minute', now()) - interval '15 minutes',
                               date_trunc('minute', now()), interval '1 minute') AS minute
    ),
    written AS (
        SELECT 'ticks_stocks'::text AS tbl, date_trunc('minute', written_at) AS minute,
               count(*) AS n
          FROM ticks_stocks
         WHERE written_at >= date_trunc('minute', now()) - interval '15 minutes'
         GROUP BY 2
        UNION ALL
        SELECT 'ticks_crypto', date_trunc('minute', written_at), count(*)
          FROM ticks_crypto
         WHERE written_at >= date_trunc('minute', now()) - interval '15 minutes'
         GROUP BY 2
        UNION ALL
        SELECT 'ticks_currency', date_trunc('minute', written_at), count(*)
          FROM ticks_currency
         WHERE written_at >= date_trunc('minute', now()) - interval '15 minutes'
         GROUP BY 2
    ),
    tables(tbl) AS (VALUES ('ticks_stocks'::text), ('ticks_crypto'), ('ticks_currency')),
    dead AS (
        SELECT stage, count(*) AS n
          FROM dead_letters
         WHERE created_at >= now() - interval '1 hour'
         GROUP BY stage
    ),
    stages(stage) AS (
        VALUES ('framing'::text), ('schema'), ('decode'), ('guest'), ('sink')
        UNION
        SELECT stage FROM dead
    )
SELECT 'rows_per_minute'::text AS metric, t.tbl AS subject, m.minute AS at,
       coalesce(w.n, 0)::double precision AS value
  FROM tables t
 CROSS JOIN minutes m
  LEFT JOIN written w ON w.tbl = t.tbl AND w.minute = m.minute
UNION ALL
SELECT 'dead_letters_last_hour', s.stage, NULL, coalesce(d.n, 0)::double precision
  FROM stages s
  LEFT JOIN dead d ON d.stage = s.stage
UNION ALL
SELECT 'seconds_since_commit', o.group_id || '/' || o.topic || '/' || o.partition, o.updated_at,
       extract(epoch FROM now() - o.updated_at)::double precision
  FROM weir_offsets o
UNION ALL
SELECT 'lag_messages', o.group_id || '/' || o.topic || '/' || o.partition, o.watermark_at,
       greatest(o.high_watermark - o.next_offset, 0)::double precision
  FROM weir_offsets o
 WHERE o.high_watermark IS NOT NULL;
