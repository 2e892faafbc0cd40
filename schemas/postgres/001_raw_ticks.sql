-- Raw ticks as the passthrough guest writes them: one row per message, one column per
-- Avro field of the topic's value schema (tickers.<class> -> tickers_<class>).
CREATE TABLE IF NOT EXISTS tickers_stocks (
    id               text             NOT NULL,
    exchange         text,
    quote_type       text             NOT NULL,
    market_hours     text             NOT NULL,
    currency         text,
    price            double precision NOT NULL,
    change           double precision,
    change_percent   double precision,
    day_volume       bigint,
    bid              double precision,
    ask              double precision,
    price_hint       integer,
    event_time       timestamptz      NOT NULL,
    event_id         uuid             NOT NULL,
    ingestion_time   timestamptz      NOT NULL,
    source           text             NOT NULL
);

CREATE TABLE IF NOT EXISTS tickers_crypto (
    id                  text             NOT NULL,
    exchange            text,
    quote_type          text             NOT NULL,
    market_hours        text             NOT NULL,
    currency            text,
    price               double precision NOT NULL,
    change              double precision,
    change_percent      double precision,
    day_volume          bigint,
    bid                 double precision NOT NULL,
    ask                 double precision NOT NULL,
    circulating_supply  double precision,
    price_hint          integer,
    event_time          timestamptz      NOT NULL,
    event_id            uuid             NOT NULL,
    ingestion_time      timestamptz      NOT NULL,
    source              text             NOT NULL
);

CREATE TABLE IF NOT EXISTS tickers_currency (
    id               text             NOT NULL,
    exchange         text,
    quote_type       text             NOT NULL,
    market_hours     text             NOT NULL,
    currency         text,
    price            double precision NOT NULL,
    change           double precision,
    change_percent   double precision,
    day_volume       bigint,
    bid              double precision NOT NULL,
    ask              double precision NOT NULL,
    price_hint       integer,
    event_time       timestamptz      NOT NULL,
    event_id         uuid             NOT NULL,
    ingestion_time   timestamptz      NOT NULL,
    source           text             NOT NULL
);

CREATE INDEX IF NOT EXISTS tickers_stocks_id_time ON tickers_stocks (id, event_time);
CREATE INDEX IF NOT EXISTS tickers_crypto_id_time ON tickers_crypto (id, event_time);
CREATE INDEX IF NOT EXISTS tickers_currency_id_time ON tickers_currency (id, event_time);
