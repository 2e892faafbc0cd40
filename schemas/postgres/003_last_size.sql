-- The tick schemas gained `last_size` (the size of the last trade, nullable): the raw
-- tables the passthrough guest fills get the column too.
ALTER TABLE tickers_stocks ADD COLUMN IF NOT EXISTS last_size double precision;
ALTER TABLE tickers_crypto ADD COLUMN IF NOT EXISTS last_size double precision;
ALTER TABLE tickers_currency ADD COLUMN IF NOT EXISTS last_size double precision;
