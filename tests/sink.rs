//! The Postgres sink against a real Postgres: typed inserts, merge-upserts, rejected rows,
//! dead letters, the offset compare-and-set, connection loss, table checks, and
//! `weir migrate`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::model::{self, Decimal, Field, Interner, Value, ValueKind};
use weir::sink::{
    PipelineScope, Sink, SinkBatch, SinkConfig, SinkError, SinkItem, TableExpectation, WriteReport,
    migrate,
};
use weir_tests::{TestDb, postgres_url, run_sql, unique, weir};

const TOPIC: &str = "tickers.stocks";

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
    client
}

async fn sink(url: &str) -> Sink {
    Sink::connect(SinkConfig {
        database_url: url.to_string(),
        group_id: "sink-tests".into(),
    })
    .await
    .expect("sink connects")
}

fn field(name: &str, value: Value) -> Field {
    Field {
        name: name.into(),
        value,
    }
}

/// A row as a test writes it: table and column names with every row (as 0.1.0 guests
/// give them); [`batch`] declares the targets.
#[derive(Debug, Clone)]
enum Action {
    Insert(InsertRow),
    Upsert(UpsertRow),
}

#[derive(Debug, Clone)]
struct InsertRow {
    table: String,
    row: Vec<Field>,
}

#[derive(Debug, Clone)]
struct UpsertRow {
    table: String,
    key: Vec<String>,
    row: Vec<Field>,
    policies: Vec<ColumnPolicy>,
}

#[derive(Debug, Clone)]
struct ColumnPolicy {
    column: String,
    policy: MergePolicy,
}

#[derive(Debug, Clone)]
enum MergePolicy {
    Min,
    Max,
    Sum,
    FirstByTime(String),
    LastByTime(String),
}

impl Action {
    fn table(&self) -> &str {
        match self {
            Action::Insert(i) => &i.table,
            Action::Upsert(u) => &u.table,
        }
    }

    /// The row, its target declared in `targets`.
    fn declare(self, targets: &mut Interner) -> model::Action {
        let (table, fields, write) = match self {
            Action::Insert(i) => (i.table, i.row, None),
            Action::Upsert(u) => (u.table, u.row, Some((u.key, u.policies))),
        };
        let (columns, values): (Vec<String>, Vec<Value>) =
            fields.into_iter().map(|f| (f.name, f.value)).unzip();
        let at = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .unwrap_or_else(|| panic!("{name} is not in the row")) as u32
        };
        let write = match write {
            None => model::Write::Insert,
            Some((key, policies)) => model::Write::Upsert(model::Upsert {
                key: key.iter().map(|k| at(k)).collect(),
                policies: policies
                    .iter()
                    .filter(|p| columns.contains(&p.column))
                    .map(|p| model::ColumnPolicy {
                        column: at(&p.column),
                        policy: match &p.policy {
                            MergePolicy::Min => model::MergePolicy::Min,
                            MergePolicy::Max => model::MergePolicy::Max,
                            MergePolicy::Sum => model::MergePolicy::Sum,
                            MergePolicy::FirstByTime(t) => model::MergePolicy::FirstByTime(at(t)),
                            MergePolicy::LastByTime(t) => model::MergePolicy::LastByTime(at(t)),
                        },
                    })
                    .collect(),
            }),
        };
        let target = targets.target(model::Target {
            table,
            columns,
            write,
        });
        model::Action::Write(model::Row { target, values })
    }
}

fn insert(table: &str, row: Vec<Field>) -> Action {
    Action::Insert(InsertRow {
        table: table.into(),
        row,
    })
}

fn dec(text: &str) -> Value {
    Value::Decimal(Decimal::parse(text).unwrap())
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// One message of a test batch.
#[derive(Debug, Clone)]
enum Item {
    /// These actions, with a raw key and value derived from the offset.
    Message { offset: i64, actions: Vec<Action> },
    /// A dead letter from before the sink.
    Dead(SinkItem),
}

/// The message at `offset`, with these actions and a raw key and value derived from it.
fn message(offset: i64, actions: Vec<Action>) -> Item {
    Item::Message { offset, actions }
}

/// A batch of `items` starting at `start`, one offset per item, of a pipeline that may
/// write every table the batch names.
fn batch(start: i64, items: Vec<Item>) -> SinkBatch {
    let mut tables = std::collections::BTreeSet::new();
    for item in &items {
        if let Item::Message { actions, .. } = item {
            tables.extend(actions.iter().map(|a| a.table().to_string()));
        }
    }
    scoped(start, items, tables.into_iter().collect())
}

/// A batch of `items` starting at `start` of a pipeline that may write `tables`.
fn scoped(start: i64, items: Vec<Item>, tables: Vec<String>) -> SinkBatch {
    let mut targets = Interner::default();
    let next_offset = start + items.len() as i64;
    let items = items
        .into_iter()
        .map(|item| match item {
            Item::Message { offset, actions } => SinkItem::Actions {
                offset,
                key: Some(format!("key-{offset}").into_bytes()),
                value: Some(format!("value-{offset}").into_bytes()),
                headers: Vec::new(),
                actions: actions
                    .into_iter()
                    .map(|a| a.declare(&mut targets))
                    .collect(),
                emits: Vec::new(),
            },
            Item::Dead(item) => item,
        })
        .collect();
    SinkBatch {
        topic: TOPIC.into(),
        partition: 3,
        start_offset: start,
        next_offset,
        guest_version: Some("sha256:feed".into()),
        version_column: None,
        scope: Arc::new(PipelineScope {
            pipeline: "sink-tests".into(),
            tables: tables.into_iter().collect(),
        }),
        targets: targets.finish(Vec::new()).tables,
        items,
        dedup: None,
        state: None,
        barrier: None,
    }
}

/// Every column of every row of `sql`, as text (NULL as None).
async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test]
async fn inserts_of_every_type_land_exactly_and_the_offset_moves_on() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE ticks (id int8 PRIMARY KEY, price float8, amount numeric(30,10),
             symbol text, at timestamptz, ok bool, raw bytea, doc jsonb,
             note text DEFAULT 'none');
         CREATE TABLE refs (n int4, d date, u uuid, small int2, f4 real, cur varchar(8),
             plain numeric, local timestamp, day date, js json);",
    );
    let sink = sink(&db.url()).await;
    let big = Decimal::from_i128(i128::MAX, 8);
    let first = batch(
        0,
        vec![
            message(
                0,
                vec![insert(
                    "ticks",
                    vec![
                        field("id", Value::Int(1)),
                        field("price", Value::Float(1.5)),
                        field("amount", dec("-98765432109876543210.0123456789")),
                        field("symbol", text("AAPL")),
                        field("at", Value::Timestamp(0)),
                        field("ok", Value::Boolean(true)),
                        field("raw", Value::Bytes(vec![])),
                        field("doc", text("{\"a\":[1,2]}")),
                    ],
                )],
            ),
            message(
                1,
                vec![
                    insert(
                        "ticks",
                        vec![
                            field("id", Value::Int(2)),
                            field("price", Value::Int(-3)),
                            field("amount", dec("0.0000000001")),
                            field("symbol", text("é漢")),
                            field("at", Value::Timestamp(1_700_000_000_123_456)),
                            field("ok", Value::Boolean(false)),
                            field("raw", Value::Bytes(vec![0, 255])),
                            field("doc", text("\"x\"")),
                            field("note", text("given")),
                        ],
                    ),
                    insert(
                        "refs",
                        vec![
                            field("n", Value::Int(42)),
                            field("d", Value::Int(19_000)),
                            field("u", text("67E55044-10B1-426F-9247-BB680E5FE0C8")),
                            field("small", Value::Int(-5)),
                            field("f4", Value::Float(0.5)),
                            field("cur", text("abc")),
                            field("plain", Value::Decimal(big.clone())),
                            field("local", Value::Timestamp(-1)),
                            field("day", Value::Timestamp(86_400_000_000 * 3 - 1)),
                            field("js", text("[1, {\"b\": null}]")),
                        ],
                    ),
                ],
            ),
            message(
                2,
                vec![
                    insert(
                        "ticks",
                        vec![
                            field("id", Value::Int(3)),
                            field("price", Value::Null),
                            field("amount", Value::Int(-7)),
                            field("symbol", Value::Null),
                        ],
                    ),
                    insert(
                        "refs",
                        vec![field("n", Value::Int(7)), field("plain", Value::Int(7))],
                    ),
                    insert(
                        "refs",
                        vec![field("plain", Value::Float(2.5)), field("n", Value::Int(8))],
                    ),
                    insert(
                        "refs",
                        vec![field("n", Value::Int(9)), field("plain", dec("0.00"))],
                    ),
                ],
            ),
        ],
    );
    let report = sink.write_batch(&first).await.unwrap();
    assert_eq!(
        report,
        WriteReport {
            rows: BTreeMap::from([("refs".into(), 4), ("ticks".into(), 3)]),
            dead_letters: vec![],
            attempts: 1,
            emitted: BTreeMap::new(),
        }
    );
    let pg = client(&db.url()).await;
    assert_eq!(
        rows(
            &pg,
            "SELECT id, price, amount, symbol, at, ok, raw, doc, note FROM ticks ORDER BY id"
        )
        .await,
        vec![
            vec![
                s("1"),
                s("1.5"),
                s("-98765432109876543210.0123456789"),
                s("AAPL"),
                s("1970-01-01 00:00:00+00"),
                s("t"),
                s("\\x"),
                s("{\"a\": [1, 2]}"),
                s("none"),
            ],
            vec![
                s("2"),
                s("-3"),
                s("0.0000000001"),
                s("é漢"),
                s("2023-11-14 22:13:20.123456+00"),
                s("f"),
                s("\\x00ff"),
                s("\"x\""),
                s("given"),
            ],
            vec![
                s("3"),
                None,
                s("-7.0000000000"),
                None,
                None,
                None,
                None,
                None,
                s("none"),
            ],
        ]
    );
    assert_eq!(
        rows(
            &pg,
            "SELECT n, (d - date '1970-01-01'), u, small, f4, cur, plain, local, day, js
               FROM refs ORDER BY n"
        )
        .await,
        vec![
            vec![
                s("7"),
                None,
                None,
                None,
                None,
                None,
                s("7"),
                None,
                None,
                None
            ],
            vec![
                s("8"),
                None,
                None,
                None,
                None,
                None,
                s("2.5"),
                None,
                None,
                None
            ],
            vec![
                s("9"),
                None,
                None,
                None,
                None,
                None,
                s("0.00"),
                None,
                None,
                None
            ],
            vec![
                s("42"),
                s("19000"),
                s("67e55044-10b1-426f-9247-bb680e5fe0c8"),
                s("-5"),
                s("0.5"),
                s("abc"),
                Some(big.to_string()),
                s("1969-12-31 23:59:59.999999"),
                s("1970-01-03"),
                s("[1, {\"b\": null}]"),
            ],
        ]
    );
    assert_eq!(sink.stored_offset(TOPIC, 3).await.unwrap(), Some(3));
    assert_eq!(sink.stored_offset(TOPIC, 4).await.unwrap(), None);

    // The next batch starts where the last one ended.
    let second = batch(
        3,
        vec![
            message(3, vec![insert("ticks", vec![field("id", Value::Int(4))])]),
            message(4, vec![]),
        ],
    );
    assert_eq!(sink.write_batch(&second).await.unwrap().rows["ticks"], 1);
    assert_eq!(sink.stored_offset(TOPIC, 3).await.unwrap(), Some(5));

    // A batch that does not start there is stale, and writes nothing.
    for start in [3, 9] {
        let stale = batch(
            start,
            vec![message(
                start,
                vec![insert("ticks", vec![field("id", Value::Int(99))])],
            )],
        );
        match sink.write_batch(&stale).await {
            Err(SinkError::Stale {
                expected, stored, ..
            }) => assert_eq!((expected, stored), (start, Some(5))),
            other => panic!("expected Stale, got {other:?}"),
        }
    }
    assert_eq!(count(&pg, "ticks").await, 4);
    assert_eq!(sink.stored_offset(TOPIC, 3).await.unwrap(), Some(5));
}

/// A deterministic pseudo-random sequence.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[derive(Debug, Clone)]
struct Tick {
    symbol: &'static str,
    /// Microseconds since the epoch.
    at: i64,
    /// Price in cents.
    price: i64,
    /// Size in thousandths.
    size: i64,
}

const CANDLES: &str = "(symbol text, bucket timestamptz, open numeric, high numeric,
    low numeric, close numeric, volume numeric, trades int8, first_event_at timestamptz,
    last_event_at timestamptz, PRIMARY KEY (symbol, bucket))";

fn candle_upsert(table: &str, tick: &Tick) -> Action {
    let price = Value::Decimal(Decimal::from_i128(tick.price.into(), 2));
    let policy = |column: &str, policy: MergePolicy| ColumnPolicy {
        column: column.into(),
        policy,
    };
    Action::Upsert(UpsertRow {
        table: table.into(),
        key: vec!["symbol".into(), "bucket".into()],
        row: vec![
            field("symbol", text(tick.symbol)),
            field("bucket", Value::Timestamp(1_700_000_000_000_000)),
            field("open", price.clone()),
            field("high", price.clone()),
            field("low", price.clone()),
            field("close", price),
            field(
                "volume",
                Value::Decimal(Decimal::from_i128(tick.size.into(), 3)),
            ),
            field("trades", Value::Int(1)),
            field("first_event_at", Value::Timestamp(tick.at)),
            field("last_event_at", Value::Timestamp(tick.at)),
        ],
        policies: vec![
            policy("open", MergePolicy::FirstByTime("first_event_at".into())),
            policy("high", MergePolicy::Max),
            policy("low", MergePolicy::Min),
            policy("close", MergePolicy::LastByTime("last_event_at".into())),
            policy("volume", MergePolicy::Sum),
            policy("trades", MergePolicy::Sum),
            policy("first_event_at", MergePolicy::Min),
            policy("last_event_at", MergePolicy::Max),
        ],
    })
}

/// Writes `actions`, one message each, in batches of the given sizes (cycled).
async fn write_in_batches(sink: &Sink, actions: Vec<Action>, sizes: &[usize], start: i64) -> i64 {
    let mut offset = start;
    let mut actions = actions.into_iter().peekable();
    for size in sizes.iter().cycle() {
        if actions.peek().is_none() {
            break;
        }
        let items: Vec<Item> = actions
            .by_ref()
            .take(*size)
            .enumerate()
            .map(|(i, a)| message(offset + i as i64, vec![a]))
            .collect();
        let b = batch(offset, items);
        let report = sink.write_batch(&b).await.unwrap();
        assert!(report.dead_letters.is_empty(), "{report:?}");
        offset = b.next_offset;
    }
    offset
}

#[tokio::test]
async fn merge_upserts_give_the_same_candle_in_any_batching_and_order() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        &format!("CREATE TABLE candles {CANDLES}; CREATE TABLE candles_one {CANDLES};"),
    );
    let sink = sink(&db.url()).await;
    let mut rng = Lcg(7);
    let base = 1_700_000_000_000_000;
    // Few distinct times, so equal times (ties) happen often; arrival order is random.
    let ticks: Vec<Tick> = (0..300)
        .map(|_| Tick {
            symbol: ["AAA", "BBB", "CCC"][rng.next(3) as usize],
            at: base + rng.next(8) as i64 * 1_000_000,
            price: 10_000 + rng.next(10_000) as i64,
            size: 1 + rng.next(100_000) as i64,
        })
        .collect();

    // Batched: many rows of a key in one batch, out of time order.
    write_in_batches(
        &sink,
        ticks.iter().map(|t| candle_upsert("candles", t)).collect(),
        &[1, 7, 50, 13, 120, 2],
        0,
    )
    .await;
    // One message per batch: the policies applied one row at a time.
    let sink_one = Sink::connect(SinkConfig {
        database_url: db.url(),
        group_id: "one-by-one".into(),
    })
    .await
    .unwrap();
    write_in_batches(
        &sink_one,
        ticks
            .iter()
            .map(|t| candle_upsert("candles_one", t))
            .collect(),
        &[1],
        0,
    )
    .await;

    // What the policies say, computed here.
    let mut expected: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    for symbol in ["AAA", "BBB", "CCC"] {
        let of: Vec<&Tick> = ticks.iter().filter(|t| t.symbol == symbol).collect();
        // First by time: the earliest time; on a tie, the first to arrive.
        let open = of.iter().min_by_key(|t| t.at).unwrap();
        // Last by time: the latest time; on a tie, the last to arrive.
        let close = of.iter().max_by_key(|t| t.at).unwrap();
        let cents = |v: i64| Decimal::from_i128(v.into(), 2).to_string();
        expected.insert(
            symbol,
            vec![
                s(symbol),
                Some(cents(open.price)),
                Some(cents(of.iter().map(|t| t.price).max().unwrap())),
                Some(cents(of.iter().map(|t| t.price).min().unwrap())),
                Some(cents(close.price)),
                Some(
                    Decimal::from_i128(of.iter().map(|t| i128::from(t.size)).sum(), 3).to_string(),
                ),
                Some(of.len().to_string()),
                Some(of.iter().map(|t| t.at).min().unwrap().to_string()),
                Some(of.iter().map(|t| t.at).max().unwrap().to_string()),
            ],
        );
    }
    let pg = client(&db.url()).await;
    for table in ["candles", "candles_one"] {
        let got = rows(
            &pg,
            &format!(
                "SELECT symbol, open, high, low, close, volume, trades,
                        (extract(epoch FROM first_event_at) * 1000000)::int8,
                        (extract(epoch FROM last_event_at) * 1000000)::int8
                   FROM {table} ORDER BY symbol"
            ),
        )
        .await;
        assert_eq!(
            got,
            expected.values().cloned().collect::<Vec<_>>(),
            "{table}"
        );
    }
}

#[tokio::test]
async fn upserts_whose_policies_do_not_combine_still_apply_in_message_order() {
    // `b` is last by `t`, but `t` itself is replaced: not combinable in a batch. And two
    // shapes write the same keys. Batched and one-at-a-time must still agree.
    let db = TestDb::new();
    let table = "(k text PRIMARY KEY, a numeric, b int8, t int8, u text, lo bool)";
    run_sql(
        &db.url(),
        &format!("CREATE TABLE mixed {table}; CREATE TABLE mixed_one {table};"),
    );
    let policy = |column: &str, policy: MergePolicy| ColumnPolicy {
        column: column.into(),
        policy,
    };
    let mut rng = Lcg(11);
    let make = |table: &str, rng: &mut Lcg| -> Action {
        let k = text(["x", "y"][rng.next(2) as usize]);
        let row = if rng.next(2) == 0 {
            UpsertRow {
                table: table.into(),
                key: vec!["k".into()],
                row: vec![
                    field("k", k),
                    field("a", Value::Int(rng.next(100) as i64)),
                    field("b", Value::Int(rng.next(100) as i64)),
                    field("t", Value::Int(rng.next(5) as i64)),
                    field("lo", Value::Boolean(rng.next(2) == 0)),
                ],
                policies: vec![
                    policy("b", MergePolicy::LastByTime("t".into())),
                    policy("lo", MergePolicy::Min),
                ],
            }
        } else {
            UpsertRow {
                table: table.into(),
                key: vec!["k".into()],
                row: vec![
                    field("k", k),
                    field("a", Value::Int(rng.next(100) as i64)),
                    field("u", text(&format!("u{}", rng.next(100)))),
                ],
                policies: vec![policy("a", MergePolicy::Sum)],
            }
        };
        Action::Upsert(row)
    };
    let mut r1 = Lcg(11);
    let batched: Vec<Action> = (0..120).map(|_| make("mixed", &mut r1)).collect();
    let one: Vec<Action> = (0..120).map(|_| make("mixed_one", &mut rng)).collect();
    let sink = sink(&db.url()).await;
    write_in_batches(&sink, batched, &[40, 80], 0).await;
    let sink_one = Sink::connect(SinkConfig {
        database_url: db.url(),
        group_id: "one-by-one".into(),
    })
    .await
    .unwrap();
    write_in_batches(&sink_one, one, &[1], 0).await;
    let pg = client(&db.url()).await;
    let a = rows(&pg, "SELECT * FROM mixed ORDER BY k").await;
    let b = rows(&pg, "SELECT * FROM mixed_one ORDER BY k").await;
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
}

#[tokio::test]
async fn rejected_rows_dead_letter_their_messages_and_the_rest_commits() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE trades (id int8 PRIMARY KEY, price float8 NOT NULL CHECK (price > 0));
         CREATE TABLE totals (k text PRIMARY KEY, n int8);",
    );
    let sink = sink(&db.url()).await;
    let start = 1000;
    let items: Vec<Item> = (0..50)
        .map(|i| {
            let price = match i {
                10 => Value::Float(-1.0),
                33 => text("abc"),
                _ => Value::Float(i as f64 + 1.0),
            };
            message(
                start + i,
                vec![
                    insert(
                        "trades",
                        vec![field("id", Value::Int(i)), field("price", price)],
                    ),
                    Action::Upsert(UpsertRow {
                        table: "totals".into(),
                        key: vec!["k".into()],
                        row: vec![field("k", text("all")), field("n", Value::Int(1))],
                        policies: vec![ColumnPolicy {
                            column: "n".into(),
                            policy: MergePolicy::Sum,
                        }],
                    }),
                ],
            )
        })
        .collect();
    let report = sink.write_batch(&batch(start, items)).await.unwrap();
    assert_eq!(
        report.dead_letters,
        vec![
            (start + 10, "sink".to_string()),
            (start + 33, "sink".to_string())
        ]
    );
    assert_eq!(report.rows["trades"], 48);
    let pg = client(&db.url()).await;
    assert_eq!(count(&pg, "trades").await, 48);
    // A rejected message's other rows do not land either.
    assert_eq!(rows(&pg, "SELECT n FROM totals").await, vec![vec![s("48")]]);
    let letters = rows(
        &pg,
        "SELECT \"offset\", stage, error, guest_version, encode(key, 'escape'),
                encode(value, 'escape'), topic, partition, group_id
           FROM dead_letters ORDER BY \"offset\"",
    )
    .await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let check = letters[0][2].clone().unwrap();
    assert!(
        check.contains("trades") && check.contains("trades_price_check"),
        "{check}"
    );
    let kind = letters[1][2].clone().unwrap();
    assert!(
        kind.contains("trades.price") && kind.contains("text"),
        "{kind}"
    );
    for (letter, offset) in letters.iter().zip([start + 10, start + 33]) {
        assert_eq!(letter[0], Some(offset.to_string()));
        assert_eq!(letter[1], s("sink"));
        assert_eq!(letter[3], s("sha256:feed"));
        assert_eq!(letter[4], Some(format!("key-{offset}")));
        assert_eq!(letter[5], Some(format!("value-{offset}")));
        assert_eq!(letter[6], s(TOPIC));
        assert_eq!(letter[7], s("3"));
        assert_eq!(letter[8], s("sink-tests"));
    }
    assert_eq!(
        sink.stored_offset(TOPIC, 3).await.unwrap(),
        Some(start + 50)
    );
}

#[tokio::test]
async fn bisection_finds_every_kind_of_row_postgres_rejects() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE t (id int8 PRIMARY KEY, code varchar(4), amount numeric(6,2) NOT NULL,
                         CHECK (amount <> 13));
         CREATE TABLE u (k int8 PRIMARY KEY, v int2);",
    );
    let sink = sink(&db.url()).await;
    // Offset → what the dead letter's error must say.
    let bad: BTreeMap<i64, &str> = BTreeMap::from([
        (3, "t_pkey"),                  // the same id as message 2
        (57, "character varying(4)"),   // too long
        (90, "null value"),             // NOT NULL
        (131, "overflow"),              // numeric(6,2) overflow
        (170, "t_amount_check"),        // CHECK
        (199, "smallint out of range"), // its sum overflows what 198 stored
    ]);
    let items: Vec<Item> = (0..200)
        .map(|i| {
            let (id, code, amount) = match i {
                3 => (2, text("ok"), dec("1")),
                57 => (i, text("toolong"), dec("1")),
                90 => (i, text("ok"), Value::Null),
                131 => (i, text("ok"), dec("123456.78")),
                170 => (i, text("ok"), dec("13")),
                _ => (i, text("ok"), dec("2.50")),
            };
            let mut actions = vec![insert(
                "t",
                vec![
                    field("id", Value::Int(id)),
                    field("code", code),
                    field("amount", amount),
                ],
            )];
            if i >= 198 {
                actions.push(Action::Upsert(UpsertRow {
                    table: "u".into(),
                    key: vec!["k".into()],
                    row: vec![field("k", Value::Int(1)), field("v", Value::Int(30_000))],
                    policies: vec![ColumnPolicy {
                        column: "v".into(),
                        policy: MergePolicy::Sum,
                    }],
                }));
            }
            message(i, actions)
        })
        .collect();
    let report = sink.write_batch(&batch(0, items)).await.unwrap();
    let rejected: Vec<i64> = report.dead_letters.iter().map(|(o, _)| *o).collect();
    assert_eq!(rejected, bad.keys().copied().collect::<Vec<_>>());
    let pg = client(&db.url()).await;
    assert_eq!(count(&pg, "t").await, 200 - 6);
    assert_eq!(rows(&pg, "SELECT v FROM u").await, vec![vec![s("30000")]]);
    let errors = rows(&pg, "SELECT \"offset\", error FROM dead_letters ORDER BY 1").await;
    for (row, (offset, needle)) in errors.iter().zip(&bad) {
        assert_eq!(row[0], Some(offset.to_string()));
        let error = row[1].clone().unwrap();
        assert!(error.contains(needle), "offset {offset}: {error}");
    }
}

#[tokio::test]
async fn pre_sink_dead_letters_are_written_once() {
    let db = TestDb::new();
    run_sql(&db.url(), "CREATE TABLE t (id int8)");
    let sink = sink(&db.url()).await;
    let mut b = batch(
        10,
        vec![
            Item::Dead(SinkItem::DeadLetter {
                offset: 10,
                key: Some(b"k10".to_vec()),
                value: Some(vec![0, 1, 2, 255]),
                headers: vec![weir::model::Header {
                    key: "trace".into(),
                    value: Some(b"t1".to_vec()),
                }],
                stage: "decode".into(),
                error: "truncated Avro at byte 3".into(),
            }),
            message(11, vec![insert("t", vec![field("id", Value::Int(11))])]),
            Item::Dead(SinkItem::DeadLetter {
                offset: 12,
                key: None,
                value: None,
                headers: Vec::new(),
                stage: "guest".into(),
                error: "price \0 is negative".into(),
            }),
        ],
    );
    b.partition = 0;
    b.guest_version = Some("sha256:abc".into());
    let report = sink.write_batch(&b).await.unwrap();
    assert_eq!(
        report.dead_letters,
        vec![(10, "decode".to_string()), (12, "guest".to_string())]
    );
    let pg = client(&db.url()).await;
    let expected = vec![
        vec![
            s("10"),
            s("decode"),
            s("truncated Avro at byte 3"),
            s("sha256:abc"),
            s("\\x6b3130"),
            s("\\x000102ff"),
            s("sink-tests"),
            s("\\x050000007472616365020000007431"),
        ],
        vec![
            s("12"),
            s("guest"),
            s("price \u{FFFD} is negative"),
            s("sha256:abc"),
            None,
            None,
            s("sink-tests"),
            None,
        ],
    ];
    let query = "SELECT \"offset\", stage, error, guest_version, key, value, pipeline, headers
                   FROM dead_letters ORDER BY \"offset\"";
    assert_eq!(rows(&pg, query).await, expected);
    // The same batch again (a redelivery to a stale owner) writes nothing more.
    assert!(matches!(
        sink.write_batch(&b).await,
        Err(SinkError::Stale {
            stored: Some(13),
            ..
        })
    ));
    assert_eq!(rows(&pg, query).await, expected);
    assert_eq!(count(&pg, "t").await, 1);
}

/// Rows of `n` inserts into `t`, one message each.
fn numbered(start: i64, n: i64) -> SinkBatch {
    batch(
        start,
        (start..start + n)
            .map(|i| message(i, vec![insert("t", vec![field("id", Value::Int(i))])]))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_mid_batch_is_replaced_and_the_batch_commits_once() {
    let db = TestDb::new();
    run_sql(&db.url(), "CREATE TABLE t (id int8 PRIMARY KEY)");
    let app = unique("weir_sink");
    let url = format!("{}&application_name={app}", db.url());
    let sink = Arc::new(sink(&url).await);
    sink.check_tables(&[TableExpectation {
        table: "t".into(),
        columns: vec![("id".into(), ValueKind::Int)],
    }])
    .await
    .unwrap();
    let admin = client(&postgres_url()).await;
    let pid_of = |wait: &'static str| {
        let admin = &admin;
        let app = app.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let found = admin
                    .query(
                        "SELECT pid FROM pg_stat_activity
                          WHERE application_name = $1 AND coalesce(wait_event_type, '') LIKE $2",
                        &[&app, &wait],
                    )
                    .await
                    .unwrap();
                if let Some(row) = found.first() {
                    return row.get::<_, i32>(0);
                }
                assert!(
                    Instant::now() < deadline,
                    "the sink's backend never showed up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // The sink's COPY waits for a lock held elsewhere; its backend is killed meanwhile.
    let locker = client(&db.url()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let writing = tokio::spawn({
        let sink = sink.clone();
        async move { sink.write_batch(&numbered(0, 1000)).await }
    });
    let pid = pid_of("Lock").await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), writing)
        .await
        .expect("write_batch finishes")
        .unwrap()
        .unwrap();
    assert!(report.attempts >= 2, "{report:?}");
    assert_eq!(report.rows["t"], 1000);
    let pg = client(&db.url()).await;
    assert_eq!(count(&pg, "t").await, 1000);
    assert_eq!(sink.stored_offset(TOPIC, 3).await.unwrap(), Some(1000));

    // Killed while idle between batches: the next batch reconnects.
    let pid = pid_of("%").await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let report = sink.write_batch(&numbered(1000, 500)).await.unwrap();
    assert_eq!(report.rows["t"], 500);
    assert_eq!(count(&pg, "t").await, 1500);
    let ids = rows(&pg, "SELECT min(id), max(id), count(DISTINCT id) FROM t").await;
    assert_eq!(ids, vec![vec![s("0"), s("1499"), s("1500")]]);
    assert_eq!(sink.stored_offset(TOPIC, 3).await.unwrap(), Some(1500));
}

#[tokio::test]
async fn table_checks_list_every_problem_at_once() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE DOMAIN price AS numeric CHECK (VALUE > 0);
         CREATE TABLE quotes (symbol text, bid price, at timestamptz, note text)",
    );
    let sink = sink(&db.url()).await;
    let expect = |table: &str, columns: &[(&str, ValueKind)]| TableExpectation {
        table: table.into(),
        columns: columns.iter().map(|(c, k)| (c.to_string(), *k)).collect(),
    };
    sink.check_tables(&[expect(
        "quotes",
        &[
            ("symbol", ValueKind::Text),
            ("bid", ValueKind::Decimal),
            ("bid", ValueKind::Float),
            ("at", ValueKind::Timestamp),
        ],
    )])
    .await
    .expect("fitting tables pass");
    let err = sink
        .check_tables(&[
            expect(
                "quotes",
                &[
                    ("symbol", ValueKind::Text),
                    ("note", ValueKind::Float),
                    ("ask", ValueKind::Decimal),
                ],
            ),
            expect("candles", &[]),
        ])
        .await
        .unwrap_err();
    let SinkError::Tables(message) = &err else {
        panic!("{err:?}");
    };
    assert!(
        message.contains("quotes.note: expected float, found text"),
        "{message}"
    );
    assert!(message.contains("quotes.ask does not exist"), "{message}");
    assert!(
        message.contains("table candles does not exist"),
        "{message}"
    );
    assert!(!message.contains("symbol"), "{message}");
}

#[tokio::test]
async fn sinks_starting_together_create_their_tables_once() {
    let db = TestDb::new();
    let url = db.url();
    let (a, b, c) = tokio::join!(sink(&url), sink(&url), sink(&url));
    drop((a, b, c));
    let pg = client(&db.url()).await;
    let tables = rows(
        &pg,
        &format!(
            "SELECT table_name FROM information_schema.tables
              WHERE table_schema = '{}' ORDER BY 1",
            db.schema
        ),
    )
    .await;
    assert_eq!(
        tables,
        vec![
            vec![s("dead_letters")],
            vec![s("weir_dedup")],
            vec![s("weir_deploy_answers")],
            vec![s("weir_deployments")],
            vec![s("weir_live_guests")],
            vec![s("weir_offsets")],
            vec![s("weir_outbox")],
            vec![s("weir_relay")],
            vec![s("weir_shadow_diffs")],
            vec![s("weir_shadows")],
            vec![s("weir_state")],
            vec![s("weir_switches")]
        ]
    );
}

#[tokio::test]
async fn a_missing_table_rejects_its_messages_only() {
    let db = TestDb::new();
    run_sql(&db.url(), "CREATE TABLE t (id int8)");
    let sink = sink(&db.url()).await;
    let b = batch(
        0,
        vec![
            message(0, vec![insert("t", vec![field("id", Value::Int(1))])]),
            message(1, vec![insert("nope", vec![field("id", Value::Int(2))])]),
            message(2, vec![insert("t", vec![field("idd", Value::Int(3))])]),
        ],
    );
    let report = sink.write_batch(&b).await.unwrap();
    assert_eq!(
        report.dead_letters,
        vec![(1, "sink".to_string()), (2, "sink".to_string())]
    );
    let pg = client(&db.url()).await;
    let errors = rows(&pg, "SELECT error FROM dead_letters ORDER BY \"offset\"").await;
    assert_eq!(
        errors,
        vec![
            vec![s("table nope does not exist")],
            vec![s("t.idd does not exist")]
        ]
    );
    // A column added later is seen without a restart.
    run_sql(&db.url(), "ALTER TABLE t ADD COLUMN idd int8");
    let b = batch(
        3,
        vec![message(
            3,
            vec![insert("t", vec![field("idd", Value::Int(3))])],
        )],
    );
    assert!(sink.write_batch(&b).await.unwrap().dead_letters.is_empty());
    assert_eq!(count(&pg, "t").await, 2);
}

#[tokio::test]
async fn the_version_column_is_filled_in_every_row_on_request() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE t (id int8, v text); CREATE TABLE u (k text PRIMARY KEY, n int8, v text);
         CREATE TABLE plain (id int8)",
    );
    let sink = sink(&db.url()).await;
    let upsert = |k: &str, n: i64, v: Option<&str>| {
        let mut row = vec![field("k", text(k)), field("n", Value::Int(n))];
        if let Some(v) = v {
            row.push(field("v", text(v)));
        }
        Action::Upsert(UpsertRow {
            table: "u".into(),
            row,
            key: vec!["k".into()],
            policies: vec![ColumnPolicy {
                column: "n".into(),
                policy: MergePolicy::Sum,
            }],
        })
    };
    let mut b = batch(
        0,
        vec![
            message(0, vec![insert("t", vec![field("id", Value::Int(1))])]),
            // A guest's own value for the column does not hide the version.
            message(
                1,
                vec![
                    insert("t", vec![field("id", Value::Int(2)), field("v", text("x"))]),
                    upsert("a", 1, None),
                ],
            ),
            message(2, vec![upsert("a", 2, Some("y"))]),
            // A table without the column refuses the row, naming the setting.
            message(3, vec![insert("plain", vec![field("id", Value::Int(3))])]),
        ],
    );
    b.guest_version = Some("v1".into());
    b.version_column = Some("v".into());
    let report = sink.write_batch(&b).await.unwrap();
    assert_eq!(report.dead_letters, vec![(3, "sink".to_string())]);
    let pg = client(&db.url()).await;
    assert_eq!(
        rows(&pg, "SELECT id, v FROM t ORDER BY id").await,
        vec![vec![s("1"), s("v1")], vec![s("2"), s("v1")]]
    );
    assert_eq!(
        rows(&pg, "SELECT error FROM dead_letters").await,
        vec![vec![s(
            "plain.v does not exist (the pipeline's version_column)"
        )]]
    );
    // A later version replaces the one recorded on an upserted row.
    let mut b = batch(4, vec![message(4, vec![upsert("a", 4, None)])]);
    b.guest_version = Some("v2".into());
    b.version_column = Some("v".into());
    sink.write_batch(&b).await.unwrap();
    assert_eq!(
        rows(&pg, "SELECT k, n, v FROM u").await,
        vec![vec![s("a"), s("7"), s("v2")]]
    );
}

#[tokio::test]
async fn dedup_keys_are_remembered_with_the_rows_that_commit() {
    let db = TestDb::new();
    run_sql(&db.url(), "CREATE TABLE t (id int8 CHECK (id > 0))");
    let sink = sink(&db.url()).await;
    let row = |offset: i64, id: i64| {
        message(offset, vec![insert("t", vec![field("id", Value::Int(id))])])
    };
    let keys = |pairs: &[(i64, &str)]| {
        Some(weir::sink::DedupKeys {
            scope: "p".into(),
            keys: pairs.iter().map(|(o, k)| (*o, k.to_string())).collect(),
        })
    };
    assert!(sink.seen("p", &["a", "b"]).await.unwrap().is_empty());
    // Offset 1's row is rejected (id > 0): its key is not remembered, so a corrected
    // redelivery is not taken for a duplicate.
    let mut b = batch(0, vec![row(0, 1), row(1, -1), row(2, 3)]);
    b.dedup = keys(&[(0, "a"), (1, "b"), (2, "c")]);
    sink.write_batch(&b).await.unwrap();
    let seen = sink.seen("p", &["a", "b", "c", "d"]).await.unwrap();
    assert_eq!(
        seen,
        ["a", "c"].into_iter().map(String::from).collect(),
        "the rejected message's key is not remembered"
    );
    assert!(
        sink.seen("other", &["a"]).await.unwrap().is_empty(),
        "keys are per scope"
    );

    // A batch whose key another batch committed after the lookup writes nothing.
    let mut b = batch(3, vec![row(3, 4), row(4, 5)]);
    b.dedup = keys(&[(3, "d"), (4, "a")]);
    match sink.write_batch(&b).await {
        Err(SinkError::SeenMeanwhile { start_offset, .. }) => assert_eq!(start_offset, 3),
        other => panic!("expected SeenMeanwhile, got {other:?}"),
    }
    let pg = client(&db.url()).await;
    assert_eq!(
        count(&pg, "t").await,
        2,
        "nothing of the refused batch was written"
    );
    assert!(sink.seen("p", &["d"]).await.unwrap().is_empty());
    assert_eq!(sink.stored_offset(TOPIC, 3).await.unwrap(), Some(3));

    // Expiry forgets keys older than the retention only.
    assert_eq!(
        sink.forget_seen("p", Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    run_sql(
        &db.url(),
        "UPDATE weir_dedup SET seen_at = now() - interval '2 hours' WHERE key = 'a'",
    );
    assert_eq!(
        sink.forget_seen("p", Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        sink.seen("p", &["a", "c"]).await.unwrap(),
        ["c"].into_iter().map(String::from).collect()
    );
}

fn write(dir: &Path, name: &str, sql: &str) {
    std::fs::write(dir.join(name), sql).unwrap();
}

#[tokio::test]
async fn migrations_apply_once_in_order_and_refuse_changes() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let tables = "CREATE TABLE m1 (id int PRIMARY KEY);\nCREATE TABLE m2 (x text);\n";
    write(
        dir.path(),
        "002_data.sql",
        "INSERT INTO m1 VALUES (1), (2);",
    );
    write(dir.path(), "001_tables.sql", tables);
    write(dir.path(), "README.md", "not a migration");

    let report = migrate(&db.url(), dir.path()).await.unwrap();
    assert_eq!(report.applied, ["001_tables.sql", "002_data.sql"]);
    assert!(report.skipped.is_empty());
    let report = migrate(&db.url(), dir.path()).await.unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(report.skipped, ["001_tables.sql", "002_data.sql"]);
    let pg = client(&db.url()).await;
    assert_eq!(count(&pg, "m1").await, 2);
    let recorded = pg
        .query(
            "SELECT name, sha256 = encode(sha256(convert_to($1, 'UTF8')), 'hex')
               FROM weir_migrations ORDER BY name",
            &[&tables],
        )
        .await
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].get::<_, String>(0), "001_tables.sql");
    assert!(recorded[0].get::<_, bool>(1), "sha256 of 001 recorded");

    write(
        dir.path(),
        "003_more.sql",
        "ALTER TABLE m2 ADD COLUMN y int;",
    );
    let report = migrate(&db.url(), dir.path()).await.unwrap();
    assert_eq!(report.applied, ["003_more.sql"]);

    // A failing file is rolled back and not recorded; those before it stay applied.
    write(dir.path(), "004_ok.sql", "CREATE TABLE m4 (id int);");
    write(
        dir.path(),
        "005_bad.sql",
        "CREATE TABLE m5 (id int); SELECT 1/0;",
    );
    let err = migrate(&db.url(), dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("005_bad.sql") && err.contains("division by zero"),
        "{err}"
    );
    assert!(err.contains("004_ok.sql"), "{err}");
    assert_eq!(
        rows(
            &pg,
            "SELECT to_regclass('m4') IS NOT NULL, to_regclass('m5') IS NULL"
        )
        .await,
        vec![vec![s("t"), s("t")]]
    );
    std::fs::remove_file(dir.path().join("005_bad.sql")).unwrap();

    // An applied file that changed is refused, before anything new is applied.
    write(
        dir.path(),
        "001_tables.sql",
        "CREATE TABLE m1 (id bigint PRIMARY KEY);",
    );
    write(dir.path(), "006_new.sql", "CREATE TABLE m6 (id int);");
    let err = migrate(&db.url(), dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("001_tables.sql") && err.contains("changed"),
        "{err}"
    );
    assert_eq!(count(&pg, "weir_migrations").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_file_once() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001.sql", "CREATE TABLE counter (n int);");
    write(dir.path(), "002.sql", "INSERT INTO counter VALUES (1);");
    let url = db.url();
    let (a, b, c) = tokio::join!(
        migrate(&url, dir.path()),
        migrate(&url, dir.path()),
        migrate(&url, dir.path())
    );
    let reports = [a.unwrap(), b.unwrap(), c.unwrap()];
    let applied: usize = reports.iter().map(|r| r.applied.len()).sum();
    assert_eq!(applied, 2, "{reports:?}");
    let pg = client(&db.url()).await;
    assert_eq!(count(&pg, "counter").await, 1);
}

#[test]
fn weir_migrate_prints_what_it_did_and_fails_with_the_reason() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a.sql", "CREATE TABLE a (id int);");
    let path = dir.path().to_str().unwrap();
    let url = db.url();
    let out = weir(&["migrate", "--database-url", &url, path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("applied 001_a.sql"), "{stdout}");
    write(dir.path(), "002_b.sql", "CREATE TABLE b (id int);");
    let out = weir(&["migrate", "--database-url", &url, path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("skipped (already applied) 001_a.sql"),
        "{stdout}"
    );
    assert!(stdout.contains("applied 002_b.sql"), "{stdout}");
    write(dir.path(), "001_a.sql", "CREATE TABLE a (id int8);");
    let out = weir(&["migrate", "--database-url", &url, path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("001_a.sql"), "{stderr}");
    // The password is not echoed.
    let out = weir(&[
        "migrate",
        "--database-url",
        "postgresql://weir:s3cret@127.0.0.1:1/nowhere",
        path,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("127.0.0.1:1") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_pipeline_writes_only_its_tables() {
    let db = TestDb::new();
    run_sql(
        &db.url(),
        "CREATE TABLE mine (id int8); CREATE TABLE theirs (id int8)",
    );
    let sink = sink(&db.url()).await;
    let row = |table: &str, id: i64| insert(table, vec![field("id", Value::Int(id))]);
    let items = vec![
        message(0, vec![row("mine", 0)]),
        message(1, vec![row("mine", 1), row("theirs", 1)]),
        message(2, vec![row("weir_offsets", 2)]),
        message(3, vec![row("mine", 3)]),
    ];
    let b = scoped(0, items, vec!["mine".into()]);
    let report = sink.write_batch(&b).await.unwrap();
    assert_eq!(
        report.dead_letters,
        vec![(1, "sink".to_string()), (2, "sink".to_string())]
    );
    let pg = client(&db.url()).await;
    assert_eq!(
        rows(&pg, "SELECT id FROM mine ORDER BY id").await,
        vec![vec![s("0")], vec![s("3")]]
    );
    assert_eq!(count(&pg, "theirs").await, 0);
    let errors = rows(&pg, "SELECT error FROM dead_letters ORDER BY \"offset\"").await;
    assert_eq!(
        errors,
        vec![
            vec![s(
                "pipeline sink-tests may not write table theirs: it is not among the pipeline's tables (mine)"
            )],
            vec![s(
                "pipeline sink-tests may not write table weir_offsets: it is not among the pipeline's tables (mine)"
            )],
        ]
    );
    assert_eq!(
        rows(&pg, "SELECT next_offset FROM weir_offsets").await,
        vec![vec![s("4")]]
    );
    // Nor may a pipeline declare one of weir's own tables, however it names it.
    let err = sink
        .check_tables(&[TableExpectation {
            table: format!("{}.dead_letters", db.schema),
            columns: vec![],
        }])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is weir's own"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_read_and_written_in_the_batchs_transaction() {
    use weir::model::{StateStore, StateWrites};
    use weir::sink::{RunBatch, StateSlot};
    let db = TestDb::new();
    run_sql(&db.url(), "CREATE TABLE t (id int8)");
    let sink = sink(&db.url()).await;
    let mut slot = StateSlot {
        pipeline: "p".into(),
        held: None,
    };
    let made = |start: i64, puts: &[(&str, &str)], deletes: &[&str]| {
        let mut b = numbered(start, 2);
        b.state = Some(StateWrites {
            puts: puts
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            deletes: deletes.iter().map(|k| k.as_bytes().to_vec()).collect(),
        });
        b.scope = Arc::new(PipelineScope {
            pipeline: "p".into(),
            tables: ["t".to_string()].into(),
        });
        b
    };
    let mut seen: Vec<StateStore> = Vec::new();
    let mut run = RunBatch {
        topic: TOPIC,
        partition: 3,
        start_offset: 0,
        next_offset: 2,
        state: Some(&mut slot),
        lookups: None,
        guest: None,
    };
    sink.run_batch(&mut run, |store, _| {
        seen.push((*store.expect("state for a stateful batch")).clone());
        Ok(made(0, &[("a", "1"), ("b", "2")], &[]))
    })
    .await
    .unwrap();
    assert!(seen[0].is_empty());
    let held = slot.held.clone().unwrap();
    assert_eq!(held.0, 2);
    assert_eq!(held.1.get(b"a"), Some(&b"1"[..]));
    let pg = client(&db.url()).await;
    const STATE: &str = "SELECT convert_from(key, 'UTF8'), convert_from(value, 'UTF8'), partition
           FROM weir_state WHERE pipeline = 'p' ORDER BY key";
    assert_eq!(
        rows(&pg, STATE).await,
        vec![vec![s("a"), s("1"), s("3")], vec![s("b"), s("2"), s("3")]]
    );

    // The next batch starts from the state held, and its writes (a delete, a put)
    // commit with it.
    let mut run = RunBatch {
        topic: TOPIC,
        partition: 3,
        start_offset: 2,
        next_offset: 4,
        state: Some(&mut slot),
        lookups: None,
        guest: None,
    };
    sink.run_batch(&mut run, |store, _| {
        let store = store.unwrap();
        assert!(
            Arc::ptr_eq(&store, &held.1),
            "the held state, not read again"
        );
        Ok(made(2, &[("c", "3")], &["a"]))
    })
    .await
    .unwrap();
    assert_eq!(
        rows(&pg, STATE).await,
        vec![vec![s("b"), s("2"), s("3")], vec![s("c"), s("3"), s("3")]]
    );

    // Another owner moves the partition on: this one's next batch is stale and runs
    // nothing; state read afresh (a partition moving here) is what Postgres holds.
    let mut other = StateSlot {
        pipeline: "p".into(),
        held: None,
    };
    let mut run = RunBatch {
        topic: TOPIC,
        partition: 3,
        start_offset: 4,
        next_offset: 6,
        state: Some(&mut other),
        lookups: None,
        guest: None,
    };
    let other_sink = Sink::connect(SinkConfig {
        database_url: db.url(),
        group_id: "sink-tests".into(),
    })
    .await
    .unwrap();
    other_sink
        .run_batch(&mut run, |store, _| {
            let store = store.unwrap();
            assert_eq!(store.len(), 2);
            assert_eq!(store.get(b"c"), Some(&b"3"[..]));
            Ok(made(4, &[("d", "4")], &[]))
        })
        .await
        .unwrap();
    let mut ran = false;
    let mut run = RunBatch {
        topic: TOPIC,
        partition: 3,
        start_offset: 4,
        next_offset: 6,
        state: Some(&mut slot),
        lookups: None,
        guest: None,
    };
    let stale = sink
        .run_batch(&mut run, |_, _| {
            ran = true;
            Ok(made(4, &[("e", "5")], &[]))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            SinkError::Stale {
                stored: Some(6),
                ..
            }
        ),
        "{stale}"
    );
    assert!(!ran, "a stale batch does not run its guest");
    assert_eq!(rows(&pg, STATE).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_run_read_only_in_the_batchs_snapshot_and_are_cached() {
    let db = TestDb::new();
    // On a runtime worker, as `weir run`'s partition workers are: a guest call (here the
    // closure) blocks its thread while lookups wait for Postgres.
    tokio::spawn(lookups_in_a_batch(db.url())).await.unwrap();
}

async fn lookups_in_a_batch(url: String) {
    use weir::sink::{LookupSet, RunBatch};
    let db = Url(url);
    run_sql(
        &db.url(),
        "CREATE TABLE t (id int8);
         CREATE TABLE rates (currency text PRIMARY KEY, rate numeric(10,4), at timestamptz);
         INSERT INTO rates VALUES ('EUR', 1.0825, '2026-12-01T10:00:00Z'), ('JPY', 0.0067, NULL);",
    );
    let sink = sink(&db.url()).await;
    let set = |sql: &str| {
        Arc::new(LookupSet {
            pipeline: "fx".into(),
            queries: [("rate".to_string(), sql.to_string())].into(),
        })
    };
    // Refused at start, with what to change.
    for (sql, needle) in [
        ("UPDATE rates SET rate = 0", "must start with SELECT"),
        (
            "SELECT rate FROM nowhere WHERE currency = $1",
            "Postgres refuses it",
        ),
        (
            "SELECT rate, '(1,2)'::point AS p FROM rates WHERE currency = $1",
            "column p is of type point",
        ),
    ] {
        let err = sink.check_lookups(&set(sql)).await.unwrap_err().to_string();
        assert!(
            err.contains("pipeline fx, lookup rate") && err.contains(needle),
            "{err}"
        );
    }
    let good =
        set("SELECT rate, at, clock_timestamp()::text AS asked FROM rates WHERE currency = $1");
    sink.check_lookups(&good).await.unwrap();
    let mut answers = Vec::new();
    let mut run = RunBatch {
        topic: TOPIC,
        partition: 3,
        start_offset: 0,
        next_offset: 2,
        state: None,
        lookups: Some(&good),
        guest: None,
    };
    sink.run_batch(&mut run, |_, lookups| {
        let lookups = lookups.expect("lookups for a lookup batch");
        let ask = |c: &str| lookups.query("rate", &[Value::Text(c.into())]);
        answers.push(ask("EUR"));
        answers.push(ask("JPY"));
        answers.push(ask("EUR"));
        answers.push(lookups.query("rate", &[Value::Int(3)]));
        answers.push(lookups.query("nope", &[]));
        Ok(numbered(0, 2))
    })
    .await
    .unwrap();
    let eur = answers[0].clone().unwrap();
    assert_eq!(eur.columns, ["rate", "at", "asked"]);
    assert_eq!(
        eur.rows[0][..2],
        [
            Value::Decimal(Decimal::parse("1.0825").unwrap()),
            Value::Timestamp(1_796_119_200_000_000)
        ]
    );
    assert_eq!(answers[1].clone().unwrap().rows[0][1], Value::Null);
    // The same name and parameters, asked again in the batch: the cached answer (the
    // volatile column did not move).
    assert_eq!(answers[2], answers[0]);
    assert_ne!(answers[1].clone().unwrap().rows[0][2], eur.rows[0][2]);
    let wrong = answers[3].clone().unwrap_err();
    assert!(
        wrong.contains("parameter $1: a int value does not convert"),
        "{wrong}"
    );
    let unknown = answers[4].clone().unwrap_err();
    assert!(
        unknown.contains("pipeline fx declares no lookup named \"nope\" (it declares rate)"),
        "{unknown}"
    );

    // A lookup that would write runs read-only: Postgres refuses it, the guest hears
    // why, and the batch still commits its rows.
    let sneaky = set(
        "WITH gone AS (DELETE FROM rates WHERE currency = $1 RETURNING rate) SELECT rate FROM gone",
    );
    sink.check_lookups(&sneaky).await.unwrap();
    let mut refused = None;
    let mut run = RunBatch {
        topic: TOPIC,
        partition: 3,
        start_offset: 2,
        next_offset: 4,
        state: None,
        lookups: Some(&sneaky),
        guest: None,
    };
    sink.run_batch(&mut run, |_, lookups| {
        refused = Some(lookups.unwrap().query("rate", &[Value::Text("EUR".into())]));
        Ok(numbered(2, 2))
    })
    .await
    .unwrap();
    let refused = refused.unwrap().unwrap_err();
    assert!(refused.contains("read-only transaction"), "{refused}");
    let pg = client(&db.url()).await;
    assert_eq!(count(&pg, "rates").await, 2);
    assert_eq!(count(&pg, "t").await, 4);
}

/// A database URL where a test body wants a [`TestDb`].
struct Url(String);

impl Url {
    fn url(&self) -> String {
        self.0.clone()
    }
}

/// A batch that ran with a guest version other than the group's live one commits
/// nothing; with the live one it commits; and a switch of the live version waits for the
/// batch in flight, so no batch after it commits the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_only_with_the_live_guest_version_and_a_switch_waits_for_it() {
    let db = TestDb::new();
    let url = db.url();
    let c = client(&url).await;
    c.batch_execute("CREATE TABLE t (id int8 NOT NULL)")
        .await
        .unwrap();
    let sink = sink(&url).await;
    c.batch_execute(
        "INSERT INTO weir_live_guests (group_id, guest, version, sha256)
         VALUES ('sink-tests', 'g', 2, 'v2')",
    )
    .await
    .unwrap();
    let with = |start: i64, version: &str| {
        let mut b = numbered(start, 3);
        b.guest_version = Some(version.into());
        b.barrier = Some("g".into());
        b
    };
    match sink.write_batch(&with(0, "v1")).await {
        Err(SinkError::Superseded {
            guest,
            live,
            start_offset,
            ..
        }) => {
            assert_eq!(
                (guest.as_str(), live.as_str(), start_offset),
                ("g", "v2", 0)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&c, "t").await, 0, "nothing written");
    sink.write_batch(&with(0, "v2")).await.unwrap();
    assert_eq!(count(&c, "t").await, 3);

    // A switch holds the row while a batch of the old version tries to commit: the batch
    // waits, then sees the new version and commits nothing.
    let switching = client(&url).await;
    switching
        .batch_execute(
            "BEGIN; UPDATE weir_live_guests SET version = 3, sha256 = 'v3' WHERE guest = 'g'",
        )
        .await
        .unwrap();
    let late = tokio::spawn(async move { sink.write_batch(&with(3, "v2")).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!late.is_finished(), "the batch waits for the switch");
    switching.batch_execute("COMMIT").await.unwrap();
    match late.await.unwrap() {
        Err(SinkError::Superseded { live, .. }) => assert_eq!(live, "v3"),
        other => panic!("{other:?}"),
    }
    assert_eq!(count(&c, "t").await, 3);
}

/// Whether the connection `pg` opens is encrypted, as Postgres sees it.
async fn encrypted(pg: &weir::pg::PgConfig) -> Result<bool, String> {
    let client = pg
        .connect_spawned("the test")
        .await
        .map_err(|e| weir::pg::error_text(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[test]
fn postgres_tls_checks_the_ca_and_the_host_as_sslmode_asks() {
    let ca = weir_tests::TestCa::new();
    let other = weir_tests::TestCa::new();
    let cluster = weir_tests::PgCluster::start_tls(&ca);
    let port = cluster.port;
    let url =
        |host: &str, params: &str| format!("postgresql://postgres@{host}:{port}/postgres?{params}");
    let parse = |url: &str| weir::pg::PgConfig::parse(url, "weir-test").unwrap();
    let root = ca.cert().display().to_string();
    let wrong = other.cert().display().to_string();
    weir_tests::rt().block_on(async {
        // verify-full: the right CA and the name in the certificate.
        let full = parse(&url("localhost", &format!("sslmode=verify-full&sslrootcert={root}")));
        assert_eq!(encrypted(&full).await, Ok(true));
        // Every connection weir makes goes the same way: the sink's and the registry's.
        Sink::connect(SinkConfig {
            database_url: url("localhost", &format!("sslmode=verify-full&sslrootcert={root}")),
            group_id: "tls".into(),
        })
        .await
        .expect("the sink connects with verify-full");
        weir::registry::server::RegistryServer::connect(&url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={root}"),
        ))
        .await
        .expect("the registry's store connects with verify-full");

        // A CA that did not sign the server's certificate.
        let e = encrypted(&parse(&url("localhost", &format!("sslmode=verify-full&sslrootcert={wrong}"))))
            .await
            .unwrap_err();
        assert!(e.contains("invalid peer certificate") && e.contains("UnknownIssuer"), "{e}");
        // verify-ca does not check the name; verify-full does.
        let e = encrypted(&parse(&url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={root}"))))
            .await
            .unwrap_err();
        assert!(e.contains("certificate not valid for name \"127.0.0.1\""), "{e}");
        let ca_only = parse(&url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={root}")));
        assert_eq!(encrypted(&ca_only).await, Ok(true));
        let e = encrypted(&parse(&url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={wrong}"))))
            .await
            .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        // A refused certificate is not an outage to wait out.
        let e = Sink::connect(SinkConfig {
            database_url: url("localhost", &format!("sslmode=verify-full&sslrootcert={wrong}")),
            group_id: "tls".into(),
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid peer certificate"), "{e}");

        // require encrypts without checking; prefer (the default) takes TLS when offered;
        // disable does not.
        assert_eq!(encrypted(&parse(&url("127.0.0.1", "sslmode=require"))).await, Ok(true));
        assert_eq!(encrypted(&parse(&url("127.0.0.1", ""))).await, Ok(true));
        assert_eq!(encrypted(&parse(&url("127.0.0.1", "sslmode=disable"))).await, Ok(false));

        // A client certificate: the role weir_cert may log in only with one from the CA.
        let admin = parse(&url("localhost", "sslmode=disable"));
        admin
            .connect_spawned("the test")
            .await
            .unwrap()
            .batch_execute("CREATE ROLE weir_cert LOGIN")
            .await
            .unwrap();
        let (cert, key) = ca.issue("weir_cert", &[]);
        let as_cert = |extra: &str| {
            format!(
                "postgresql://weir_cert@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={root}{extra}"
            )
        };
        let e = encrypted(&parse(&as_cert(""))).await.unwrap_err();
        assert!(e.contains("28000") || e.contains("certificate"), "{e}");
        let with_cert = parse(&as_cert(&format!(
            "&sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        )));
        assert_eq!(encrypted(&with_cert).await, Ok(true));
    });
}
