//! Hostile input against real services: tansu, weir's registry, Postgres and `weir run`
//! with compiled guests. Each test sends what an attacker could — a few bytes of Kafka
//! message, a request, a schema, a module — and checks that it becomes a dead letter or a
//! refusal that says why, while everything else goes on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use weir::registry::{RegistryClient, SchemaId, frame_into};
use weir_tests::{
    Broker, Registry, TestDb, free_port, guest_path, query, rt, run_sql, unique, wait_for_port,
    wait_until, weir_bin,
};

const TICK: &str = r#"{"type":"record","name":"Tick","namespace":"hostile","fields":[
  {"name":"price","type":"double"},{"name":"sym","type":"string"}]}"#;
const NODE: &str =
    r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#;
const NULLS: &str = r#"{"type":"record","name":"Nulls","fields":[
  {"name":"a","type":{"type":"array","items":{"type":"array","items":"null"}}}]}"#;
const TEXT: &str = r#"{"type":"record","name":"Text","fields":[{"name":"s","type":"string"}]}"#;
const OTHER: &str = r#"{"type":"record","name":"Other","fields":[{"name":"x","type":"long"}]}"#;

/// The bound on `weir run`'s peak resident memory while it decodes the hostile messages
/// below, with the default `decode:` limits (README, "Limits"): well under what a single
/// one of them took before (0.9 to 3.2 GB).
const PEAK_RSS_BOUND: u64 = 512 << 20;

fn framed(id: SchemaId, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    frame_into(id, body, &mut v);
    v
}

fn zigzag_varint(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

fn tick_body(price: f64, sym: &str) -> Vec<u8> {
    let mut body = price.to_le_bytes().to_vec();
    body.extend(zigzag_varint(sym.len() as i64));
    body.extend_from_slice(sym.as_bytes());
    body
}

/// A `Node` value nested `depth` times.
fn node_body(depth: usize) -> Vec<u8> {
    let mut body = vec![0x02; depth];
    body.push(0x00);
    body
}

/// An array of `outer` arrays, each claiming 4,000,000 nulls: 12 bytes for 2, 47 for 9.
fn null_bomb(outer: i64) -> Vec<u8> {
    let mut body = zigzag_varint(outer);
    for _ in 0..outer {
        body.extend(zigzag_varint(4_000_000));
        body.push(0x00);
    }
    body.push(0x00);
    body
}

async fn produce(brokers: &str, topic: &str, values: &[Vec<u8>]) {
    let producer: FutureProducer = weir::source::kafka::client_config(brokers)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    for v in values {
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(v),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

async fn set_compatibility(registry: &str, subject: &str, level: &str) {
    let r = reqwest::Client::new()
        .put(format!("{registry}/config/{subject}"))
        .json(&serde_json::json!({ "compatibility": level }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// A `weir run` process with its config, log and HTTP port.
struct WeirRun {
    child: Child,
    log: PathBuf,
    http: u16,
}

impl WeirRun {
    /// Starts `weir run` on `config` (YAML; `HTTP_PORT` in it is replaced by a free port)
    /// with extra shell setup (`ulimit -n 256`, say) before it.
    fn start(dir: &Path, config: &str, shell: &str) -> Self {
        let http = free_port();
        let path = dir.join(format!("weir-{http}.yaml"));
        std::fs::write(&path, config.replace("HTTP_PORT", &http.to_string())).unwrap();
        let log = dir.join(format!("run-{http}.log"));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{shell} exec \"$0\" run --config \"$1\" 2>\"$2\"",))
            .arg(weir_bin())
            .arg(&path)
            .arg(&log)
            .env("WEIR_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .spawn()
            .expect("start weir run");
        Self { child, log, http }
    }

    fn logs(&self) -> String {
        read_log(&self.log)
    }

    fn alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("weir run exited with {status}; log:\n{}", self.logs());
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.alive();
            if http_get(self.http, "/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The process's peak resident memory (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kb << 10
    }

    /// SIGTERM, then the exit status within `timeout` (killed and failing after it).
    fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "weir run did not exit {timeout:?} after SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WeirRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// An HTTP client for tests that are not async: each request on a runtime of its own.
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Self {
        let rt = rt();
        let client = {
            let _in = rt.enter();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap()
        };
        Self { rt, client }
    }

    fn get(&self, url: &str) -> (u16, serde_json::Value) {
        self.send(reqwest::Method::GET, url, "application/json", Vec::new())
    }

    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        self.send_with(method, url, content_type, body, None)
    }

    /// Status and body (JSON, or the text as a JSON string).
    fn send_with(
        &self,
        method: reqwest::Method,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.rt.block_on(async {
            let mut request = self
                .client
                .request(method, url)
                .header("Content-Type", content_type)
                .body(body);
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (status, body)
        })
    }
}

/// `GET path` on 127.0.0.1:`port` over a fresh connection: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// What a test runs `weir run` against: Postgres (a schema of its own), weir's registry
/// (on a port it keeps, so it can be stopped and the address stays the same), tansu, a
/// directory, and a consumer group.
struct Services {
    db: TestDb,
    registry: Option<Registry>,
    registry_url: String,
    broker: Broker,
    dir: tempfile::TempDir,
    group: String,
}

impl Services {
    /// Starts them, and runs `sql` (the tables) in the database.
    fn start(sql: &str) -> Self {
        let db = TestDb::new();
        run_sql(&db.url(), sql);
        let registry = Registry::start_on(&db.url(), free_port());
        Self {
            registry_url: registry.url.clone(),
            registry: Some(registry),
            db,
            broker: Broker::start(),
            dir: tempfile::tempdir().unwrap(),
            group: unique("group"),
        }
    }

    fn registry(&self) -> RegistryClient {
        RegistryClient::new(&self.registry_url).unwrap()
    }

    /// Creates `topic` with one partition.
    fn topic(&self, topic: &str) {
        rt().block_on(weir::source::kafka::ensure_topics(
            &self.broker.bootstrap,
            &[topic.to_string()],
            1,
        ))
        .unwrap();
    }

    /// Registers `schema` under `subject`.
    fn register(&self, subject: &str, schema: &str) -> SchemaId {
        rt().block_on(self.registry().register(subject, schema))
            .unwrap()
    }

    fn produce(&self, topic: &str, values: &[Vec<u8>]) {
        rt().block_on(produce(&self.broker.bootstrap, topic, values));
    }

    /// A config of one pipeline, `topic` → `guest` → `table`, with `extra` top-level keys.
    fn config(&self, topic: &str, guest: &Path, table: &str, extra: &str) -> String {
        format!(
            "kafka:\n  brokers: \"{}\"\n  group_id: \"{}\"\n\
             registry:\n  url: \"{}\"\n\
             database:\n  url: \"{}\"\n\
             http:\n  listen: \"127.0.0.1:HTTP_PORT\"\n\
             workers: 1\n{extra}\
             pipelines:\n  - name: hostile\n    topic: {topic}\n    guest: \"{}\"\n    batch: {{size: 20, linger: 50ms}}\n    config: {{table: {table}}}\n    tables: [{table}]\n",
            self.broker.bootstrap,
            self.group,
            self.registry_url,
            self.db.url(),
            guest.display()
        )
    }

    fn run(&self, config: &str, shell: &str) -> WeirRun {
        WeirRun::start(self.dir.path(), config, shell)
    }

    /// Messages the group has committed.
    fn committed(&self) -> i64 {
        weir_tests::committed_offsets(&self.db.url(), &self.group)
    }

    /// Waits until the group has committed `n` messages, failing with `run`'s log.
    fn wait_committed(&self, n: i64, run: &mut WeirRun) {
        let log = run.log.clone();
        wait_until(
            Duration::from_secs(120),
            Duration::from_millis(250),
            || {
                run.alive();
                self.committed() >= n
            },
            || {
                format!(
                    "{} of {n} messages committed; log:\n{}",
                    self.committed(),
                    read_log(&log)
                )
            },
        );
    }
}

const TICKS: &str = "CREATE TABLE ticks (price double precision NOT NULL, sym text NOT NULL)";

/// Dead letters as (stage, error), by offset.
fn dead_letters(db: &str) -> Vec<(i64, String, String)> {
    query(
        db,
        "SELECT \"offset\", stage, error FROM dead_letters ORDER BY \"offset\"",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn hostile_messages_become_dead_letters_and_everything_else_commits() {
    let services = Services::start(TICKS);
    let topic = "hostile";
    services.topic(topic);
    // Every schema the attacker needs is registered under the topic's subject (the
    // registry takes writes from anyone; NONE lets them all in), one under another.
    let subject = format!("{topic}-value");
    rt().block_on(set_compatibility(&services.registry_url, &subject, "NONE"));
    let tick = services.register(&subject, TICK);
    let node = services.register(&subject, NODE);
    let nulls = services.register(&subject, NULLS);
    let text = services.register(&subject, TEXT);
    let other = services.register("other-value", OTHER);
    let mut corrupt = 1.5f64.to_le_bytes().to_vec(); // a double, a 100 MB length, "abc"
    corrupt.extend(zigzag_varint(100_000_000));
    corrupt.extend_from_slice(b"abc");
    let mut long_claim = zigzag_varint(500_000_000); // 14 bytes claiming 500 MB
    long_claim.extend_from_slice(b"abcdefghi");
    // (value, the dead letter's stage and what its error says; None for a good tick)
    let hostile: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            framed(node, &node_body(400)),
            "decode",
            "values nest deeper than 64 levels (decode.max_depth)",
        ),
        (
            framed(node, &node_body(20_000)),
            "decode",
            "values nest deeper than 64 levels",
        ),
        (
            vec![0x00, 0x80, 0x00, 0x00, 0x00],
            "schema",
            "schema id 2147483648 not found",
        ),
        (
            framed(nulls, &null_bomb(2)),
            "decode",
            "more than 1000000 array and map items in one message (decode.max_items)",
        ),
        (
            framed(nulls, &null_bomb(9)),
            "decode",
            "more than 1000000 array and map items",
        ),
        (
            framed(text, &long_claim),
            "decode",
            "field `s`: a string claims 500000000 bytes, but only 9 remain in the body",
        ),
        (
            framed(tick, &corrupt),
            "decode",
            "field `sym`: a string claims 100000000 bytes, but only 3 remain in the body",
        ),
        (
            framed(other, &zigzag_varint(7)),
            "schema",
            "is registered under subject(s) other-value, not under hostile-value",
        ),
    ];
    assert_eq!(hostile[3].0.len() - 5, 12, "the 12-byte bomb");
    assert_eq!(hostile[4].0.len() - 5, 47, "the 47-byte bomb");
    assert_eq!(hostile[5].0.len() - 5, 14, "the 14-byte claim");
    // Good ticks between them: the partition must keep going past every one.
    let mut values = Vec::new();
    let mut expected = Vec::new();
    for round in 0..3 {
        for (i, (value, stage, error)) in hostile.iter().enumerate() {
            let sym = format!("S{round}-{i}");
            values.push(framed(tick, &tick_body(i as f64, &sym)));
            expected.push(None);
            values.push(value.clone());
            expected.push(Some((*stage, *error)));
        }
    }
    services.produce(topic, &values);

    let config = services.config(topic, &guest_path("passthrough"), "ticks", "");
    let mut run = services.run(&config, "");
    let total = values.len() as i64;
    services.wait_committed(total, &mut run);
    let rows: Vec<String> = query(&services.db.url(), "SELECT sym FROM ticks ORDER BY sym")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows.len(), expected.iter().filter(|e| e.is_none()).count());
    let dead = dead_letters(&services.db.url());
    let want: Vec<(i64, &str, &str)> = expected
        .iter()
        .enumerate()
        .filter_map(|(offset, e)| e.map(|(stage, error)| (offset as i64, stage, error)))
        .collect();
    assert_eq!(dead.len(), want.len(), "{dead:#?}");
    for ((offset, stage, error), (w_offset, w_stage, w_error)) in dead.iter().zip(&want) {
        assert_eq!((offset, stage.as_str()), (w_offset, *w_stage), "{error}");
        assert!(error.contains(w_error), "offset {offset}: {error}");
    }
    let peak = run.peak_rss();
    assert!(
        peak < PEAK_RSS_BOUND,
        "weir run's peak RSS was {} MiB while decoding the hostile messages",
        peak >> 20
    );
    run.alive();

    // `weir tail` decodes the same way: every message, the hostile ones as dead letters.
    let tail = Command::new(weir_bin())
        .args(["tail", topic, "--from-beginning", "--count"])
        .arg(total.to_string())
        .args(["--brokers", &services.broker.bootstrap])
        .args(["--registry", &services.registry_url])
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tail.stdout);
    assert!(
        tail.status.success(),
        "weir tail failed: {}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, total);
    for (line, e) in lines.iter().zip(&expected) {
        match e {
            None => assert!(line["fields"]["sym"].is_string(), "{line}"),
            Some((stage, error)) => {
                assert_eq!(line["dead_letter"]["stage"], *stage, "{line}");
                let text = line["dead_letter"]["error"].as_str().unwrap();
                assert!(text.contains(error), "{line}");
            }
        }
    }
}

#[test]
fn a_recursive_latest_schema_is_refused_at_start_with_columns_schema() {
    let services = Services::start("CREATE TABLE nodes (next text)");
    services.topic("nodes");
    services.register("nodes-value", NODE);
    let config = services
        .config("nodes", &guest_path("passthrough"), "nodes", "")
        .replace(
            "    tables: [nodes]\n",
            "    tables: [nodes]\n    columns: schema\n",
        );
    let mut run = services.run(&config, "");
    let status = run.child.wait().unwrap();
    let log = run.logs();
    assert_eq!(status.code(), Some(1), "a refusal, not a crash: {log}");
    assert!(
        log.contains("record Node contains itself (through field `next`)")
            && log.contains("use `columns: exist`"),
        "{log}"
    );
}

#[test]
fn a_registry_outage_pauses_shows_and_still_lets_sigterm_stop_everything() {
    let mut services = Services::start(TICKS);
    services.topic("outage");
    let v1 = services.register("outage-value", TICK);
    let v2 = services.register(
        "outage-value",
        &TICK.replace(
            r#"{"name":"sym","type":"string"}]"#,
            r#"{"name":"sym","type":"string"},{"name":"note","type":"string","default":""}]"#,
        ),
    );
    services.produce("outage", &[framed(v1, &tick_body(1.0, "A"))]);
    let config = services.config("outage", &guest_path("passthrough"), "ticks", "");
    let mut run = services.run(&config, "");
    run.wait_ready();
    services.wait_committed(1, &mut run);
    // The registry goes away; a message with a schema weir has not seen arrives.
    services.registry = None;
    let mut body = tick_body(2.0, "B");
    body.push(0x00); // note: ""
    services.produce("outage", &[framed(v2, &body)]);
    let log = run.log.clone();
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            http_get(run.http, "/readyz").is_some_and(|(s, b)| {
                s == 503 && b.contains("partition outage[0] is waiting for the schema registry")
            })
        },
        || format!("/readyz did not show the wait; log:\n{}", read_log(&log)),
    );
    let (_, metrics) = http_get(run.http, "/metrics").unwrap();
    assert!(
        metrics.contains("weir_partition_waiting_for_registry{topic=\"outage\",partition=\"0\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        services.committed(),
        1,
        "nothing committed or dead-lettered while the registry is down"
    );
    // `weir tail` waits too, and a signal stops it.
    let mut tail = Command::new(weir_bin())
        .args(["tail", "outage", "--from-beginning"])
        .args(["--brokers", &services.broker.bootstrap])
        .args(["--registry", &services.registry_url])
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-TERM", &tail.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tail.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "weir tail ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And `weir run` exits on SIGTERM though a batch waits for the registry.
    let status = run.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}; log:\n{}", run.logs());
    assert_eq!(services.committed(), 1);
}

#[test]
fn listeners_cap_connections_and_close_slow_and_idle_ones() {
    let services = Services::start(TICKS);
    services.topic("flood");
    let tick = services.register("flood-value", TICK);
    let config = services
        .config("flood", &guest_path("passthrough"), "ticks", "")
        .replace(
            "  listen: \"127.0.0.1:HTTP_PORT\"\n",
            "  listen: \"127.0.0.1:HTTP_PORT\"\n  max_connections: 32\n  header_timeout: 2s\n",
        );
    // Few file descriptors: idle connections would take the ones Kafka and Postgres need.
    let mut run = services.run(&config, "ulimit -n 256;");
    run.wait_ready();
    // 450 connections that never send a request.
    let idle: Vec<TcpStream> = (0..450)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", run.http)).ok())
        .collect();
    assert!(idle.len() > 32);
    // Meanwhile the pipeline goes on.
    let values: Vec<Vec<u8>> = (0..50)
        .map(|i| framed(tick, &tick_body(i as f64, &format!("F{i}"))))
        .collect();
    services.produce("flood", &values);
    services.wait_committed(50, &mut run);
    // Every idle connection is closed by the server: those over the cap at once, the
    // others after the header timeout.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection was left open: {other:?}"),
        }
    }
    assert_eq!(
        http_get(run.http, "/healthz").map(|(s, _)| s),
        Some(200),
        "the probe answers once the idle connections are gone"
    );
    assert!(run.logs().contains("Connection limit reached"));

    // The registry: connections sending half a header are closed after its timeout, and
    // real requests are answered.
    let port = free_port();
    let mut server = Command::new(weir_bin())
        .args([
            "registry",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--database-url",
            &services.db.url(),
            "--header-timeout",
            "2s",
        ])
        .args(["--max-connections", "64"])
        .env("WEIR_LOG", "warn")
        .spawn()
        .unwrap();
    wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
    let slow: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            let _ = s.write_all(b"GET /subjects HTTP/1.1\r\nHost: x\r\n");
            Some(s)
        })
        .collect();
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {}
            // hyper answers a header read timeout with 408 before it closes.
            Ok(n) => assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a half-header connection was left open: {e}"),
        }
    }
    assert_eq!(http_get(port, "/subjects").map(|(s, _)| s), Some(200));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn the_registry_refuses_huge_tangled_and_ambiguous_schemas_and_keeps_answering() {
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let http = Http::new();
    let post = |path: &str, body: String| {
        http.send(
            reqwest::Method::POST,
            &format!("{}{path}", registry.url),
            "application/vnd.schemaregistry.v1+json",
            body.into_bytes(),
        )
    };
    let schema_body = |schema: &str| serde_json::json!({ "schema": schema }).to_string();
    // 20,000 fixed types in reversed order (about 1 MB): refused without the check.
    let wide: Vec<String> = (0..20_000)
        .rev()
        .map(|i| format!(r#"{{"type":"fixed","name":"F{i}","size":1}}"#))
        .collect();
    let wide = format!("[{}]", wide.join(","));
    assert!(wide.len() > 700_000);
    let (status, body) = post("/subjects/wide-value/versions", schema_body(r#""string""#));
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        "/compatibility/subjects/wide-value/versions/latest",
        schema_body(&wide),
    );
    assert_eq!(
        (status, &body["error_code"]),
        (422, &serde_json::json!(42201))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("a union has 20000 branches; this registry takes at most 1000"),
        "{body}"
    );
    // Two of them at once, and a plain read is answered meanwhile.
    let wide8k: Vec<String> = (0..8_000)
        .rev()
        .map(|i| format!(r#"{{"type":"fixed","name":"F{i}","size":1}}"#))
        .collect();
    let wide8k = schema_body(&format!("[{}]", wide8k.join(",")));
    std::thread::scope(|s| {
        let checks: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    post(
                        "/compatibility/subjects/wide-value/versions/latest",
                        wide8k.clone(),
                    )
                    .0
                })
            })
            .collect();
        let (status, _) = http.get(&format!("{}/subjects", registry.url));
        assert_eq!(status, 200);
        for c in checks {
            assert_eq!(c.join().unwrap(), 422);
        }
    });
    // Records tangled through unions of each other, under the branch limit: the check
    // stops at its bound instead of running for as long as the schema makes it.
    let records: Vec<String> = (0..40)
        .map(|i| {
            let names: Vec<String> = (0..=i).map(|j| format!("\"R{j}\"")).collect();
            format!(
                r#"{{"type":"record","name":"R{i}","fields":[{{"name":"u","type":["null",{}]}}]}}"#,
                names.join(",")
            )
        })
        .collect();
    let tangled = format!(
        r#"{{"type":"record","name":"Top","fields":[{{"name":"all","type":[{}]}}]}}"#,
        records.join(",")
    );
    let (status, body) = post("/subjects/tangle-value/versions", schema_body(&tangled));
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        "/compatibility/subjects/tangle-value/versions/latest",
        schema_body(&tangled),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("too complex to check"),
        "{body}"
    );
    // A schema that says "type" twice would be filed as whichever one Avro's parser kept.
    let (status, body) = post(
        "/subjects/dup-value/versions",
        schema_body(r#"{"type":"record","name":"R","fields":[],"type":"string"}"#),
    );
    assert_eq!(
        (status, &body["error_code"]),
        (422, &serde_json::json!(42201))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(r#"the key "type" appears twice"#),
        "{body}"
    );
    // Invalid UTF-8 anywhere in the body, ignored fields included.
    let mut raw = br#"{"schema": "\"string\"", "metadata": {"properties": {"a": ""#.to_vec();
    raw.extend_from_slice(&[0xff, 0xfe]);
    raw.extend_from_slice(br#""}}}"#);
    let (status, body) = http.send(
        reqwest::Method::POST,
        &format!("{}/subjects/utf-value/versions", registry.url),
        "application/json",
        raw,
    );
    assert_eq!(status, 422);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not valid UTF-8"),
        "{body}"
    );
    // Ids past the int range are unknown ids, with Confluent's code.
    for id in ["2147483648", "99999999999999999999", "-1"] {
        let (status, body) = http.get(&format!("{}/schemas/ids/{id}", registry.url));
        assert_eq!(status, 404);
        assert_eq!(body["error_code"], 40403, "{id}: {body}");
    }
}

/// A component whose one core module has `functions` functions, the first with `body`
/// (its instructions, `end` included), lifted as a component function exported as
/// `export`, importing an empty interface under each of `imports`.
fn component(body: &[u8], functions: u32, export: &str, imports: &[String]) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ComponentBuilder, ComponentExportKind, ComponentTypeRef, ExportKind,
        ExportSection, Function, FunctionSection, InstanceType, Module, TypeSection,
    };
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    module.section(&types);
    let mut funcs = FunctionSection::new();
    for _ in 0..functions {
        funcs.function(0);
    }
    module.section(&funcs);
    let mut exports = ExportSection::new();
    exports.export("f", ExportKind::Func, 0);
    module.section(&exports);
    let mut code = CodeSection::new();
    for i in 0..functions {
        let mut f = Function::new([]);
        f.raw(if i == 0 { body.to_vec() } else { vec![0x0b] });
        code.function(&f);
    }
    module.section(&code);

    let mut c = ComponentBuilder::default();
    for name in imports {
        let ty = c.type_instance(None, &InstanceType::new());
        c.import(name.as_str(), ComponentTypeRef::Instance(ty));
    }
    let m = c.core_module(None, &module);
    let instance = c.core_instantiate(None, m, []);
    let core_f = c.core_alias_export(None, instance, "f", ExportKind::Func);
    let (ty, mut encoder) = c.type_function(None);
    encoder
        .params(std::iter::empty::<(&str, wasm_encoder::ComponentValType)>())
        .result(None);
    let f = c.lift_func(None, core_f, ty, []);
    c.export(export, ComponentExportKind::Func, f, None);
    c.finish()
}

/// A function body of `n` nested blocks: cheap to send, costly to compile.
fn nested_blocks(n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(3 * n + 1);
    for _ in 0..n {
        body.extend_from_slice(&[0x02, 0x40]);
    }
    body.extend(std::iter::repeat_n(0x0b, n + 1));
    body
}

#[test]
fn admin_deploys_check_the_world_before_compiling_one_at_a_time_under_a_budget() {
    let services = Services::start("CREATE TABLE fixture (n bigint)");
    services.topic("deploys");
    let dir = services.dir.path();
    let guests = dir.join("guests");
    std::fs::create_dir(&guests).unwrap();
    std::fs::copy(guest_path("passthrough"), guests.join("g.wasm")).unwrap();
    std::fs::write(dir.join("token"), "secret").unwrap();
    let admin = free_port();
    let config = services.config(
        "deploys",
        &guests.join("g.wasm"),
        "fixture",
        &format!(
            "runtime:\n  compile_memory: 256MiB\n\
             admin:\n  listen: \"127.0.0.1:{admin}\"\n  token_file: \"{}\"\n",
            dir.join("token").display()
        ),
    );
    let mut run = services.run(&config, "");
    wait_for_port(&format!("127.0.0.1:{admin}"), Duration::from_secs(60));
    let http = Http::new();
    let deploy = |module: Vec<u8>| {
        let (status, body) = http.send_with(
            reqwest::Method::PUT,
            &format!("http://127.0.0.1:{admin}/guests/g"),
            "application/wasm",
            module,
            Some("secret"),
        );
        (status, body.to_string())
    };
    let before = run.peak_rss();

    // 2.5 million nested blocks (7.5 MB) and 200,000 functions, in components that do
    // not export `process`: refused from their sections, before any compiling.
    let blocks = component(&nested_blocks(2_500_000), 1, "run", &[]);
    assert!(blocks.len() > 7_000_000);
    let (status, body) = deploy(blocks);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("does not fit the weir:processor@0.1.0 or weir:processor@0.2.0 world"),
        "{body}"
    );
    let (status, body) = deploy(component(&[0x0b], 200_000, "run", &[]));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("it exports `run`, not `process"), "{body}");
    assert!(
        run.peak_rss() < before + (64 << 20),
        "refusing the modules took {} MiB",
        (run.peak_rss() - before) >> 20
    );

    // 600 imports with names of 99 KB (59 MB): the refusal lists ten, cut short.
    let names: Vec<String> = (0..600)
        .map(|i| format!("x:y/{}{i}", "z".repeat(99_000)))
        .collect();
    let module = component(&[0x0b], 1, "process", &names);
    assert!(module.len() > 59_000_000);
    let (status, body) = deploy(module);
    assert_eq!(status, 422);
    assert!(body.len() < 8192, "a {} byte refusal", body.len());
    assert!(body.contains("and 590 more"), "{body}");
    assert!(
        run.logs().lines().all(|l| l.len() < 16384),
        "a log line of more than 16 KiB"
    );

    // Modules that fit the world by their sections but take more than the compile budget
    // to compile, three at once: each refused, and only one compiles at a time.
    let costly = component(&nested_blocks(2_500_000), 1, "process", &[]);
    let before = run.peak_rss();
    let done = std::sync::atomic::AtomicBool::new(false);
    let parent = run.child.id().to_string();
    let most_at_once = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // This weir run's compiling children (other tests run weir run too).
                let children = Command::new("pgrep")
                    .args(["-P", &parent, "-f", "compile-isolated"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
                    .unwrap_or(0);
                most = most.max(children);
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        let puts: Vec<_> = (0..3).map(|_| s.spawn(|| deploy(costly.clone()))).collect();
        for p in puts {
            let (status, body) = p.join().unwrap();
            assert_eq!(status, 422, "{body}");
            assert!(
                body.contains("compiling needs more memory than the budget of 256MiB"),
                "{body}"
            );
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert_eq!(most_at_once, 1, "compilations at once");
    assert!(
        run.peak_rss() < before + (64 << 20),
        "weir run's own memory grew by {} MiB",
        (run.peak_rss() - before) >> 20
    );
    // The running version stayed, and a good one still deploys.
    let (status, body) = deploy(std::fs::read(guest_path("passthrough")).unwrap());
    assert_eq!(status, 200, "{body}");
    run.alive();
}

#[test]
fn guest_output_is_escaped_cut_and_counted() {
    let services = Services::start("CREATE TABLE fixture (size bigint)");
    services.topic("loud");
    const SIZED: &str =
        r#"{"type":"record","name":"Sized","fields":[{"name":"size","type":"long"}]}"#;
    let id = services.register("loud-value", SIZED);
    let values: Vec<Vec<u8>> = (0..3)
        .map(|_| framed(id, &zigzag_varint(20 << 20)))
        .collect();
    services.produce("loud", &values);
    let config = services
        .config("loud", &guest_path("fixture_loud"), "fixture", "")
        .replace(
            "    batch: {size: 20, linger: 50ms}\n",
            "    batch: {size: 1, linger: 50ms}\n    limits: {max_memory: 512MiB}\n",
        );
    let mut run = services.run(&config, "");
    services.wait_committed(3, &mut run);
    assert_eq!(
        query(&services.db.url(), "SELECT count(*) FROM fixture")[0].get::<_, i64>(0),
        3
    );
    let log = std::fs::read(&run.log).unwrap();
    assert!(
        !log.contains(&0x1b),
        "a raw terminal escape reached the log"
    );
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-01T00:00:00Z ERROR weir: forged")),
        "a guest forged a log line"
    );
    assert!(log.contains("ok\\n2026-12-01T00:00:00Z ERROR weir: forged host line\\u{1b}[2J"));
    assert!(
        log.lines().all(|l| l.len() < 16384),
        "a log line of {} bytes",
        log.lines().map(str::len).max().unwrap_or(0)
    );
    assert!(log.contains("dropped the rest of its log records"), "{log}");
    let (status, metrics) = http_get(run.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.len() < 1 << 20, "a {} byte /metrics", metrics.len());
    assert!(
        metrics.contains("weir_guest_output_dropped_total{guest=\"fixture_loud\",kind=\"log\"}"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("weir_guest_output_dropped_total{guest=\"fixture_loud\",kind=\"metric\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_guest_loud_messages_total{guest=\"fixture_loud\"} 3"),
        "{metrics}"
    );
}

/// One request of the property test: a method, a route of the registry's with random
/// parts (subjects, ids, versions), a content type and a body that may be JSON or not.
#[derive(Debug, Clone)]
struct RandomRequest {
    method: reqwest::Method,
    segments: Vec<String>,
    query: String,
    content_type: &'static str,
    body: Vec<u8>,
}

fn random_request() -> impl proptest::strategy::Strategy<Value = RandomRequest> {
    use proptest::prelude::*;
    let text = prop_oneof![
        "[a-z.-]{0,12}",
        "\\PC{0,8}",
        Just("\u{0}".to_string()),
        Just("latest".to_string()),
        Just("-1".to_string()),
        Just("2147483648".to_string()),
        Just("99999999999999999999999".to_string()),
        (0u32..5).prop_map(|n| n.to_string()),
    ];
    let route = prop_oneof![
        text.clone().prop_map(|s| vec!["subjects".into(), s]),
        text.clone()
            .prop_map(|s| vec!["subjects".into(), s, "versions".into()]),
        (text.clone(), text.clone()).prop_map(|(s, v)| vec![
            "subjects".into(),
            s,
            "versions".into(),
            v
        ]),
        (text.clone(), text.clone()).prop_map(|(s, v)| vec![
            "subjects".into(),
            s,
            "versions".into(),
            v,
            "schema".into()
        ]),
        text.clone()
            .prop_map(|i| vec!["schemas".into(), "ids".into(), i]),
        text.clone()
            .prop_map(|i| vec!["schemas".into(), "ids".into(), i, "versions".into()]),
        (text.clone(), text.clone()).prop_map(|(s, v)| vec![
            "compatibility".into(),
            "subjects".into(),
            s,
            "versions".into(),
            v
        ]),
        text.clone().prop_map(|s| vec!["config".into(), s]),
        text.clone().prop_map(|s| vec!["mode".into(), s]),
        Just(vec!["subjects".to_string()]),
        Just(vec!["schemas".to_string()]),
    ];
    let schema = prop_oneof![
        Just(TICK.to_string()),
        Just(NODE.to_string()),
        Just(r#""string""#.to_string()),
        Just(r#"{"type":"record","name":"R","fields":[],"type":"string"}"#.to_string()),
        "\\PC{0,40}",
    ];
    let body = prop_oneof![
        schema
            .clone()
            .prop_map(|s| serde_json::json!({"schema": s}).to_string().into_bytes()),
        (schema, "[A-Z]{0,8}").prop_map(|(s, t)| {
            serde_json::json!({"schema": s, "schemaType": t, "references": []})
                .to_string()
                .into_bytes()
        }),
        "(NONE|BACKWARD|FULL_TRANSITIVE|READONLY|READWRITE|x)".prop_map(|l| {
            serde_json::json!({"compatibility": l, "mode": l})
                .to_string()
                .into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..64),
        Just(Vec::new()),
    ];
    (
        prop_oneof![
            Just(reqwest::Method::GET),
            Just(reqwest::Method::POST),
            Just(reqwest::Method::PUT),
            Just(reqwest::Method::DELETE),
        ],
        route,
        prop_oneof![
            Just(""),
            Just("permanent=true"),
            Just("deleted=true&verbose=true"),
            Just("%ff=%00")
        ],
        prop_oneof![
            Just("application/vnd.schemaregistry.v1+json"),
            Just("application/json"),
            Just("text/plain"),
        ],
        body,
    )
        .prop_map(
            |(method, segments, query, content_type, body)| RandomRequest {
                method,
                segments,
                query: query.to_string(),
                content_type,
                body,
            },
        )
}

#[test]
fn random_requests_get_an_answer_with_confluent_codes_and_never_break_the_registry() {
    use proptest::test_runner::{Config, TestRunner};
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let http = Http::new();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&random_request(), |r| {
            let mut url = reqwest::Url::parse(&registry.url).unwrap();
            url.path_segments_mut().unwrap().extend(&r.segments);
            if !r.query.is_empty() {
                url.set_query(Some(&r.query));
            }
            let (status, body) = http.send(
                r.method.clone(),
                url.as_str(),
                r.content_type,
                r.body.clone(),
            );
            // Every answer is the API's: success, or a client error with a Confluent body.
            // A 5xx would be the registry failing on its input.
            proptest::prop_assert!(status < 500, "{status} {body} for {} {url}", r.method);
            if status >= 400 {
                proptest::prop_assert!(
                    body["error_code"].as_u64().is_some() && body["message"].is_string(),
                    "{status} {body} for {} {url}",
                    r.method
                );
            }
            Ok(())
        })
        .unwrap();
    // Still serving.
    assert_eq!(http.get(&format!("{}/subjects", registry.url)).0, 200);
}
