-- Market data as the `tickers` guest writes it: one tick table per asset class, OHLCV
-- candles merged by the host, and the views dashboards read.
--
-- `weir migrate` (and `weir run` with database.migrations) runs this file once, in one
-- transaction of its own, in file-name order after 001_raw_ticks.sql. So: no BEGIN/COMMIT
-- here, no CREATE INDEX CONCURRENTLY.
--
-- Types, for every table below:
-- - times are timestamptz: the feed's times are instants (UTC epoch millis), and the host
--   writes timestamps as instants, whatever the session's time zone;
-- - prices, sizes and volumes are double precision: the feed's values are binary doubles
--   already (Avro `double`), so double precision stores exactly what arrived; numeric
--   would claim a decimal precision the feed does not have, and costs more to store,
--   index and aggregate;
-- - day_volume is bigint (Avro `long`); event_id is uuid (Avro `uuid`), the primary key,
--   so a tick redelivered in a later batch cannot be stored twice.

-- weir's own tables (weir_offsets, dead_letters) exist before any migration runs: weir
-- creates them first.

-- Not part of the host's definition: pipeline_health counts the last hour's dead letters,
-- and rows arrive in created_at order, so a block-range index finds them for a few
-- kilobytes (and costs inserts next to nothing).
CREATE INDEX IF NOT EXISTS dead_letters_created_at ON dead_letters USING brin (created_at);

-- Ticks: one row per accepted message (`tickers` guest, config `table`). The guest writes
-- every column but two:
-- - written_at: when the row was committed (now() is the time of the batch's
--   transaction). pipeline_health counts rows by it, since event and ingestion times may
--   be simulated or replayed from the past.
-- - guest_version: the sha256 of the guest that wrote the row, filled by the host when
--   the pipeline sets `version_column: guest_version`; null otherwise.
CREATE TABLE ticks_stocks (
    event_id        uuid             PRIMARY KEY,
    symbol          text             NOT NULL,
    event_time      timestamptz      NOT NULL,
    ingestion_time  timestamptz      NOT NULL,
    price           double precision NOT NULL,
    bid             double precision,           -- absent outside the regular session
    ask             double precision,
    last_size       double precision,           -- size of the last trade; null: not given
    day_volume      bigint,
    change          double precision,
    change_percent  double precision,
    currency        text,
    exchange        text,
    quote_type      text,
    market_hours    text,
    source          text,
    kafka_partition integer          NOT NULL,
    kafka_offset    bigint           NOT NULL,
    guest_version   text,
    written_at      timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE ticks_crypto (
    event_id           uuid             PRIMARY KEY,
    symbol             text             NOT NULL,
    event_time         timestamptz      NOT NULL,
    ingestion_time     timestamptz      NOT NULL,
    price              double precision NOT NULL,
    bid                double precision NOT NULL,
    ask                double precision NOT NULL,
    last_size          double precision,
    day_volume         bigint,                  -- over the last 24 hours
    change             double precision,
    change_percent     double precision,
    circulating_supply double precision,
    currency           text,
    exchange           text,
    quote_type         text,
    market_hours       text,
    source             text,
    kafka_partition    integer          NOT NULL,
    kafka_offset       bigint           NOT NULL,
    guest_version      text,
    written_at         timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE ticks_currency (
    event_id        uuid             PRIMARY KEY,
    symbol          text             NOT NULL,
    event_time      timestamptz      NOT NULL,
    ingestion_time  timestamptz      NOT NULL,
    price           double precision NOT NULL,
    bid             double precision NOT NULL,
    ask             double precision NOT NULL,
    last_size       double precision,
    day_volume      bigint,                     -- spot FX has none
    change          double precision,
    change_percent  double precision,
    currency        text,
    exchange        text,
    quote_type      text,
    market_hours    text,
    source          text,
    kafka_partition integer          NOT NULL,
    kafka_offset    bigint           NOT NULL,
    guest_version   text,
    written_at      timestamptz      NOT NULL DEFAULT now()
);

-- Per tick table:
-- - (symbol, event_time DESC, kafka_offset DESC): the latest tick of a symbol is the first
--   entry of its range (latest_prices; a symbol's history). kafka_offset breaks ties of
--   equal event times as the candles' close does: the later message wins (a symbol is
--   one Kafka key, so its ticks share a partition).
-- - (event_time): time-range scans across symbols (top_movers), and max(event_time).
-- - BRIN (written_at): rows arrive in written_at order, so a block-range index answers
--   "the last 15 minutes" (pipeline_health) for a few kilobytes.
CREATE INDEX ticks_stocks_symbol_latest ON ticks_stocks (symbol, event_time DESC, kafka_offset DESC);
CREATE INDEX ticks_stocks_event_time ON ticks_stocks (event_time);
CREATE INDEX ticks_stocks_written_at ON ticks_stocks USING brin (written_at);
CREATE INDEX ticks_crypto_symbol_latest ON ticks_crypto (symbol, event_time DESC, kafka_offset DESC);
CREATE INDEX ticks_crypto_event_time ON ticks_crypto (event_time);
CREATE INDEX ticks_crypto_written_at ON ticks_crypto USING brin (written_at);
CREATE INDEX ticks_currency_symbol_latest ON ticks_currency (symbol, event_time DESC, kafka_offset DESC);
CREATE INDEX ticks_currency_event_time ON ticks_currency (event_time);
CREATE INDEX ticks_currency_written_at ON ticks_currency USING brin (written_at);

-- Candles: one row per (symbol, interval, bucket), merge-upserted by the host with the
-- guest's policies: open first-by-time(first_event_at), high max, low min, close
-- last-by-time(last_event_at), volume and trades sum, first_event_at min, last_event_at
-- max. bucket_start is event_time floored to the interval, aligned to the Unix epoch
-- (UTC). volume is the sum of the ticks' last_size (0 for ticks without one); trades
-- counts ticks. guest_version, filled by the host with `version_column: guest_version`,
-- is the guest that merged into the row last. The primary key is the upsert's key (the host needs a unique index on
-- exactly those columns). Another interval needs a migration that widens the CHECK.
CREATE TABLE candles (
    symbol         text             NOT NULL,
    asset_class    text             NOT NULL CHECK (asset_class IN ('stocks', 'crypto', 'currency')),
    interval       text             NOT NULL CHECK (interval IN ('1m', '5m', '15m')),
    bucket_start   timestamptz      NOT NULL,
    open           double precision NOT NULL,
    high           double precision NOT NULL,
    low            double precision NOT NULL,
    close          double precision NOT NULL,
    volume         double precision NOT NULL,
    trades         bigint           NOT NULL,
    first_event_at timestamptz      NOT NULL,
    last_event_at  timestamptz      NOT NULL,
    guest_version  text,
    PRIMARY KEY (symbol, interval, bucket_start)
);

-- The recent candles of an interval, all symbols (candles_1m and the like, dashboards).
CREATE INDEX candles_interval_recent ON candles (interval, bucket_start DESC);

-- Every tick of the three classes, with its class: what latest_prices and top_movers
-- read. A filter on event_time or symbol reaches each table's indexes.
CREATE VIEW all_ticks AS
    SELECT 'stocks'::text AS asset_class, symbol, event_time, price, bid, ask, last_size,
           kafka_partition, kafka_offset
      FROM ticks_stocks
    UNION ALL
    SELECT 'crypto', symbol, event_time, price, bid, ask, last_size, kafka_partition, kafka_offset
      FROM ticks_crypto
    UNION ALL
    SELECT 'currency', symbol, event_time, price, bid, ask, last_size, kafka_partition, kafka_offset
      FROM ticks_currency;

-- The latest tick of each symbol: latest by event_time (then by offset, as for a close),
-- not by arrival, so a late tick does not pass for the current price. Each table's
-- symbols are walked with a recursive skip scan over its (symbol, event_time DESC) index:
-- one short index descent per symbol rather than a pass over every tick.
CREATE VIEW latest_prices AS
WITH RECURSIVE
    stocks(symbol) AS (
        (SELECT symbol FROM ticks_stocks ORDER BY symbol LIMIT 1)
        UNION ALL
        SELECT (SELECT t.symbol FROM ticks_stocks t WHERE t.symbol > s.symbol
                 ORDER BY t.symbol LIMIT 1)
          FROM stocks s WHERE s.symbol IS NOT NULL
    ),
    crypto(symbol) AS (
        (SELECT symbol FROM ticks_crypto ORDER BY symbol LIMIT 1)
        UNION ALL
        SELECT (SELECT t.symbol FROM ticks_crypto t WHERE t.symbol > s.symbol
                 ORDER BY t.symbol LIMIT 1)
          FROM crypto s WHERE s.symbol IS NOT NULL
    ),
    currency(symbol) AS (
        (SELECT symbol FROM ticks_currency ORDER BY symbol LIMIT 1)
        UNION ALL
        SELECT (SELECT t.symbol FROM ticks_currency t WHERE t.symbol > s.symbol
                 ORDER BY t.symbol LIMIT 1)
          FROM currency s WHERE s.symbol IS NOT NULL
    )
SELECT l.symbol, 'stocks'::text AS asset_class, l.price, l.bid, l.ask, l.event_time
  FROM stocks s
 CROSS JOIN LATERAL (
       SELECT t.symbol, t.price, t.bid, t.ask, t.event_time FROM ticks_stocks t
        WHERE t.symbol = s.symbol
        ORDER BY t.event_time DESC, t.kafka_offset DESC LIMIT 1) l
UNION ALL
SELECT l.symbol, 'crypto', l.price, l.bid, l.ask, l.event_time
  FROM crypto s
 CROSS JOIN LATERAL (
       SELECT t.symbol, t.price, t.bid, t.ask, t.event_time FROM ticks_crypto t
        WHERE t.symbol = s.symbol
        ORDER BY t.event_time DESC, t.kafka_offset DESC LIMIT 1) l
UNION ALL
SELECT l.symbol, 'currency', l.price, l.bid, l.ask, l.event_time
  FROM currency s
 CROSS JOIN LATERAL (
       SELECT t.symbol, t.price, t.bid, t.ask, t.event_time FROM ticks_currency t
        WHERE t.symbol = s.symbol
        ORDER BY t.event_time DESC, t.kafka_offset DESC LIMIT 1) l;

-- The candles of one interval, with the end of each bucket (exclusive).
CREATE VIEW candles_1m AS
    SELECT symbol, asset_class, bucket_start, bucket_start + interval '1 minute' AS bucket_end,
           open, high, low, close, volume, trades, first_event_at, last_event_at
      FROM candles WHERE interval = '1m';
CREATE VIEW candles_5m AS
    SELECT symbol, asset_class, bucket_start, bucket_start + interval '5 minutes' AS bucket_end,
           open, high, low, close, volume, trades, first_event_at, last_event_at
      FROM candles WHERE interval = '5m';
CREATE VIEW candles_15m AS
    SELECT symbol, asset_class, bucket_start, bucket_start + interval '15 minutes' AS bucket_end,
           open, high, low, close, volume, trades, first_event_at, last_event_at
      FROM candles WHERE interval = '15m';

-- The biggest moves over the last 1, 5 and 15 minutes, ranked per window by the size of
-- the move (up or down), 1 for the largest.
--
-- The windows end at the latest event time in the data (`window_end`, the same for every
-- class and window), not at now(): data simulated with `--start-time` or replayed from a
-- file has event times in the past, where windows ending at now() would hold nothing; on
-- a live feed the latest event is a moment ago, so the two agree. One end for all classes
-- keeps the windows comparable; a symbol with no tick in a window (stocks after the
-- close) is not in that window's ranking.
--
-- A window (end - length, end] holds each tick whose event_time is in it; first_price is
-- the price at the earliest of those times, last_price at the latest (ties by Kafka
-- offset, earlier first, as the candles' open and close break them). change_percent is
-- 100 * (last - first) / first. `time_window` is the window's length ('1m', '5m',
-- '15m'); the column is not called `window` because WINDOW is a reserved word in
-- Postgres, which would make every query of it quote the name.
CREATE VIEW top_movers AS
WITH
    window_end AS (
        SELECT max(t) AS at FROM (
            SELECT max(event_time) AS t FROM ticks_stocks
            UNION ALL SELECT max(event_time) FROM ticks_crypto
            UNION ALL SELECT max(event_time) FROM ticks_currency) latest
    ),
    windows(time_window, length) AS (
        VALUES ('1m'::text, interval '1 minute'),
               ('5m', interval '5 minutes'),
               ('15m', interval '15 minutes')
    ),
    moves AS (
        SELECT w.time_window, t.symbol, t.asset_class, e.at AS window_end,
               (array_agg(t.price ORDER BY t.event_time, t.kafka_offset))[1] AS first_price,
               (array_agg(t.price ORDER BY t.event_time DESC, t.kafka_offset DESC))[1]
                   AS last_price,
               count(*) AS ticks
          FROM window_end e
         CROSS JOIN windows w
          JOIN all_ticks t ON t.event_time > e.at - w.length AND t.event_time <= e.at
               -- The longest window, as a bound the event_time indexes can use.
               AND t.event_time > e.at - interval '15 minutes'
         GROUP BY w.time_window, t.symbol, t.asset_class, e.at
    )
SELECT time_window, symbol, asset_class, first_price, last_price,
       100 * (last_price - first_price) / first_price AS change_percent,
       rank() OVER (PARTITION BY time_window
                    ORDER BY abs(last_price - first_price) / first_price DESC) AS rank,
       ticks, window_end
  FROM moves;

-- How the pipeline is doing, one row per measurement (narrow, for dashboards):
--
-- | metric                 | subject                  | at                  | value |
-- | ---------------------- | ------------------------ | ------------------- | ----- |
-- | rows_per_minute        | tick table               | the minute          | rows written in that minute (by written_at), each of the last 15 whole minutes and the current one, 0 when none |
-- | dead_letters_last_hour | stage                    | null                | dead letters created in the last hour; framing, schema, decode, guest and sink always listed |
-- | seconds_since_commit   | group_id/topic/partition | the last commit     | seconds since the partition's last committed batch |
--
-- Lag: weir_offsets keeps each partition's next offset and when it last moved
-- (updated_at, set by every committed batch), not the broker's end of the log, so from
-- Postgres alone lag can only be "time since the last commit". It grows on a partition
-- that is idle as well as on one that is stuck; the lag in messages is the host's
-- weir_consumer_lag metric on /metrics, which asks the broker.
CREATE VIEW pipeline_health AS
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
  FROM weir_offsets o;
