//! Cost per message of the `passthrough` guest through the wasm runtime, against the same
//! transform compiled natively, for batches of 1, 100 and 1000 twelve-field ticks.
//!
//! `cargo bench -p weir-tests --bench runtime` runs it, then prints ns/message for both and
//! the wasm/native ratio.
//!
//! Both sides start from the batch as the host holds it and end with the outcomes in host
//! memory: the wasm side lowers the batch into a fresh instance's linear memory, runs the
//! guest and lifts the outcomes back; the native side clones the batch (its equivalent of
//! handing over owned data) and runs the same `Processor` code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use weir::runtime::{GuestLimits, Runtime, RuntimeConfig, TracingEvents, types as host};
use weir_guest as guest;

const SIZES: [usize; 3] = [1, 100, 1000];

/// Builds `n` twelve-field ticks as messages of the types in `$types` (the host's and the
/// guest SDK's types are distinct but shaped alike).
macro_rules! ticks {
    ($types:path, $n:expr) => {{
        use $types as t;
        (0..$n as i64)
            .map(|offset| {
                let field = |name: &str, value: t::Value| t::Field {
                    name: name.into(),
                    value,
                };
                t::Message {
                    topic: "tickers.stocks".into(),
                    partition: 0,
                    offset,
                    timestamp_ms: 1_714_564_800_000 + offset,
                    key: Some(b"AAPL".to_vec()),
                    schema_id: Some(1),
                    fields: vec![
                        field("id", t::Value::Text("AAPL".into())),
                        field("exchange", t::Value::Text("NMS".into())),
                        field("quote_type", t::Value::Int(8)),
                        field("market_hours", t::Value::Int(1)),
                        field("price", t::Value::Float(187.25 + offset as f64 * 0.01)),
                        field("change", t::Value::Float(1.5)),
                        field("change_percent", t::Value::Float(0.8)),
                        field("day_volume", t::Value::Int(1_000_000 + offset)),
                        field("price_hint", t::Value::Int(2)),
                        field(
                            "event_time",
                            t::Value::Timestamp(1_714_564_800_000_000 + offset * 1000),
                        ),
                        field(
                            "event_id",
                            t::Value::Text("0b7c6a4e-6f0e-4d8a-9a51-2f1b8f7d3c11".into()),
                        ),
                        field("source", t::Value::Text("simulator".into())),
                    ],
                }
            })
            .collect::<Vec<t::Message>>()
    }};
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default(), Arc::new(TracingEvents::default()))
        .expect("runtime");
    let wasm = rt
        .load_file(
            &weir_tests::guest_path("passthrough"),
            GuestLimits::default(),
        )
        .expect("load passthrough");

    let mut group = c.benchmark_group("passthrough");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let batch = host::Batch {
            config: vec![],
            messages: ticks!(weir::runtime::types, n),
        };
        group.bench_with_input(BenchmarkId::new("wasm", n), &batch, |b, batch| {
            b.iter(|| {
                let out = wasm.process(batch).expect("guest call");
                assert_eq!(out.len(), n);
                out
            })
        });
        let messages = ticks!(weir_guest, n);
        group.bench_with_input(BenchmarkId::new("native", n), &messages, |b, messages| {
            b.iter(|| {
                let out = guest::testing::run::<passthrough::Passthrough>(&[], messages.clone());
                assert_eq!(out.len(), n);
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
        "{:>10} {:>12} {:>12} {:>14}",
        "batch", "wasm", "native", "wasm/native"
    );
    for n in SIZES {
        if let (Some(w), Some(nat)) = (mean_ns(&dir, "wasm", n), mean_ns(&dir, "native", n)) {
            let (w, nat) = (w / n as f64, nat / n as f64);
            println!("{n:>10} {w:>12.1} {nat:>12.1} {:>14.2}", w / nat);
        }
    }
}
