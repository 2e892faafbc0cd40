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

/// The same tick as both sides see it.
struct Tick {
    offset: i64,
}

impl Tick {
    fn fields(&self) -> Vec<(&'static str, Val)> {
        let o = self.offset;
        vec![
            ("id", Val::Text("AAPL")),
            ("exchange", Val::Text("NMS")),
            ("quote_type", Val::Int(8)),
            ("market_hours", Val::Int(1)),
            ("price", Val::Float(187.25 + o as f64 * 0.01)),
            ("change", Val::Float(1.5)),
            ("change_percent", Val::Float(0.8)),
            ("day_volume", Val::Int(1_000_000 + o)),
            ("price_hint", Val::Int(2)),
            (
                "event_time",
                Val::Timestamp(1_714_564_800_000_000 + o * 1000),
            ),
            (
                "event_id",
                Val::Text("0b7c6a4e-6f0e-4d8a-9a51-2f1b8f7d3c11"),
            ),
            ("source", Val::Text("simulator")),
        ]
    }
}

enum Val {
    Text(&'static str),
    Int(i64),
    Float(f64),
    Timestamp(i64),
}

fn host_batch(n: usize) -> host::Batch {
    let messages = (0..n as i64)
        .map(|offset| host::Message {
            topic: "tickers.stocks".into(),
            partition: 0,
            offset,
            timestamp_ms: 1_714_564_800_000 + offset,
            key: Some(b"AAPL".to_vec()),
            schema_id: Some(1),
            fields: Tick { offset }
                .fields()
                .into_iter()
                .map(|(name, v)| host::Field {
                    name: name.into(),
                    value: match v {
                        Val::Text(s) => host::Value::Text(s.into()),
                        Val::Int(i) => host::Value::Int(i),
                        Val::Float(f) => host::Value::Float(f),
                        Val::Timestamp(t) => host::Value::Timestamp(t),
                    },
                })
                .collect(),
        })
        .collect();
    host::Batch {
        config: vec![],
        messages,
    }
}

fn guest_messages(n: usize) -> Vec<guest::Message> {
    (0..n as i64)
        .map(|offset| guest::Message {
            topic: "tickers.stocks".into(),
            partition: 0,
            offset,
            timestamp_ms: 1_714_564_800_000 + offset,
            key: Some(b"AAPL".to_vec()),
            schema_id: Some(1),
            fields: Tick { offset }
                .fields()
                .into_iter()
                .map(|(name, v)| guest::Field {
                    name: name.into(),
                    value: match v {
                        Val::Text(s) => guest::Value::Text(s.into()),
                        Val::Int(i) => guest::Value::Int(i),
                        Val::Float(f) => guest::Value::Float(f),
                        Val::Timestamp(t) => guest::Value::Timestamp(t),
                    },
                })
                .collect(),
        })
        .collect()
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
        let batch = host_batch(n);
        group.bench_with_input(BenchmarkId::new("wasm", n), &batch, |b, batch| {
            b.iter(|| {
                let out = wasm.process(batch).expect("guest call");
                assert_eq!(out.len(), n);
                out
            })
        });
        let messages = guest_messages(n);
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
