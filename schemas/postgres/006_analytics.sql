-- Market analytics the tickers guest writes when its pipeline configures them: imputed
-- values in the tick tables, sliding windows per symbol with their watermarks, and the
-- views ranking symbols on their latest closed windows. Types as in 002_market.sql.

-- Imputation (`impute:` in the guest's config): the fields whose missing value was
-- filled in, comma separated in column order (`bid,ask`); null when none was. Only
-- pipelines that impute write it.
ALTER TABLE ticks_stocks ADD COLUMN imputed text;
ALTER TABLE ticks_crypto ADD COLUMN imputed text;
ALTER TABLE ticks_currency ADD COLUMN imputed text;

-- Sliding windows (`windows:`): one row per (symbol, resolution, window_start), merged by
-- the host with the guest's policies, like candles: first first-by-time(first_event_at),
-- last last-by-time(last_event_at), high max, low min, volume, notional, trades and
-- revisions sum. A window holds the ticks with window_start <= event_time < window_end;
-- window starts are multiples of the pipeline's hop. volume sums last_size (0 for ticks
-- without one), notional sums price * last_size, so vwap is null for a window without
-- volume (spot FX). closes_at is window_end plus the pipeline's close offset: the window
-- is closed once its symbol's watermark reaches it. revisions counts the ticks that
-- arrived after that, each of which revised the window.
CREATE TABLE windows (
    symbol         text             NOT NULL,
    asset_class    text             NOT NULL CHECK (asset_class IN ('stocks', 'crypto', 'currency')),
    resolution     text             NOT NULL,
    window_start   timestamptz      NOT NULL,
    window_end     timestamptz      NOT NULL,
    closes_at      timestamptz      NOT NULL,
    first          double precision NOT NULL,
    last           double precision NOT NULL,
    high           double precision NOT NULL,
    low            double precision NOT NULL,
    volume         double precision NOT NULL,
    notional       double precision NOT NULL,
    vwap           double precision GENERATED ALWAYS AS (notional / NULLIF(volume, 0)) STORED,
    trades         bigint           NOT NULL,
    first_event_at timestamptz      NOT NULL,
    last_event_at  timestamptz      NOT NULL,
    revisions      bigint           NOT NULL,
    guest_version  text,
    PRIMARY KEY (symbol, resolution, window_start)
);

-- Each symbol's watermark: the latest event time of its accepted ticks (merged by max).
CREATE TABLE window_watermarks (
    symbol        text        PRIMARY KEY,
    asset_class   text        NOT NULL,
    watermark     timestamptz NOT NULL,
    guest_version text
);

-- The windows closed by their symbol's watermark: final unless a late tick revises them.
CREATE VIEW windows_closed AS
    SELECT w.*
      FROM windows w
      JOIN window_watermarks m USING (symbol)
     WHERE m.watermark >= w.closes_at;

-- Per resolution, each symbol's latest closed window, its percentage gain (last against
-- first) and its rank among the symbols: gain_rank 1 is the top gainer, loss_rank 1 the
-- top loser (ties broken by symbol). "Top 5 gainers in 5m":
--   SELECT * FROM window_movers WHERE resolution = '5m' AND gain_rank <= 5 ORDER BY gain_rank;
CREATE VIEW window_movers AS
    WITH latest AS (
        SELECT DISTINCT ON (resolution, symbol)
               resolution, symbol, asset_class, window_start, window_end, first, last,
               high, low, volume, vwap, trades, revisions,
               (last - first) / first * 100 AS pct_gain
          FROM windows_closed
         ORDER BY resolution, symbol, window_start DESC
    )
    SELECT *,
           rank() OVER (PARTITION BY resolution ORDER BY pct_gain DESC, symbol) AS gain_rank,
           rank() OVER (PARTITION BY resolution ORDER BY pct_gain ASC, symbol) AS loss_rank
      FROM latest;
