#!/usr/bin/env bash
# The weir demo: the whole pipeline on this machine.
#
#   tansu broker + weir registry  ->  weir ingest simulate  ->  Kafka topics tickers.*
#   ->  weir run (the market pipeline, tests/demo/weir.yaml: the tickers guest per
#       asset-class topic, the options guest for tickers.options)
#   ->  Postgres: ticks_stocks/crypto/currency (missing values imputed and flagged),
#       candles (1, 5, 15 minutes), sliding windows, option_trades, and the views
#       latest_prices, candles_1m/5m/15m, top_movers, window_movers, option_chain,
#       option_smile, pipeline_health
#
# The ticks start with twenty minutes of history (simulated event times, produced at
# once), so that windows have closed and rank; then DEMO_DURATION of live ticks and option
# trades on the wall clock.
#
# Postgres: $DATABASE_URL if set, else the local server on 127.0.0.1:5432, else a
# throwaway cluster made with initdb/pg_ctl. Ctrl-C stops everything this started.
# DEMO_DURATION (default 30s) is how long ticks are produced; DEMO_RATE (default 200) how
# many a second.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
duration=${DEMO_DURATION:-30s}
rate=${DEMO_RATE:-200}
work=$(mktemp -d "${TMPDIR:-/tmp}/weir-demo.XXXXXX")
chmod 755 "$work"
pids=()
pg_data=""
keep_pg=""

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_data" ] && [ -z "$keep_pg" ]; then
    say "Stopping the throwaway Postgres cluster"
    as_postgres pg_ctl -D "$pg_data" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'say "Interrupted"; exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing is listening on port $1 ($2); the end of its log:" >&2
  tail -20 "$work/$2.log" >&2 || true
  exit 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

say "Building weir and the guests"
make -s guests >/dev/null
cargo build --release -q -p weir
weir="$root/target/release/weir"
export WEIR_LOG=${WEIR_LOG:-warn}

if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  say "Installing the tansu broker (once; a few minutes)"
  cargo install tansu@0.6.0 --locked --features dynostore
fi
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")

# Postgres.
if [ -n "${DATABASE_URL:-}" ]; then
  say "Using DATABASE_URL"
  admin_url=$DATABASE_URL
  db_url=$DATABASE_URL
elif pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  say "Using the local Postgres on 127.0.0.1:5432 (database weir_demo)"
  admin_url="postgresql://postgres@127.0.0.1:5432/postgres"
  psql -q "$admin_url" -tc "SELECT 1 FROM pg_database WHERE datname = 'weir_demo'" | grep -q 1 \
    || psql -q "$admin_url" -c "CREATE DATABASE weir_demo"
  db_url="postgresql://postgres@127.0.0.1:5432/weir_demo"
elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
  port=$(free_port)
  # Outside $work, so the rows outlive the demo when it ends normally.
  pg_data=$(mktemp -d "${TMPDIR:-/tmp}/weir-demo-pg.XXXXXX")
  say "Starting a throwaway Postgres cluster on port $port ($pg_data)"
  chmod 755 "$pg_data"
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_data"; fi
  as_postgres initdb -D "$pg_data" -U postgres --auth=trust >"$work/initdb.log" 2>&1
  as_postgres pg_ctl -D "$pg_data" -o "-p $port -k $pg_data -c listen_addresses=127.0.0.1" \
    -l "$pg_data/server.log" -w start >/dev/null
  db_url="postgresql://postgres@127.0.0.1:$port/postgres"
  admin_url=$db_url
else
  cat >&2 <<'EOF'
No Postgres found. Either
  - set DATABASE_URL=postgresql://user@host:port/db, or
  - start a local server on 127.0.0.1:5432 (Debian: apt-get install postgresql), or
  - install initdb/pg_ctl (Debian: apt-get install postgresql) so the demo can make one.
EOF
  exit 1
fi

kafka_port=$(free_port)
registry_port=$(free_port)
http_port=$(free_port)
export KAFKA_BROKERS="127.0.0.1:$kafka_port"
export SCHEMA_REGISTRY_URL="http://127.0.0.1:$registry_port"
export DATABASE_URL=$db_url
export WEIR_HTTP="127.0.0.1:$http_port"
# A group of its own each run: the broker is new each run, so offsets a previous run
# stored in Postgres would point past its messages.
export WEIR_GROUP="weir-demo-$(date +%s)"

say "Starting the tansu broker on $KAFKA_BROKERS"
RUST_LOG=warn "$tansu" broker --storage-engine memory://tansu/ \
  --listener-url "tcp://$KAFKA_BROKERS" --advertised-listener-url "tcp://$KAFKA_BROKERS" \
  >"$work/tansu.log" 2>&1 &
pids+=($!)
wait_port "$kafka_port" tansu

say "Starting weir registry on $SCHEMA_REGISTRY_URL"
"$weir" registry serve --listen "127.0.0.1:$registry_port" --database-url "$db_url" \
  >"$work/registry.log" 2>&1 &
pids+=($!)
wait_port "$registry_port" registry

say "Pushing the schemas"
"$weir" schemas push --registry "$SCHEMA_REGISTRY_URL" schemas/

say "Creating the topics and starting weir run (metrics on http://$WEIR_HTTP/metrics)"
"$weir" ingest simulate --count 0 --rate max --options >/dev/null 2>&1 || true
WEIR_LOG=info "$weir" run --config tests/demo/weir.yaml >"$work/run.log" 2>&1 &
run_pid=$!
pids+=($run_pid)
wait_port "$http_port" run

# weir run applies the migrations before it consumes: wait for their last table.
say "Waiting for weir run to apply the migrations"
for _ in $(seq 120); do
  [ "$(psql -qtA "$db_url" -c "SELECT to_regclass('window_watermarks') IS NOT NULL AND to_regclass('option_trades') IS NOT NULL")" = t ] && break
  kill -0 "$run_pid" 2>/dev/null || { echo "weir run stopped; its log:" >&2; tail -20 "$work/run.log" >&2; exit 1; }
  sleep 0.5
done

count_rows() {
  psql -qtA "$db_url" -c "SELECT (SELECT count(*) FROM ticks_stocks) + (SELECT count(*) FROM ticks_crypto) + (SELECT count(*) FROM ticks_currency) + (SELECT count(*) FROM option_trades) + (SELECT count(*) FROM dead_letters)"
}
wait_written() {
  say "Waiting for weir run to write everything"
  last=-1
  for _ in $(seq 60); do
    rows=$(count_rows)
    if [ "$rows" = "$last" ]; then break; fi
    last=$rows
    sleep 1
  done
}

say "Producing twenty minutes of history: ticks 100 ms apart in event time, at once"
"$weir" ingest simulate --rate max --count 12000 --tick-interval 100ms \
  --start-time "$(date -u -d '-20 minutes' +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
wait_written

say "Producing ticks and option trades for $duration at $rate/s (a few late by up to 2 minutes, a few sent twice)"
"$weir" ingest simulate --rate "$rate" --duration "$duration" --options \
  --late-fraction 0.02 --late-by 2m --duplicate-fraction 0.01 &
sim_pid=$!
pids+=($sim_pid)
wait "$sim_pid"
wait_written
kill -0 "$run_pid" 2>/dev/null || { echo "weir run stopped; its log:" >&2; tail -20 "$work/run.log" >&2; exit 1; }
if [ "$last" = 0 ]; then
  echo "no rows were written; the end of weir run's log:" >&2
  tail -20 "$work/run.log" >&2
  exit 1
fi

say "Rows per table"
psql "$db_url" -c "
  SELECT 'ticks_stocks' AS \"table\", count(*) AS rows, max(event_time) AS latest FROM ticks_stocks
  UNION ALL SELECT 'ticks_crypto', count(*), max(event_time) FROM ticks_crypto
  UNION ALL SELECT 'ticks_currency', count(*), max(event_time) FROM ticks_currency
  UNION ALL SELECT 'candles', count(*), max(last_event_at) FROM candles
  UNION ALL SELECT 'windows', count(*), max(last_event_at) FROM windows
  UNION ALL SELECT 'option_trades', count(*), max(event_time) FROM option_trades
  UNION ALL SELECT 'dead_letters', count(*), max(created_at) FROM dead_letters"

say "tickers.stocks.clean: accepted ticks, normalised, as the pipeline emitted them (weir tail)"
timeout 30 "$weir" tail tickers.stocks.clean --from-beginning -n 3 || {
  echo "no clean ticks could be read; the end of weir run's log:" >&2
  tail -20 "$work/run.log" >&2
  exit 1
}

say "top_movers: the biggest moves over the last 1, 5 and 15 minutes"
psql "$db_url" -c "
  SELECT time_window, rank, symbol, asset_class, first_price, last_price,
         round(change_percent::numeric, 3) AS change_percent, ticks
    FROM top_movers WHERE rank <= 3 ORDER BY time_window, rank, symbol"

say "window_movers: top gainers and losers on each symbol's latest closed sliding window"
psql "$db_url" -c "
  SELECT resolution, gain_rank, loss_rank, symbol, window_start, window_end, first, last,
         round(pct_gain::numeric, 3) AS pct_gain, round(vwap::numeric, 4) AS vwap, trades, revisions
    FROM window_movers WHERE gain_rank <= 2 OR loss_rank <= 2
   ORDER BY resolution, gain_rank"

say "Imputed values: missing stock quotes forward-filled, missing crypto sizes a trailing mean"
psql "$db_url" -c "
  SELECT 'ticks_stocks' AS \"table\", imputed, count(*) FROM ticks_stocks WHERE imputed IS NOT NULL GROUP BY imputed
  UNION ALL SELECT 'ticks_crypto', imputed, count(*) FROM ticks_crypto WHERE imputed IS NOT NULL GROUP BY imputed"

say "option_chain: the latest trade per contract, nearest expiry of AAPL, strikes around the money"
psql "$db_url" -c "
  SELECT expiry, strike, option_type, price, bid, ask, round(implied_volatility::numeric, 4) AS iv,
         round(delta::numeric, 3) AS delta, underlying_price, event_time
    FROM option_chain
   WHERE underlying = 'AAPL' AND expiry = (SELECT min(expiry) FROM option_chain WHERE underlying = 'AAPL')
   ORDER BY abs(strike - underlying_price), option_type LIMIT 8"

say "option_smile: implied volatility by strike, AAPL's nearest expiry"
psql "$db_url" -c "
  SELECT strike, round(moneyness::numeric, 3) AS moneyness, round(call_iv::numeric, 4) AS call_iv,
         round(put_iv::numeric, 4) AS put_iv
    FROM option_smile
   WHERE underlying = 'AAPL' AND expiry = (SELECT min(expiry) FROM option_smile WHERE underlying = 'AAPL')
   ORDER BY strike LIMIT 12"

say "candles_1m: the latest one-minute candles"
psql "$db_url" -c "
  SELECT symbol, bucket_start, open, high, low, close, volume, trades
    FROM candles_1m ORDER BY bucket_start DESC, symbol LIMIT 8"

cat <<EOF

Look at the data with:
  psql "$db_url"
The pipeline, broker and registry stop now; Postgres keeps the rows.
EOF
if [ -n "$pg_data" ]; then
  keep_pg=1
  stop="pg_ctl -D $pg_data stop && rm -rf $pg_data"
  if [ "$(id -u)" = 0 ]; then stop="runuser -u postgres -- $stop"; fi
  echo "The throwaway Postgres cluster keeps running for that; stop and remove it with:"
  echo "  $stop"
fi
