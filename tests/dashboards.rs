//! The "weir markets" Grafana dashboard (charts/monitoring/files/weir-markets.json): its
//! JSON is one Grafana loads (panel types it ships, places on the grid, the provisioned
//! PostgreSQL data source, raw SQL, variables defined before use), its macros and
//! variables expand as Grafana's PostgreSQL data source expands them, and every panel's
//! query returns rows on a migrated database holding a few rows of each table it reads,
//! while a broken or empty query is reported with its panel's title.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value as Json;
use weir_tests::grafana::{
    TimeRange, Variable, check_dashboard_over, check_markets_dashboard, dashboard_problems,
    expand_macros, interpolate, markets_dashboard,
};
use weir_tests::{TestDb, repo_root, rt, run_sql};

fn dashboard() -> Json {
    serde_json::from_str(&std::fs::read_to_string(markets_dashboard()).unwrap()).unwrap()
}

fn panel_mut<'a>(json: &'a mut Json, title: &str) -> &'a mut Json {
    json["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))
}

#[test]
fn the_markets_dashboard_is_one_grafana_loads() {
    let json = dashboard();
    assert_eq!(json["uid"], "weir-markets");
    assert_eq!(json["title"], "weir markets");
    let problems = dashboard_problems(&json);
    assert!(problems.is_empty(), "{problems:#?}");

    // What the issue asks for is there: candles per symbol and interval, movers, the
    // option chain and smile, freshness.
    let types: Vec<(&str, &str)> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["type"].as_str().unwrap(), p["title"].as_str().unwrap()))
        .collect();
    for (kind, title) in [
        ("candlestick", "$symbol $interval candles"),
        ("table", "Top 5 gainers per resolution"),
        ("table", "Top 5 losers per resolution"),
        ("table", "Option chain"),
        ("xychart", "Implied volatility smile"),
        ("table", "Data freshness per topic"),
    ] {
        assert!(
            types.contains(&(kind, title)),
            "no {kind} {title:?}: {types:?}"
        );
    }
    let vars: Vec<&str> = json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["interval", "symbol", "underlying", "expiry"]);

    // And what Grafana would not take is found, by panel or variable.
    let mut broken = json.clone();
    panel_mut(&mut broken, "Option chain")["type"] = "option-chain-plugin".into();
    panel_mut(&mut broken, "Latest prices")["gridPos"]["x"] = 20.into();
    panel_mut(&mut broken, "Consumer lag")["datasource"]["uid"] = "prometheus".into();
    panel_mut(&mut broken, "Dead letters, last hour")["targets"][0]["rawSql"] =
        "SELECT 1 WHERE '$nosuch' = '' AND $__timeFilterX(at)".into();
    broken["templating"]["list"][0]["name"] = "resolution".into();
    let problems = dashboard_problems(&broken);
    for expected in [
        "panel \"Option chain\": type \"option-chain-plugin\"",
        "panel \"Latest prices\": gridPos",
        "panel \"Consumer lag\": data source",
        "panel \"Dead letters, last hour\" target \"A\": uses $nosuch",
        "panel \"Dead letters, last hour\" target \"A\": unknown macro $__timeFilterX",
        "variable $symbol: its query uses $interval",
        "panel \"$symbol $interval candles\": its title uses $interval",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected:?} not reported: {problems:#?}"
        );
    }
}

#[test]
fn macros_and_variables_expand_as_grafanas_postgres_data_source_expands_them() {
    let to = humantime::parse_rfc3339("2026-12-03T12:00:00Z").unwrap();
    let range = TimeRange {
        from: to - Duration::from_secs(6 * 3600),
        to,
    };
    assert_eq!(
        expand_macros(
            "SELECT $__time(bucket_start), x FROM t WHERE $__timeFilter(bucket_start) AND a > $__timeFrom() AND b < $__timeTo()",
            &range
        )
        .unwrap(),
        "SELECT bucket_start AS \"time\", x FROM t WHERE bucket_start BETWEEN \
         '2026-12-03T06:00:00.000Z' AND '2026-12-03T12:00:00.000Z' AND \
         a > '2026-12-03T06:00:00.000Z' AND b < '2026-12-03T12:00:00.000Z'"
    );
    assert_eq!(
        expand_macros(
            "$__timeGroupAlias(event_time, '5m'), $__unixEpochFilter(ts)",
            &range
        )
        .unwrap(),
        "floor(extract(epoch from event_time)/300)*300 AS \"time\", \
         ts >= 1796277600 AND ts <= 1796299200"
    );
    assert!(expand_macros("$__timeFilter()", &range).is_err());
    assert!(expand_macros("$__interval", &range).is_err());

    // Multi-value variables are quoted, single ones go in as they are (quotes doubled).
    let vars = [
        Variable {
            name: "symbol".into(),
            value: "O'NEIL".into(),
            quoted: true,
        },
        Variable {
            name: "interval".into(),
            value: "5m".into(),
            quoted: false,
        },
    ];
    assert_eq!(
        interpolate(
            "symbol IN ($symbol) AND interval = '$interval' AND x = '${interval}' AND y = [[interval]] AND $symbols AND $__timeFilter(t)",
            &vars
        ),
        "symbol IN ('O''NEIL') AND interval = '5m' AND x = '5m' AND y = 5m AND $symbols AND $__timeFilter(t)"
    );

    // The default range is the dashboard's `time`, from the wall clock.
    let json = dashboard();
    let now = SystemTime::now();
    let range = TimeRange::of_dashboard(&json, now).unwrap();
    assert_eq!(range.to, now);
    assert_eq!(
        now.duration_since(range.from).unwrap(),
        Duration::from_secs(6 * 3600)
    );
}

/// Whether `relation` (table or view) exists in the test schema.
fn exists(url: &str, relation: &str) -> bool {
    query_one(
        url,
        &format!("SELECT to_regclass('{relation}') IS NOT NULL"),
    )
    .first()
    .is_some_and(|v| v == "t")
}

/// The text values of the first column of a query.
fn query_one(url: &str, sql: &str) -> Vec<String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        rt().block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect()
        })
    })
    .join()
    .unwrap()
}

/// Inserts `rows` into `table`, each a list of (column, SQL expression); the table's
/// other NOT NULL columns without a default get a value of their type, so the rows fit
/// the migration's table whatever else it has.
fn insert(url: &str, table: &str, rows: &[Vec<(&str, String)>]) {
    let columns = query_one(
        url,
        &format!(
            "SELECT column_name || '|' || data_type || '|' || udt_name
               FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = '{table}'
                AND is_nullable = 'NO' AND column_default IS NULL AND is_generated = 'NEVER'
                AND is_identity = 'NO'"
        ),
    );
    assert!(exists(url, table), "no table {table} after the migrations");
    let all = query_one(
        url,
        &format!(
            "SELECT column_name FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = '{table}'"
        ),
    );
    let mut sql = String::new();
    for (n, row) in rows.iter().enumerate() {
        // Columns the migration's table does not have (a bid it does not keep) are left out.
        let row: Vec<&(&str, String)> = row
            .iter()
            .filter(|(c, _)| all.iter().any(|a| a == c))
            .collect();
        let mut names: Vec<String> = row.iter().map(|(c, _)| c.to_string()).collect();
        let mut values: Vec<String> = row.iter().map(|(_, v)| v.clone()).collect();
        for column in &columns {
            let mut parts = column.split('|');
            let (name, kind, udt) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            if names.iter().any(|c| c == name) {
                continue;
            }
            let value = match kind {
                "text" | "character varying" => format!("'{name}'"),
                "uuid" => "gen_random_uuid()".into(),
                "integer" | "bigint" | "smallint" => n.to_string(),
                "double precision" | "real" | "numeric" => "1".into(),
                "timestamp with time zone" | "timestamp without time zone" => "now()".into(),
                "date" => "current_date".into(),
                "boolean" => "false".into(),
                // An enum: its first label.
                "USER-DEFINED" => format!("(enum_range(NULL::{udt}))[1]"),
                other => panic!("{table}.{name}: no test value for type {other}"),
            };
            names.push(name.to_string());
            values.push(value);
        }
        sql.push_str(&format!(
            "INSERT INTO {table} ({}) VALUES ({});\n",
            names.join(", "),
            values.join(", ")
        ));
    }
    run_sql(url, &sql);
}

fn s(v: &str) -> String {
    format!("'{v}'")
}

/// A migrated database with a few rows in every table the dashboard reads: ticks of the
/// three classes, candles of each interval, closed windows of each resolution and a
/// call and a put at three strikes of one expiry, all in the last half hour.
fn market_db() -> TestDb {
    let db = TestDb::new();
    let url = db.url();
    rt().block_on(weir::sink::migrate(
        &url,
        &repo_root().join("schemas/postgres"),
    ))
    .expect("migrations apply");

    let mut offset = 0;
    for (table, symbol, price) in [
        ("ticks_stocks", "AAPL", 190.0),
        ("ticks_stocks", "MSFT", 410.0),
        ("ticks_crypto", "BTC-USD", 97_000.0),
        ("ticks_currency", "EURUSD=X", 1.05),
    ] {
        let rows: Vec<Vec<(&str, String)>> = (0..3)
            .map(|i| {
                offset += 1;
                vec![
                    ("symbol", s(symbol)),
                    (
                        "event_time",
                        format!("now() - interval '{} minutes'", 10 - i),
                    ),
                    ("ingestion_time", "now()".into()),
                    ("price", format!("{}", price * (1.0 + 0.001 * f64::from(i)))),
                    ("bid", format!("{}", price * 0.999)),
                    ("ask", format!("{}", price * 1.001)),
                    ("kafka_partition", "0".into()),
                    ("kafka_offset", offset.to_string()),
                ]
            })
            .collect();
        insert(&url, table, &rows);
    }

    let mut candles = Vec::new();
    for (symbol, class) in [("AAPL", "stocks"), ("BTC-USD", "crypto")] {
        for (interval, minutes) in [("1m", 1), ("5m", 5), ("15m", 15)] {
            for bucket in 1..=2 {
                let start = format!(
                    "to_timestamp(floor(extract(epoch from now()) / {secs}) * {secs} - {back})",
                    secs = minutes * 60,
                    back = bucket * minutes * 60
                );
                candles.push(vec![
                    ("symbol", s(symbol)),
                    ("asset_class", s(class)),
                    ("interval", s(interval)),
                    ("bucket_start", start.clone()),
                    ("open", "100".into()),
                    ("high", "104".into()),
                    ("low", "99".into()),
                    ("close", "103".into()),
                    ("volume", "1200".into()),
                    ("trades", "12".into()),
                    ("first_event_at", start.clone()),
                    ("last_event_at", format!("{start} + interval '30 seconds'")),
                ]);
            }
        }
    }
    insert(&url, "candles", &candles);

    let mut windows = Vec::new();
    let mut watermarks = Vec::new();
    for (i, (symbol, class)) in [
        ("AAPL", "stocks"),
        ("MSFT", "stocks"),
        ("BTC-USD", "crypto"),
        ("EURUSD=X", "currency"),
    ]
    .into_iter()
    .enumerate()
    {
        watermarks.push(vec![
            ("symbol", s(symbol)),
            ("asset_class", s(class)),
            ("watermark", "now()".into()),
        ]);
        for (resolution, minutes) in [("1m", 1), ("5m", 5), ("15m", 15)] {
            let start = format!("now() - interval '{} minutes'", minutes + 2);
            let end = "now() - interval '2 minutes'".to_string();
            let last = 100.0 + 2.0 * (i as f64) - 3.0;
            windows.push(vec![
                ("symbol", s(symbol)),
                ("asset_class", s(class)),
                ("resolution", s(resolution)),
                ("window_start", start.clone()),
                ("window_end", end.clone()),
                ("closes_at", end),
                ("first", "100".into()),
                ("last", last.to_string()),
                ("high", "106".into()),
                ("low", "96".into()),
                ("volume", "10".into()),
                ("notional", (10.0 * last).to_string()),
                ("trades", "5".into()),
                ("first_event_at", start.clone()),
                ("last_event_at", format!("{start} + interval '30 seconds'")),
                ("revisions", "0".into()),
            ]);
        }
    }
    if exists(&url, "windows") {
        insert(&url, "windows", &windows);
        insert(&url, "window_watermarks", &watermarks);
    }

    let mut trades = Vec::new();
    for (n, strike) in [180, 190, 200].into_iter().enumerate() {
        for (kind, letter) in [("CALL", "C"), ("PUT", "P")] {
            let iv = 0.2 + 0.02 * (n as f64 - 1.0).abs();
            trades.push(vec![
                (
                    "contract",
                    s(&format!("AAPL{}{letter}{:08}", "270115", strike * 1000)),
                ),
                ("style", s("AMERICAN")),
                ("iv_source", s("computed")),
                ("underlying_price", "190".into()),
                ("moneyness", (190.0 / f64::from(strike)).to_string()),
                ("time_to_expiry", "0.08".into()),
                ("delta", if kind == "CALL" { "0.5" } else { "-0.5" }.into()),
                ("underlying", s("AAPL")),
                ("expiry", "current_date + 30".into()),
                ("strike", strike.to_string()),
                ("option_type", s(kind)),
                ("price", "5.5".into()),
                ("bid", "5.4".into()),
                ("ask", "5.6".into()),
                ("implied_volatility", iv.to_string()),
                ("event_time", "now() - interval '3 minutes'".into()),
            ]);
        }
    }
    insert(&url, "option_trades", &trades);
    db
}

/// The dashboard with one panel's SQL replaced, in a file of its own.
fn with_sql(dir: &Path, title: &str, sql: &str) -> std::path::PathBuf {
    let mut json = dashboard();
    panel_mut(&mut json, title)["targets"][0]["rawSql"] = sql.into();
    let path = dir.join(format!("{}.json", title.replace(' ', "-")));
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

#[test]
fn every_panel_has_rows_on_market_data_and_a_broken_or_empty_query_is_named_by_its_panel() {
    let db = market_db();
    let url = db.url();
    let problems = check_markets_dashboard(&url, &markets_dashboard());
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));

    let dir = tempfile::tempdir().unwrap();
    let broken = with_sql(
        dir.path(),
        "Option chain",
        "SELECT strike, no_such_column FROM option_chain WHERE underlying = '$underlying'",
    );
    let problems = check_markets_dashboard(&url, &broken);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("panel \"Option chain\" (A): 42703")
            && problems[0].contains("no_such_column")
            && problems[0].contains("underlying = 'AAPL'"),
        "{problems:#?}"
    );

    let empty = with_sql(
        dir.path(),
        "Latest prices",
        "SELECT symbol FROM latest_prices WHERE symbol = 'NOPE'",
    );
    let problems = check_markets_dashboard(&url, &empty);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("panel \"Latest prices\" (A): no rows"),
        "{problems:#?}"
    );

    // Over a range the data is not in, the time-filtered panels and the symbol variable
    // come back empty, each named.
    let long_ago = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let problems = check_dashboard_over(
        &url,
        &markets_dashboard(),
        TimeRange {
            from: long_ago - Duration::from_secs(3600),
            to: long_ago,
        },
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("variable $symbol: its query returned no values")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("panel \"$symbol $interval candles\" (A): no rows")),
        "{problems:#?}"
    );
}
