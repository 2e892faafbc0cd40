//! The guest runtime against the real guests, compiled to wasm32-wasip2: guests of both
//! released contracts, limits, refusals, state and lookups as a call reaches them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::model::{
    Action, Batch, Body, ConfigEntry, Decimal, Field, NoLookups, Outcome, Output, Record,
    StateLimits, StateStore, StateTxn, Value, Write, batch_of,
};
use weir::runtime::{
    CallContext, Contract, Guest, GuestError, GuestErrorKind, GuestId, GuestLimits, HostEvents,
    Level, LoadError, Runtime, RuntimeConfig, TracingEvents,
};
use weir_tests::guest_path;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default(), Arc::new(TracingEvents::default())).unwrap()
}

fn load(rt: &Runtime, name: &str, limits: GuestLimits) -> Guest {
    rt.load_file(&guest_path(name), limits)
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn field(name: &str, value: Value) -> Field {
    Field {
        name: name.into(),
        value,
    }
}

/// The fields of a record decoded by name.
fn fields(r: &mut Record) -> &mut Vec<Field> {
    match &mut r.body {
        Body::Fields { fields, .. } => fields,
        other => panic!("{other:?}"),
    }
}

/// A 12-field stock tick, as the Kafka source decodes it.
fn tick(offset: i64) -> Record {
    Record {
        offset,
        timestamp_ms: 1_714_564_800_000 + offset,
        key: Some(b"AAPL".to_vec()),
        headers: Vec::new(),
        body: Body::Fields {
            schema_id: Some(1),
            fields: tick_fields(offset),
        },
    }
}

fn tick_fields(offset: i64) -> Vec<Field> {
    vec![
        field("id", Value::Text("AAPL".into())),
        field("exchange", Value::Text("NMS".into())),
        field("quote_type", Value::Int(8)),
        field("market_hours", Value::Int(1)),
        field("price", Value::Float(187.25 + offset as f64)),
        field("change", Value::Float(1.5)),
        field("change_percent", Value::Float(0.8)),
        field("day_volume", Value::Int(1_000_000 + offset)),
        field("price_hint", Value::Int(2)),
        field(
            "event_time",
            Value::Timestamp(1_714_564_800_000_000 + offset),
        ),
        field("event_id", Value::Text(format!("evt-{offset}"))),
        field("source", Value::Text("simulator".into())),
    ]
}

fn misbehaving(offset: i64) -> Record {
    let mut m = tick(offset);
    fields(&mut m).push(field("misbehave", Value::Boolean(true)));
    m
}

fn batch(messages: Vec<Record>) -> Batch {
    batch_of("tickers.stocks", 1, messages)
}

/// One call with nothing but the batch.
fn call(guest: &Guest, batch: &Batch) -> Result<Output, GuestError> {
    guest.process(batch, CallContext::default()).output
}

/// `guest` set up for a pipeline with these config values.
fn setup(rt: &Runtime, guest: &Guest, config: &[(&str, &str)]) -> Guest {
    let config = config
        .iter()
        .map(|(k, v)| ConfigEntry {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect();
    rt.setup(guest, "test", GuestLimits::default(), config)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The rows of an output, by name: (table, column → value), per message.
fn rows(output: &Output) -> Vec<Vec<(String, Vec<Field>)>> {
    output
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Actions(actions) => actions
                .iter()
                .filter_map(|a| match a {
                    Action::Write(row) => {
                        let t = &output.tables[row.target as usize];
                        Some((
                            t.table.clone(),
                            t.columns
                                .iter()
                                .zip(&row.values)
                                .map(|(c, v)| field(c, v.clone()))
                                .collect(),
                        ))
                    }
                    Action::Emit(_) => None,
                })
                .collect(),
            Outcome::DeadLetter(reason) => panic!("dead letter: {reason}"),
        })
        .collect()
}

/// After a failed call the same guest must work again: each call gets a fresh instance.
fn assert_recovers(guest: &Guest) {
    let outcomes = call(guest, &batch(vec![tick(1), tick(2)]))
        .expect("a normal call after a failure")
        .outcomes;
    assert_eq!(outcomes.len(), 2);
    for o in outcomes {
        assert!(
            matches!(o, Outcome::Actions(ref a) if a.len() == 1),
            "{o:?}"
        );
    }
}

#[test]
fn passthrough_maps_each_message_to_one_row_of_its_fields() {
    let rt = runtime();
    let guest = load(&rt, "passthrough", GuestLimits::default());
    assert_eq!(guest.contract(), Contract::V2);
    assert!(!guest.uses_state() && !guest.uses_lookups());
    let input: Vec<Record> = (0..50).map(tick).collect();
    let output = call(&guest, &batch(input.clone())).unwrap();
    assert_eq!(output.outcomes.len(), input.len());
    // One target for the batch's one writer schema: the names cross once.
    assert_eq!(output.tables.len(), 1, "{:?}", output.tables);
    assert_eq!(output.tables[0].write, Write::Insert);
    for (message, written) in input.into_iter().zip(rows(&output)) {
        assert_eq!(
            written,
            [("tickers_stocks".to_string(), message.into_fields())]
        );
    }

    // The table can be configured, and the config reaches the guest.
    let configured = setup(&rt, &guest, &[("table", "raw_ticks")]);
    let output = call(&configured, &batch(vec![tick(7)])).unwrap();
    assert_eq!(output.tables[0].table, "raw_ticks");

    // An empty batch is a valid call with no outcomes.
    assert!(call(&guest, &batch(vec![])).unwrap().outcomes.is_empty());
    assert_eq!(guest.stats(), (2, 0));
    assert_eq!(guest.id().name, "passthrough");
    assert_eq!(guest.id().version.len(), 64);
}

#[test]
fn a_0_1_0_guest_runs_beside_0_2_0_ones() {
    let rt = runtime();
    let old = load(&rt, "fixture_v1_passthrough", GuestLimits::default());
    assert_eq!(old.contract(), Contract::V1);
    let new = load(&rt, "passthrough", GuestLimits::default());
    let old = setup(&rt, &old, &[("table", "tickers_stocks")]);
    let input: Vec<Record> = (0..5).map(tick).collect();
    let from_old = call(&old, &batch(input.clone())).unwrap();
    let from_new = call(&new, &batch(input)).unwrap();
    assert_eq!(rows(&from_old), rows(&from_new));
    // The same guest built for 0.1.0 declares a target per distinct row shape too.
    assert_eq!(from_old.tables.len(), 1);
}

#[test]
fn infinite_loop_is_interrupted_at_the_deadline() {
    let rt = runtime();
    let limits = GuestLimits {
        deadline: Duration::from_millis(200),
        ..GuestLimits::default()
    };
    let guest = load(&rt, "fixture_spin", limits);
    let err = call(&guest, &batch(vec![tick(0), misbehaving(1)])).unwrap_err();
    assert_eq!(err.guest, "fixture_spin");
    assert_eq!(
        err.kind,
        GuestErrorKind::Deadline {
            limit: Duration::from_millis(200)
        }
    );
    assert!(
        err.to_string()
            .contains("interrupted after its 200ms deadline"),
        "{err}"
    );
    assert_recovers(&guest);
    assert_eq!(guest.stats(), (2, 1));
}

#[test]
fn memory_hog_is_stopped_by_the_cap() {
    let rt = runtime();
    let cap = 16 << 20;
    let guest = load(
        &rt,
        "fixture_hog",
        GuestLimits {
            max_memory: cap,
            ..GuestLimits::default()
        },
    );
    let err = call(&guest, &batch(vec![misbehaving(0)])).unwrap_err();
    match err.kind {
        GuestErrorKind::OutOfMemory { requested, limit } => {
            assert_eq!(limit, cap);
            assert!(requested > cap, "requested {requested}");
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
    assert_eq!(err.guest, "fixture_hog");
    assert_recovers(&guest);
}

#[test]
fn panic_is_reported_as_that_guests_error_with_its_message() {
    let rt = runtime();
    let guest = load(&rt, "fixture_panic", GuestLimits::default());
    let err = call(&guest, &batch(vec![tick(4), misbehaving(5)])).unwrap_err();
    assert_eq!(err.guest, "fixture_panic");
    assert_eq!(err.version, &guest.id().version[..12]);
    match &err.kind {
        GuestErrorKind::Panic { message } => {
            assert!(
                message.starts_with("fixture panicked on offset 5"),
                "{message}"
            );
            assert!(message.contains("fixtures/panic/src/lib.rs"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_recovers(&guest);
}

#[test]
fn deep_recursion_overflows_the_configured_stack() {
    let rt = Runtime::new(
        RuntimeConfig {
            max_wasm_stack: 64 << 10,
            ..RuntimeConfig::default()
        },
        Arc::new(TracingEvents::default()),
    )
    .unwrap();
    let guest = load(&rt, "fixture_recurse", GuestLimits::default());
    let err = call(&guest, &batch(vec![misbehaving(0)])).unwrap_err();
    assert_eq!(err.kind, GuestErrorKind::StackOverflow);
    assert_recovers(&guest);
}

#[test]
fn forbidden_wasi_import_is_refused_at_load() {
    let rt = runtime();
    let err = rt
        .load_file(&guest_path("fixture_wasi_clock"), GuestLimits::default())
        .unwrap_err();
    let LoadError::ForbiddenImports { guest, imports, .. } = &err else {
        panic!("expected forbidden imports, got {err}");
    };
    assert_eq!(guest, "fixture_wasi_clock");
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("wasi:clocks/wall-clock@")),
        "{imports:?}"
    );
    assert!(
        imports.iter().all(|i| i.starts_with("wasi:")),
        "{imports:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("which the weir:processor@0.2.0 world does not grant"),
        "{msg}"
    );
}

#[test]
fn component_of_another_world_is_refused_at_load() {
    let rt = runtime();
    let err = rt
        .load_file(&guest_path("fixture_wrong_world"), GuestLimits::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("it exports `transform`, not `init: func(config: list<config-entry>)"),
        "{err}"
    );
}

#[test]
fn core_modules_and_random_bytes_are_refused_at_load() {
    let rt = runtime();
    let core = b"\0asm\x01\0\0\0";
    let err = rt.load("core", core, GuestLimits::default()).unwrap_err();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("core WebAssembly module, not a component")
    );

    // Deterministic pseudo-random bytes (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let err = rt
        .load("random", &random, GuestLimits::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("guest random: not a WebAssembly file"),
        "{err}"
    );

    // A component header over garbage does not compile.
    let mut fake = b"\0asm\x0d\0\x01\0".to_vec();
    fake.extend_from_slice(&random);
    let err = rt.load("fake", &fake, GuestLimits::default()).unwrap_err();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");

    // Refusals leave the runtime usable.
    let guest = load(&rt, "passthrough", GuestLimits::default());
    assert_recovers(&guest);
}

type Pairs = Vec<(String, String)>;

#[derive(Default)]
struct Recorder {
    /// guest, level, message, fields
    logs: Mutex<Vec<(String, Level, String, Pairs)>>,
    /// guest, counter, delta, labels
    counters: Mutex<Vec<(String, String, u64, Pairs)>>,
}

impl HostEvents for Recorder {
    fn log(&self, guest: &GuestId, level: Level, message: &str, fields: &[(String, String)]) {
        self.logs.lock().unwrap().push((
            guest.name.clone(),
            level,
            message.into(),
            fields.to_vec(),
        ));
    }

    fn counter_add(&self, guest: &GuestId, name: &str, delta: u64, labels: &[(String, String)]) {
        self.counters.lock().unwrap().push((
            guest.name.clone(),
            name.into(),
            delta,
            labels.to_vec(),
        ));
    }
}

#[test]
fn guest_logs_and_counters_reach_the_host_tagged_with_the_guest() {
    let recorder = Arc::new(Recorder::default());
    let rt = Runtime::new(RuntimeConfig::default(), recorder.clone()).unwrap();
    let guest = load(&rt, "fixture_chatty", GuestLimits::default());
    let outcomes = call(&guest, &batch(vec![tick(3), tick(4)]))
        .unwrap()
        .outcomes;
    assert_eq!(
        outcomes,
        vec![Outcome::Actions(vec![]), Outcome::Actions(vec![])]
    );

    let logs = recorder.logs.lock().unwrap();
    assert_eq!(logs.len(), 2);
    let (name, level, message, fields) = &logs[1];
    assert_eq!(
        (name.as_str(), *level, message.as_str()),
        ("fixture_chatty", Level::Info, "saw a message")
    );
    assert_eq!(
        fields,
        &[
            ("topic".to_string(), "tickers.stocks".to_string()),
            ("offset".to_string(), "4".to_string())
        ]
    );
    let counters = recorder.counters.lock().unwrap();
    assert_eq!(counters.len(), 2);
    assert_eq!(
        counters[0],
        (
            "fixture_chatty".to_string(),
            "messages_seen".to_string(),
            1,
            vec![("topic".to_string(), "tickers.stocks".to_string())]
        )
    );
}

#[test]
fn calls_run_concurrently_on_separate_instances() {
    let rt = runtime();
    let guest = load(&rt, "passthrough", GuestLimits::default());
    std::thread::scope(|s| {
        for t in 0..4 {
            let guest = guest.clone();
            s.spawn(move || {
                for i in 0..20 {
                    let offset = t * 1000 + i;
                    let out = call(&guest, &batch(vec![tick(offset)])).unwrap();
                    assert_eq!(rows(&out)[0][0].1, tick_fields(offset));
                }
            });
        }
    });
    assert_eq!(guest.stats(), (80, 0));
}

#[test]
fn a_slot_swaps_at_the_next_snapshot_and_rolls_back() {
    use weir::runtime::GuestSlot;
    let rt = runtime();
    let a = load(&rt, "passthrough", GuestLimits::default());
    let b = load(&rt, "fixture_chatty", GuestLimits::default());
    let (va, vb) = (a.id().version.clone(), b.id().version.clone());
    let slot = GuestSlot::new("ticks", a.clone());
    // A batch holds on to the version it started with.
    let in_flight = slot.current();
    let swapped = slot.swap(b.clone()).expect("a different version swaps");
    assert_eq!(
        (swapped.old_version.as_str(), swapped.new_version.as_str()),
        (va.as_str(), vb.as_str())
    );
    assert_eq!(in_flight.id().version, va);
    let out = call(&in_flight, &batch(vec![tick(1)])).unwrap().outcomes;
    assert!(
        matches!(&out[0], Outcome::Actions(a) if a.len() == 1),
        "the old version ran: {out:?}"
    );
    // The next batch runs the new one (chatty drops every message).
    let next = slot.current();
    assert_eq!(next.id().version, vb);
    assert_eq!(
        call(&next, &batch(vec![tick(1)])).unwrap().outcomes,
        vec![Outcome::Actions(vec![])]
    );
    // Swapping in the version in use changes nothing.
    assert!(slot.swap(b).is_none());
    let back = slot.rollback().expect("there is a previous version");
    assert_eq!(back.new_version, va);
    assert_eq!(slot.current().id().version, va);
    assert_eq!(
        slot.rollback().unwrap().new_version,
        vb,
        "rolling back again returns"
    );
    assert_eq!(slot.swaps(), 3);
}

#[test]
fn a_native_processor_gives_the_output_of_its_compiled_guest() {
    use weir_tests::native::Native;
    let rt = runtime();
    let mut messages: Vec<Record> = (0..20).map(tick).collect();
    // A tombstone, a decimal and bytes: every value kind crosses both ways.
    messages[3].body = Body::Tombstone;
    fields(&mut messages[4]).push(field(
        "notional",
        Value::Decimal(Decimal::from_i128(-12_345, 2)),
    ));
    fields(&mut messages[5]).push(field("raw", Value::Bytes(vec![0, 159, 255])));
    fields(&mut messages[6]).push(field("flag", Value::Boolean(false)));
    fields(&mut messages[7]).push(field("gone", Value::Null));
    let config = |k: &str, v: &str| {
        vec![ConfigEntry {
            key: k.into(),
            value: v.into(),
        }]
    };
    let cases: [(&str, Guest, Vec<ConfigEntry>); 2] = [
        (
            "passthrough",
            Guest::native(
                "passthrough",
                Arc::new(Native::<passthrough::Passthrough>::default()),
                config("include_metadata", "true"),
            ),
            config("include_metadata", "true"),
        ),
        (
            "tickers",
            Guest::native(
                "tickers",
                Arc::new(Native::<tickers::Tickers>::default()),
                config("asset_class", "stocks"),
            ),
            config("asset_class", "stocks"),
        ),
    ];
    for (name, native, config) in cases {
        let wasm = rt
            .setup(
                &load(&rt, name, GuestLimits::default()),
                "test",
                GuestLimits::default(),
                config,
            )
            .unwrap();
        let batch = batch(messages.clone());
        let expected = call(&wasm, &batch).unwrap();
        assert_eq!(call(&native, &batch).unwrap(), expected, "{name}");
        assert_eq!(native.id().name, name);
        assert_ne!(native.id().version, wasm.id().version);
    }
}

/// A trade of `symbol` for the stats fixtures.
fn trade(offset: i64, symbol: &str, price: f64, volume: i64) -> Record {
    Record {
        offset,
        timestamp_ms: 0,
        key: None,
        headers: Vec::new(),
        body: Body::Fields {
            schema_id: None,
            fields: vec![
                field("symbol", Value::Text(symbol.into())),
                field("price", Value::Float(price)),
                field("volume", Value::Int(volume)),
            ],
        },
    }
}

#[test]
fn state_reaches_the_guest_through_the_call_and_its_writes_come_back() {
    let rt = runtime();
    let stats = load(&rt, "fixture_stats_a", GuestLimits::default());
    assert!(stats.uses_state() && !stats.uses_lookups());
    let trades = || {
        batch_of(
            "trades",
            2,
            vec![
                trade(0, "AAPL", 10.0, 5),
                trade(1, "MSFT", 20.0, 1),
                trade(2, "AAPL", 11.0, 7),
            ],
        )
    };
    // Without state given, a guest that reads it fails the call, saying why.
    let err = call(&stats, &trades()).unwrap_err();
    assert!(err.to_string().contains("no keyed state"), "{err}");

    let base = Arc::new(StateStore::default());
    let state = StateTxn::new(base.clone(), StateLimits::default());
    let done = stats.process(
        &trades(),
        CallContext {
            state: Some(state),
            lookups: None,
        },
    );
    done.output.unwrap();
    let writes = done.state.unwrap().writes();
    let mut store = (*base).clone();
    store.apply(&writes);
    let aapl = store.get(b"AAPL").unwrap();
    assert_eq!(&aapl[..8], &2i64.to_le_bytes());
    assert_eq!(&aapl[8..16], &11.0f64.to_le_bytes());
    assert_eq!(&aapl[16..], &12i64.to_le_bytes());
    assert_eq!(store.len(), 2);

    // The next batch reads what this one wrote; over a state limit, the guest hears why.
    let tight = StateLimits {
        max_value: 16,
        ..StateLimits::default()
    };
    let done = stats.process(
        &batch_of("trades", 2, vec![trade(3, "AAPL", 12.0, 1)]),
        CallContext {
            state: Some(StateTxn::new(Arc::new(store), tight)),
            lookups: None,
        },
    );
    let output = done.output.unwrap();
    assert_eq!(
        output.outcomes,
        [Outcome::DeadLetter(
            "state value of 24 bytes is over the pipeline's state.max_value of 16 bytes".into()
        )]
    );
    assert!(done.state.unwrap().writes().is_empty());
}

#[test]
fn lookups_answer_through_the_call() {
    let rt = runtime();
    let pair = load(&rt, "fixture_pair", GuestLimits::default());
    assert!(pair.uses_lookups() && !pair.uses_state());
    let done = pair.process(
        &batch_of("quotes", 0, vec![trade(0, "AAPL", 1.0, 1)]),
        CallContext {
            state: None,
            lookups: Some(Arc::new(NoLookups("there is no database here".into()))),
        },
    );
    assert_eq!(
        done.output.unwrap().outcomes,
        [Outcome::DeadLetter(
            "lookup \"ref\": there is no database here".into()
        )]
    );
}

#[test]
fn a_refused_config_refuses_the_set_up() {
    let rt = runtime();
    let picky = load(&rt, "fixture_picky", GuestLimits::default());
    let err = rt
        .setup(&picky, "prices", GuestLimits::default(), vec![])
        .unwrap_err();
    assert!(matches!(err, LoadError::Config { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("guest fixture_picky refused the config of pipeline prices: invalid guest config: `threshold` is required"),
        "{err}"
    );
    // Run without its config (never set up), every call fails: the host never lets it.
    let err = call(&picky, &batch(vec![tick(0)])).unwrap_err();
    assert!(matches!(err.kind, GuestErrorKind::Config { .. }), "{err}");
}
