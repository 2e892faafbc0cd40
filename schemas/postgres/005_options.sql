-- Listed option trades as the `options` guest writes them (guests/options), the risk-free
-- rates it prices with, and the views of the chain and the volatility smile.
--
-- Run once, in one transaction of its own, after 002_market.sql (whose ticks_stocks the
-- options pipeline reads through its `underlying` lookup); the conventions are 002's:
-- timestamptz instants, double precision for the feed's doubles, uuid event ids as
-- primary keys. So: no BEGIN/COMMIT here, no CREATE INDEX CONCURRENTLY.

-- Risk-free rates, one per day from which it holds: a trade takes the rate of the latest
-- day at or before its own (UTC) day, the guest's `rate` lookup:
--
--     SELECT rate FROM rates WHERE day <= $1 ORDER BY day DESC LIMIT 1
--
-- rate is continuously compounded and annualised, a fraction (0.045 is 4.5 %). The row
-- loaded below, from 1900-01-01, is the default every trade finds when nothing newer is
-- loaded: 0.045, the rate `weir ingest simulate --options` prices with, so implied
-- volatilities computed from simulated prices are the simulator's. Refresh with plain SQL
-- (the next batches' lookups see it; trades already written keep the rate they had):
--
--     INSERT INTO rates (day, rate, source) VALUES ('2026-12-03', 0.0437, 'treasury 3m')
--     ON CONFLICT (day) DO UPDATE SET rate = EXCLUDED.rate, source = EXCLUDED.source;
CREATE TABLE rates (
    day    date             PRIMARY KEY,
    rate   double precision NOT NULL CHECK (rate > -1 AND rate < 1),
    source text
);
INSERT INTO rates (day, rate, source)
VALUES ('1900-01-01', 0.045, 'default (005_options.sql): the simulator''s risk-free rate');

-- Option trades: one row per accepted message of tickers.options (guest `options`, config
-- `table`). The guest writes every column but two: guest_version (filled by the host with
-- `version_column: guest_version`) and written_at (the batch's transaction time).
--
-- Each trade is paired with the underlying's latest tick in ticks_stocks at or before its
-- event_time (ties to the later kafka_offset), as committed when the trade's batch ran (a
-- processing-time temporal join: a tick committed later does not re-pair the trade):
-- - underlying_price, underlying_event_id, underlying_event_time: that tick;
-- - underlying_age_ms: event_time - underlying_event_time in whole milliseconds (the
--   feed's times are milliseconds), >= 0 and at most the guest's max_underlying_age. A
--   bigint rather than an interval: it compares, sums and plots as a number, and
--   `make_interval(secs => underlying_age_ms / 1000.0)` gives the interval;
-- - rate: the `rates` row the trade found;
-- - moneyness: underlying_price / strike (S/K; above 1 a call is in the money);
-- - time_to_expiry: years of 365.25 days from event_time to the expiry's close, 16:00 New
--   York, taken as 20:00 UTC all year (16:00 EDT; daylight saving is ignored, as the
--   simulator ignores it); > 0, a trade at or after the close is dead-lettered;
-- - implied_volatility, iv_source: the feed's value ('feed'); else Black-Scholes
--   (European, no dividends) inverted at underlying_price, rate and time_to_expiry
--   ('computed'); else null ('none'): the price has no Black-Scholes volatility up to the
--   guest's max_volatility (at or below the model's lower bound, max(S - K e^(-rT), 0) for
--   a call, max(K e^(-rT) - S, 0) for a put, as an American contract near its intrinsic
--   value can be; or at or above its upper bound, S for a call, K e^(-rT) for a put);
-- - delta: Black-Scholes's at implied_volatility (null when it is).
CREATE TABLE option_trades (
    event_id              uuid             PRIMARY KEY,
    contract              text             NOT NULL,   -- OCC symbol, as the feed sent it
    underlying            text             NOT NULL,
    expiry                date             NOT NULL,
    strike                double precision NOT NULL,
    option_type           text             NOT NULL CHECK (option_type IN ('CALL', 'PUT')),
    style                 text             NOT NULL,   -- AMERICAN, EUROPEAN or UNKNOWN
    exchange              text,
    currency              text,
    event_time            timestamptz      NOT NULL,
    ingestion_time        timestamptz      NOT NULL,
    price                 double precision NOT NULL,
    bid                   double precision,
    ask                   double precision,
    last_size             double precision,           -- contracts in the trade
    volume                bigint,                     -- contracts so far in the session
    open_interest         bigint,
    underlying_price      double precision NOT NULL,
    underlying_event_id   uuid             NOT NULL,
    underlying_event_time timestamptz      NOT NULL,
    underlying_age_ms     bigint           NOT NULL CHECK (underlying_age_ms >= 0),
    rate                  double precision NOT NULL,
    moneyness             double precision NOT NULL,
    time_to_expiry        double precision NOT NULL CHECK (time_to_expiry > 0),
    implied_volatility    double precision,
    iv_source             text             NOT NULL CHECK (iv_source IN ('feed', 'computed', 'none')),
    delta                 double precision,
    source                text,
    kafka_partition       integer          NOT NULL,
    kafka_offset          bigint           NOT NULL,
    guest_version         text,
    written_at            timestamptz      NOT NULL DEFAULT now(),
    CHECK ((implied_volatility IS NULL) = (iv_source = 'none'))
);

-- The latest trade of a contract is the first entry of its range (option_chain); a
-- contract is (underlying, expiry, strike, option_type), which its OCC symbol must agree
-- with (rule contract_matches), whichever of OSI's padded or compact forms the feed used.
-- kafka_partition and kafka_offset break ties of equal event times: the later message.
CREATE INDEX option_trades_contract_latest
    ON option_trades (underlying, expiry, strike, option_type,
                      event_time DESC, kafka_partition DESC, kafka_offset DESC);
CREATE INDEX option_trades_event_time ON option_trades (event_time);
CREATE INDEX option_trades_written_at ON option_trades USING brin (written_at);

-- The chain: the latest trade of each contract (by event time, not arrival), listed per
-- underlying and expiry.
CREATE VIEW option_chain AS
SELECT DISTINCT ON (underlying, expiry, strike, option_type)
       underlying, expiry, strike, option_type, contract, style, price, bid, ask,
       last_size, volume, open_interest, implied_volatility, iv_source, delta,
       underlying_price, moneyness, time_to_expiry, rate, event_time, event_id
  FROM option_trades
 ORDER BY underlying, expiry, strike, option_type,
          event_time DESC, kafka_partition DESC, kafka_offset DESC;

-- The smile: per underlying, expiry and strike, the latest implied volatility of the call
-- and of the put (null when that side has not traded, or its latest trade had none), and
-- the moneyness S/K at the later of the two trades.
CREATE VIEW option_smile AS
SELECT underlying, expiry, strike,
       (array_agg(moneyness ORDER BY event_time DESC))[1] AS moneyness,
       max(implied_volatility) FILTER (WHERE option_type = 'CALL') AS call_iv,
       max(implied_volatility) FILTER (WHERE option_type = 'PUT') AS put_iv,
       max(event_time) FILTER (WHERE option_type = 'CALL') AS call_event_time,
       max(event_time) FILTER (WHERE option_type = 'PUT') AS put_event_time
  FROM option_chain
 GROUP BY underlying, expiry, strike;
