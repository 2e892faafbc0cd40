//! `weir::metrics` served over HTTP and scraped the way Prometheus scrapes it: every
//! series with its labels and value, guest-defined counters from a real guest, and the
//! probes.

use std::collections::BTreeMap;
use std::sync::Arc;

use weir::metrics::{self, Health, Metrics};
use weir::model::{Body, Record, batch_of};
use weir::runtime::{GuestId, GuestLimits, HostEvents, Runtime, RuntimeConfig, Swapped};
use weir_tests::guest_path;

/// `serve` on a free port, stopped on drop.
struct Server {
    url: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            health.clone(),
            weir::config::HttpConfig::default().limits(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            url,
            metrics,
            health,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    async fn scrape(&self) -> Exposition {
        let (status, content_type, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        Exposition::parse(&body)
    }

    /// Stops the server and checks that it ended cleanly.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Labels = BTreeMap<String, String>;

/// A parsed text exposition: every sample, and every family's type.
struct Exposition {
    text: String,
    samples: Vec<(String, Labels, f64)>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                samples.push(parse_sample(line));
            }
        }
        Self {
            text: text.into(),
            samples,
            types,
        }
    }

    /// The value of the one sample `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{want:?}: expected one sample in\n{}",
            self.text
        );
        found[0]
    }

    fn kind(&self, family: &str) -> &str {
        self.types
            .get(family)
            .unwrap_or_else(|| panic!("no # TYPE {family} in\n{}", self.text))
    }
}

/// `name{k="v",…} value` (labels optional), with label values unescaped.
fn parse_sample(line: &str) -> (String, Labels, f64) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut name = String::new();
    while i < chars.len() && chars[i] != '{' && chars[i] != ' ' {
        name.push(chars[i]);
        i += 1;
    }
    let mut labels = Labels::new();
    if chars.get(i) == Some(&'{') {
        i += 1;
        while chars[i] != '}' {
            let mut key = String::new();
            while chars[i] != '=' {
                key.push(chars[i]);
                i += 1;
            }
            assert_eq!(chars[i + 1], '"', "{line}");
            i += 2;
            let mut value = String::new();
            while chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                    value.push(if chars[i] == 'n' { '\n' } else { chars[i] });
                } else {
                    value.push(chars[i]);
                }
                i += 1;
            }
            i += 1;
            assert!(
                labels.insert(key, value).is_none(),
                "repeated label in {line}"
            );
            if chars[i] == ',' {
                i += 1;
            }
        }
        i += 1;
    }
    let rest: String = chars[i..].iter().collect();
    let value = rest.split_whitespace().next().expect(line);
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line}")),
    };
    (name, labels, value)
}

#[test]
fn exposition_parser_unescapes_labels() {
    let (name, labels, value) = parse_sample(r#"a_total{x="q\"b\\c\nd",y=""} 3"#);
    assert_eq!((name.as_str(), value), ("a_total", 3.0));
    assert_eq!(labels["x"], "q\"b\\c\nd");
    assert_eq!(labels["y"], "");
    let (name, labels, value) = parse_sample("b 1.5");
    assert_eq!((name.as_str(), labels.len(), value), ("b", 0, 1.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_scraped_with_its_labels_and_values() {
    let server = Server::start().await;
    let m = &server.metrics;
    m.records_in("tickers.stocks", 3);
    m.records_in("tickers.stocks", 2);
    m.records_in("tickers.crypto", 7);
    m.records_out("stock_ticks", 4);
    m.dead_letters("decode", 1);
    m.dead_letters("guest", 2);
    m.batch_duration("stocks", 0.003);
    m.batch_duration("stocks", 0.5);
    m.guest_call("passthrough", 0.0002);
    m.guest_error("passthrough", "deadline");
    m.guest_error("passthrough", "deadline");
    m.guest_error("passthrough", "trap");
    m.consumer_lag("tickers.stocks", 3, 100);
    m.consumer_lag("tickers.stocks", 3, 42);
    m.offset_committed("tickers.stocks", 0, 51);
    m.offset_committed("tickers.stocks", 0, 101);
    m.offset_committed("tickers.stocks", 1, 7);
    m.events().guest_swapped(
        &Swapped {
            name: "passthrough".into(),
            old_version: "a".into(),
            new_version: "b".into(),
        },
        "file passthrough.wasm",
    );
    m.events()
        .guest_refused("passthrough", "admin API", "not a WebAssembly file");

    let e = server.scrape().await;
    let topic = |t| [("topic", t)];
    assert_eq!(e.kind("weir_records_in"), "counter");
    assert_eq!(
        e.value("weir_records_in_total", &topic("tickers.stocks")),
        5.0
    );
    assert_eq!(
        e.value("weir_records_in_total", &topic("tickers.crypto")),
        7.0
    );
    assert_eq!(
        e.value("weir_records_out_total", &[("table", "stock_ticks")]),
        4.0
    );
    assert_eq!(
        e.value("weir_dead_letters_total", &[("stage", "decode")]),
        1.0
    );
    assert_eq!(
        e.value("weir_dead_letters_total", &[("stage", "guest")]),
        2.0
    );

    assert_eq!(e.kind("weir_batch_duration_seconds"), "histogram");
    let batch = |le| [("pipeline", "stocks"), ("le", le)];
    assert_eq!(
        e.value("weir_batch_duration_seconds_bucket", &batch("0.001")),
        0.0
    );
    assert_eq!(
        e.value("weir_batch_duration_seconds_bucket", &batch("0.005")),
        1.0
    );
    assert_eq!(
        e.value("weir_batch_duration_seconds_bucket", &batch("0.5")),
        2.0
    );
    assert_eq!(
        e.value("weir_batch_duration_seconds_bucket", &batch("30.0")),
        2.0
    );
    assert_eq!(
        e.value("weir_batch_duration_seconds_bucket", &batch("+Inf")),
        2.0
    );
    let stocks = [("pipeline", "stocks")];
    assert_eq!(e.value("weir_batch_duration_seconds_count", &stocks), 2.0);
    assert!((e.value("weir_batch_duration_seconds_sum", &stocks) - 0.503).abs() < 1e-9);

    assert_eq!(e.kind("weir_guest_call_duration_seconds"), "histogram");
    let guest = [("guest", "passthrough")];
    assert_eq!(
        e.value("weir_guest_call_duration_seconds_count", &guest),
        1.0
    );
    assert_eq!(
        e.value(
            "weir_guest_call_duration_seconds_bucket",
            &[("guest", "passthrough"), ("le", "0.00025")]
        ),
        1.0
    );
    assert_eq!(
        e.value(
            "weir_guest_call_duration_seconds_bucket",
            &[("guest", "passthrough"), ("le", "0.0001")]
        ),
        0.0
    );

    let kind = |k| [("guest", "passthrough"), ("kind", k)];
    assert_eq!(e.value("weir_guest_errors_total", &kind("deadline")), 2.0);
    assert_eq!(e.value("weir_guest_errors_total", &kind("trap")), 1.0);

    assert_eq!(e.kind("weir_consumer_lag"), "gauge");
    assert_eq!(
        e.value(
            "weir_consumer_lag",
            &[("topic", "tickers.stocks"), ("partition", "3")]
        ),
        42.0
    );
    assert_eq!(
        e.value("weir_offsets_committed_total", &topic("tickers.stocks")),
        3.0
    );
    assert_eq!(e.kind("weir_committed_offset"), "gauge");
    let part = |p| [("topic", "tickers.stocks"), ("partition", p)];
    assert_eq!(e.value("weir_committed_offset", &part("0")), 101.0);
    assert_eq!(e.value("weir_committed_offset", &part("1")), 7.0);
    assert_eq!(e.value("weir_guest_swaps_total", &guest), 1.0);
    assert_eq!(e.value("weir_guest_swap_refusals_total", &guest), 1.0);

    server.stop().await;
}

fn tick(offset: i64) -> Record {
    Record {
        offset,
        timestamp_ms: 1_714_564_800_000 + offset,
        key: None,
        headers: Vec::new(),
        body: Body::Fields {
            schema_id: Some(1),
            fields: vec![],
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_defined_counters_are_exported() {
    let server = Server::start().await;
    let events = server.metrics.events();

    // A real guest counting through the runtime's metrics import.
    let rt = Runtime::new(RuntimeConfig::default(), events.clone()).unwrap();
    let guest = rt
        .load_file(&guest_path("fixture_chatty"), GuestLimits::default())
        .unwrap();
    let batch = batch_of("tickers.stocks", 0, vec![tick(1), tick(2), tick(3)]);
    guest
        .process(&batch, weir::runtime::CallContext::default())
        .output
        .unwrap();

    // Label values that need escaping, and a label that would shadow `guest`.
    let other = GuestId {
        name: "other".into(),
        version: "v".into(),
        short_version: "v".into(),
    };
    let tricky = "say \"hi\"\\\nbye";
    events.counter_add(&other, "odd_total", 4, &[("note".into(), tricky.into())]);
    events.counter_add(&other, "odd", 1, &[("note".into(), tricky.into())]);
    events.counter_add(&other, "seen", 2, &[("guest".into(), "spoof".into())]);

    let e = server.scrape().await;
    assert_eq!(e.kind("weir_guest_messages_seen"), "counter");
    assert_eq!(
        e.value(
            "weir_guest_messages_seen_total",
            &[("guest", "fixture_chatty"), ("topic", "tickers.stocks")]
        ),
        3.0
    );
    assert_eq!(
        e.value(
            "weir_guest_odd_total",
            &[("guest", "other"), ("note", tricky)]
        ),
        5.0,
        "odd and odd_total are one counter"
    );
    assert_eq!(
        e.value(
            "weir_guest_seen_total",
            &[("guest", "other"), ("exported_guest", "spoof")]
        ),
        2.0
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_liveness_and_readiness_with_a_reason() {
    let server = Server::start().await;

    assert_eq!(server.get("/healthz").await.2, "ok");
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        "not ready: not connected yet, and no partitions assigned"
    );

    server.health.set_connected(true);
    server
        .health
        .set_reason(Some("waiting for a partition assignment".into()));
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: waiting for a partition assignment")
    );
    // Liveness never depends on readiness.
    let (status, _, body) = server.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    server.health.set_assigned(true);
    server.health.set_reason(None);
    let (status, _, body) = server.get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));

    server.health.set_connected(false);
    assert_eq!(server.get("/readyz").await.0, 503);

    server.stop().await;
}
