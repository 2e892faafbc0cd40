//! The guest runtime against the real guests, compiled to wasm32-wasip2.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::runtime::types::{Action, Batch, ConfigEntry, Field, Message, Outcome, Value};
use weir::runtime::{
    Guest, GuestErrorKind, GuestId, GuestLimits, HostEvents, Level, LoadError, Runtime,
    RuntimeConfig, TracingEvents,
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

/// A 12-field stock tick, as the Kafka source decodes it.
fn tick(offset: i64) -> Message {
    Message {
        topic: "tickers.stocks".into(),
        partition: 1,
        offset,
        timestamp_ms: 1_714_564_800_000 + offset,
        key: Some(b"AAPL".to_vec()),
        schema_id: Some(1),
        fields: vec![
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
        ],
    }
}

fn misbehaving(offset: i64) -> Message {
    let mut m = tick(offset);
    m.fields.push(field("misbehave", Value::Boolean(true)));
    m
}

fn batch(messages: Vec<Message>) -> Batch {
    Batch {
        config: vec![],
        messages,
    }
}

/// After a failed call the same guest must work again: each call gets a fresh instance.
fn assert_recovers(guest: &Guest) {
    let outcomes = guest
        .process(&batch(vec![tick(1), tick(2)]))
        .expect("a normal call after a failure");
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
    let input: Vec<Message> = (0..50).map(tick).collect();
    let outcomes = guest.process(&batch(input.clone())).unwrap();
    assert_eq!(outcomes.len(), input.len());
    for (message, outcome) in input.iter().zip(&outcomes) {
        let Outcome::Actions(actions) = outcome else {
            panic!(
                "expected actions for offset {}, got {outcome:?}",
                message.offset
            );
        };
        assert_eq!(actions.len(), 1);
        let Action::Insert(insert) = &actions[0] else {
            panic!("expected an insert, got {:?}", actions[0]);
        };
        assert_eq!(insert.table, "tickers_stocks");
        assert_eq!(insert.row, message.fields);
    }

    // The table can be configured, and the config reaches the guest.
    let configured = Batch {
        config: vec![ConfigEntry {
            key: "table".into(),
            value: "raw_ticks".into(),
        }],
        messages: vec![tick(7)],
    };
    let outcomes = guest.process(&configured).unwrap();
    let Outcome::Actions(actions) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(matches!(&actions[0], Action::Insert(i) if i.table == "raw_ticks"));

    // An empty batch is a valid call with no outcomes.
    assert!(guest.process(&batch(vec![])).unwrap().is_empty());
    assert_eq!(guest.stats(), (3, 0));
    assert_eq!(guest.id().name, "passthrough");
    assert_eq!(guest.id().version.len(), 64);
}

#[test]
fn infinite_loop_is_interrupted_at_the_deadline() {
    let rt = runtime();
    let limits = GuestLimits {
        deadline: Duration::from_millis(200),
        ..GuestLimits::default()
    };
    let guest = load(&rt, "fixture_spin", limits);
    let err = guest
        .process(&batch(vec![tick(0), misbehaving(1)]))
        .unwrap_err();
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
    let err = guest.process(&batch(vec![misbehaving(0)])).unwrap_err();
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
    let err = guest
        .process(&batch(vec![tick(4), misbehaving(5)]))
        .unwrap_err();
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
    let err = guest.process(&batch(vec![misbehaving(0)])).unwrap_err();
    assert_eq!(err.kind, GuestErrorKind::StackOverflow);
    assert_recovers(&guest);
}

#[test]
fn forbidden_wasi_import_is_refused_at_load() {
    let rt = runtime();
    let err = rt
        .load_file(&guest_path("fixture_wasi_clock"), GuestLimits::default())
        .unwrap_err();
    let LoadError::ForbiddenImports { guest, imports } = &err else {
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
        msg.contains("which the weir:processor@0.1.0 world does not grant"),
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
            .contains("exports `transform` but not `process"),
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
    let outcomes = guest.process(&batch(vec![tick(3), tick(4)])).unwrap();
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
                    let out = guest.process(&batch(vec![tick(offset)])).unwrap();
                    let Outcome::Actions(a) = &out[0] else {
                        panic!()
                    };
                    let Action::Insert(row) = &a[0] else { panic!() };
                    assert_eq!(row.row, tick(offset).fields);
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
    let out = in_flight.process(&batch(vec![tick(1)])).unwrap();
    assert!(
        matches!(&out[0], Outcome::Actions(a) if a.len() == 1),
        "the old version ran: {out:?}"
    );
    // The next batch runs the new one (chatty drops every message).
    let next = slot.current();
    assert_eq!(next.id().version, vb);
    assert_eq!(
        next.process(&batch(vec![tick(1)])).unwrap(),
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
fn a_native_processor_gives_the_outcomes_of_its_compiled_guest() {
    use weir_tests::native::Native;
    let rt = runtime();
    let mut messages: Vec<Message> = (0..20).map(tick).collect();
    // A tombstone, a decimal and bytes: every value kind crosses both ways.
    messages[3].fields.clear();
    messages[4].fields.push(field(
        "notional",
        Value::Decimal(weir::runtime::types::Decimal::from_i128(-12_345, 2)),
    ));
    messages[5]
        .fields
        .push(field("raw", Value::Bytes(vec![0, 159, 255])));
    messages[6]
        .fields
        .push(field("flag", Value::Boolean(false)));
    messages[7].fields.push(field("gone", Value::Null));
    let cases: [(&str, Guest, Vec<ConfigEntry>); 2] = [
        (
            "passthrough",
            Guest::native(
                "passthrough",
                Arc::new(Native::<passthrough::Passthrough>::default()),
            ),
            vec![ConfigEntry {
                key: "include_metadata".into(),
                value: "true".into(),
            }],
        ),
        (
            "tickers",
            Guest::native("tickers", Arc::new(Native::<tickers::Tickers>::default())),
            vec![ConfigEntry {
                key: "asset_class".into(),
                value: "stocks".into(),
            }],
        ),
    ];
    for (name, native, config) in cases {
        let wasm = load(&rt, name, GuestLimits::default());
        let batch = Batch {
            config,
            messages: messages.clone(),
        };
        let expected = wasm.process(&batch).unwrap();
        assert_eq!(native.process(&batch).unwrap(), expected, "{name}");
        assert_eq!(native.id().name, name);
        assert_ne!(native.id().version, wasm.id().version);
    }
}
