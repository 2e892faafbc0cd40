//! Cost per message of the `passthrough` guest through the wasm runtime, against the same
//! transform compiled natively, for batches of 1, 100 and 1000 twelve-field ticks, under
//! both released contracts.
//!
//! `cargo bench -p weir-tests --bench runtime` runs it, then prints ns/message for each side
//! and the wasm/native ratios.
//!
//! Every side starts from the batch as the host holds it and ends with the output in host
//! memory:
//! - `wasm-0.2.0`: `passthrough` on `weir:processor@0.2.0`, the batch as the Kafka source
//!   decodes it for that contract (field names once per batch, values by position);
//! - `wasm-0.1.0`: the same transform built for `weir:processor@0.1.0`, each message with
//!   its field names, as 0.1.0 guests receive it;
//! - `native`: the same `Processor` code compiled into the benchmark, run on a clone of the
//!   0.2.0 batch in the SDK's types (its equivalent of handing over owned data).

// The allocator `weir` runs with, so both sides are measured as weir runs them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use weir::model::{Batch, Body, ConfigEntry, Field, Layout, Record, Value, batch_of};
use weir::runtime::{CallContext, GuestLimits, Runtime, RuntimeConfig, TracingEvents};
use weir_guest as guest;

const SIZES: [usize; 3] = [1, 100, 1000];
const SIDES: [&str; 3] = ["wasm-0.2.0", "wasm-0.1.0", "native"];

/// A twelve-field stock tick's fields, as the Kafka source decodes them.
fn tick_fields(offset: i64) -> Vec<Field> {
    vec![
        Field::new("id", Value::Text("AAPL".into())),
        Field::new("exchange", Value::Text("NMS".into())),
        Field::new("quote_type", Value::Int(8)),
        Field::new("market_hours", Value::Int(1)),
        Field::new("price", Value::Float(187.25 + offset as f64 * 0.01)),
        Field::new("change", Value::Float(1.5)),
        Field::new("change_percent", Value::Float(0.8)),
        Field::new("day_volume", Value::Int(1_000_000 + offset)),
        Field::new("price_hint", Value::Int(2)),
        Field::new(
            "event_time",
            Value::Timestamp(1_714_564_800_000_000 + offset * 1000),
        ),
        Field::new(
            "event_id",
            Value::Text("0b7c6a4e-6f0e-4d8a-9a51-2f1b8f7d3c11".into()),
        ),
        Field::new("source", Value::Text("simulator".into())),
    ]
}

/// `n` ticks as one batch; `by_position` decodes them as for a 0.2.0 guest (one layout,
/// values by position), otherwise with their names, as for a 0.1.0 guest.
fn ticks(n: usize, by_position: bool) -> Batch {
    let names: Vec<String> = tick_fields(0).into_iter().map(|f| f.name).collect();
    let layout = Arc::new(Layout::untyped(names.iter().map(String::as_str)));
    let records = (0..n as i64)
        .map(|offset| {
            let fields = tick_fields(offset);
            Record {
                offset,
                timestamp_ms: 1_714_564_800_000 + offset,
                key: Some(b"AAPL".to_vec()),
                headers: Vec::new(),
                body: if by_position {
                    Body::Values {
                        layout: layout.clone(),
                        values: fields.into_iter().map(|f| f.value).collect(),
                    }
                } else {
                    Body::Fields {
                        schema_id: Some(1),
                        fields,
                    }
                },
            }
        })
        .collect();
    batch_of("tickers.stocks", 0, records)
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default(), Arc::new(TracingEvents::default()))
        .expect("runtime");
    let load = |name: &str| {
        rt.load_file(&weir_tests::guest_path(name), GuestLimits::default())
            .unwrap_or_else(|e| panic!("load {name}: {e}"))
    };
    let v2 = load("passthrough");
    // The 0.1.0 build names its table in config, as 0.1.0 guests did.
    let config = vec![ConfigEntry {
        key: "table".into(),
        value: "tickers_stocks".into(),
    }];
    let v1 = rt
        .setup(
            &load("fixture_v1_passthrough"),
            "bench",
            GuestLimits::default(),
            config,
        )
        .expect("set up the 0.1.0 guest");

    let mut group = c.benchmark_group("passthrough");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let positional = ticks(n, true);
        let named = ticks(n, false);
        for (side, guest, batch) in [(SIDES[0], &v2, &positional), (SIDES[1], &v1, &named)] {
            group.bench_with_input(BenchmarkId::new(side, n), batch, |b, batch| {
                b.iter(|| {
                    let out = guest
                        .process(batch, CallContext::default())
                        .output
                        .expect("guest call");
                    assert_eq!(out.outcomes.len(), n);
                    out
                })
            });
        }
        let native = weir_tests::native::batch_in(&positional);
        group.bench_with_input(BenchmarkId::new(SIDES[2], n), &native, |b, batch| {
            b.iter(|| {
                let out = guest::run_batch::<passthrough::Passthrough>(&[], batch.clone())
                    .expect("native call");
                assert_eq!(out.outcomes.len(), n);
                out
            })
        });
    }
    group.finish();
}

fn criterion_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target/criterion")
}

/// Mean time per iteration, in ns, from criterion's saved estimates.
fn mean_ns(dir: &Path, side: &str, n: usize) -> Option<f64> {
    let path = dir.join(format!("passthrough/{side}/{n}/new/estimates.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let dir = criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();

    println!();
    println!("passthrough, 12-field tick   ns/message (mean)");
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "batch", SIDES[0], SIDES[1], SIDES[2], "0.2.0/native", "0.1.0/native"
    );
    for n in SIZES {
        let per = |side| mean_ns(&dir, side, n).map(|ns| ns / n as f64);
        if let (Some(v2), Some(v1), Some(nat)) = (per(SIDES[0]), per(SIDES[1]), per(SIDES[2])) {
            println!(
                "{n:>6} {v2:>12.1} {v1:>12.1} {nat:>10.1} {:>12.2} {:>12.2}",
                v2 / nat,
                v1 / nat
            );
        }
    }
}
