//! Hot swap: new guest versions from the watched directory (plain files and the
//! Kubernetes ConfigMap `..data` symlink swap) and from the admin API, refusals that leave
//! the running version in place, and a run under continuous load swapped 20 times with
//! every message written exactly once by exactly the version its batch ran with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::admin::{AdminState, ErrorReply, GuestList, SwapReply, TokenSource};
use weir::runtime::{
    GuestId, GuestLimits, GuestSet, HostEvents, Level, Runtime, RuntimeConfig, Swapped,
    watch::Watcher,
};
use weir_tests::{
    Broker, Registry, TestDb, free_port, guest_path, query, rt, sha, variant, weir, weir_bin,
};

fn bytes(guest: &str) -> Vec<u8> {
    std::fs::read(guest_path(guest)).unwrap()
}

/// Swaps and refusals as the runtime reports them.
#[derive(Default)]
struct Recorder {
    swaps: Mutex<Vec<(Swapped, String)>>,
    refusals: Mutex<Vec<(String, String, String)>>,
}

impl HostEvents for Recorder {
    fn log(&self, _: &GuestId, _: Level, _: &str, _: &[(String, String)]) {}
    fn counter_add(&self, _: &GuestId, _: &str, _: u64, _: &[(String, String)]) {}
    fn guest_swapped(&self, swapped: &Swapped, origin: &str) {
        self.swaps
            .lock()
            .unwrap()
            .push((swapped.clone(), origin.into()));
    }
    fn guest_refused(&self, name: &str, origin: &str, reason: &str) {
        self.refusals
            .lock()
            .unwrap()
            .push((name.into(), origin.into(), reason.into()));
    }
}

impl Recorder {
    fn refusals(&self) -> usize {
        self.refusals.lock().unwrap().len()
    }
}

/// A guest set over `files` (pipeline name, file), reporting to a [`Recorder`].
fn guest_set(files: &[(&str, &Path)]) -> (Arc<GuestSet>, Arc<Recorder>) {
    let events = Arc::new(Recorder::default());
    let runtime = Arc::new(Runtime::new(RuntimeConfig::default(), events.clone()).unwrap());
    let mut set = GuestSet::new(runtime);
    for (pipeline, file) in files {
        set.add(
            pipeline,
            &[format!("topic.{pipeline}")],
            file,
            GuestLimits::default(),
            Vec::new(),
        )
        .unwrap();
    }
    (Arc::new(set), events)
}

/// A directory laid out as the kubelet lays out a mounted ConfigMap: the files live in a
/// timestamped directory, `..data` links to it, and each `name` links to `..data/name`.
/// An update writes a new timestamped directory and renames a new link over `..data`.
struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    fn new(dir: &Path, files: &[(&str, &[u8])]) -> Self {
        let mut c = Self {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        c.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        c
    }

    /// Publishes a new generation holding `files` with an atomic `..data` swap, and
    /// removes the old one, as the kubelet does.
    fn update(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let old = self
            .dir
            .join(format!("..2026_11_21_gen{}", self.generation - 1));
        let name = format!("..2026_11_21_gen{}", self.generation);
        let new = self.dir.join(&name);
        std::fs::create_dir(&new).unwrap();
        for (file, contents) in files {
            std::fs::write(new.join(file), contents).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if old.exists() {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// Waits until `done`, failing with `what` after a while.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn watched_directory_swaps_in_new_versions_and_refuses_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (bytes("fixture_marker_a"), bytes("fixture_marker_b"));
    let mounted = tmp.path().join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    let mut configmap = ConfigMapDir::new(&mounted, &[("marker.wasm", &a)]);
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("other.wasm"), &a).unwrap();

    let (set, events) = guest_set(&[
        ("cm", &mounted.join("marker.wasm")),
        ("cm2", &mounted.join("marker.wasm")),
        ("plain", &plain.join("other.wasm")),
    ]);
    let _watcher = Watcher::start(set.clone(), set.clone(), Duration::from_secs(1)).unwrap();
    let version = |name: &str| set.version(name).unwrap();
    assert_eq!(version("marker"), sha(&a));

    // The ConfigMap pattern: a new generation behind `..data`.
    configmap.update(&[("marker.wasm", &b)]);
    let took = wait_until("the ..data swap is picked up", || {
        version("marker") == sha(&b)
    });
    eprintln!("..data swap picked up after {took:?}");
    // Both pipelines using the guest moved together, and the swap was reported once
    // with the old and new version and where it came from.
    for p in ["cm", "cm2"] {
        assert_eq!(set.slot(p).unwrap().current().id().version, sha(&b));
    }
    {
        let swaps = events.swaps.lock().unwrap();
        assert_eq!(swaps.len(), 1, "{swaps:?}");
        let (s, origin) = &swaps[0];
        assert_eq!(
            (s.old_version.as_str(), s.new_version.as_str()),
            (sha(&a).as_str(), sha(&b).as_str())
        );
        assert!(origin.contains("marker.wasm"), "{origin}");
    }

    // Modules that do not load are refused with a reason; the running version stays.
    let refusals: [(&[u8], &str); 3] = [
        (b"\0asm garbage, not a component", "not a WebAssembly file"),
        (&bytes("fixture_wrong_world"), "does not fit"),
        (&bytes("fixture_wasi_clock"), "does not grant"),
    ];
    for (module, reason) in refusals {
        let before = events.refusals();
        configmap.update(&[("marker.wasm", module)]);
        wait_until("the bad module is refused", || events.refusals() > before);
        let (name, origin, why) = events.refusals.lock().unwrap().last().cloned().unwrap();
        assert_eq!(name, "marker");
        assert!(origin.contains("marker.wasm"), "{origin}");
        assert!(why.contains(reason), "{why:?} should say {reason:?}");
        assert_eq!(version("marker"), sha(&b), "the running version stays");
    }

    // A file that disappears leaves the running version; when it is back it is loaded.
    std::fs::remove_file(mounted.join("..data")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(version("marker"), sha(&b));
    configmap.update(&[("marker.wasm", &a)]);
    wait_until("the restored file is picked up", || {
        version("marker") == sha(&a)
    });

    // A plain directory: a file renamed over the old one, then one rewritten in place.
    std::fs::write(plain.join(".other.wasm.tmp"), &b).unwrap();
    std::fs::rename(plain.join(".other.wasm.tmp"), plain.join("other.wasm")).unwrap();
    wait_until("the renamed file is picked up", || {
        version("other") == sha(&b)
    });
    std::fs::write(plain.join("other.wasm"), &a).unwrap();
    wait_until("the rewritten file is picked up", || {
        version("other") == sha(&a)
    });
    assert_eq!(version("marker"), sha(&a), "other guests are left alone");
    assert_eq!(
        events.refusals(),
        3,
        "no spurious refusals (half-written files)"
    );
}

#[test]
fn admin_api_deploys_lists_rolls_back_and_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (bytes("fixture_marker_a"), bytes("fixture_marker_b"));
    std::fs::write(tmp.path().join("marker.wasm"), &a).unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (set, _events) = guest_set(&[
        ("stocks", &tmp.path().join("marker.wasm")),
        ("crypto", &tmp.path().join("marker.wasm")),
    ]);
    let runtime = rt();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(weir::admin::serve(
        listener,
        AdminState {
            guests: set.clone(),
            deployer: set.clone(),
            token: TokenSource::File(token_file.clone()),
            max_body: 1 << 20,
        },
        weir::config::HttpConfig::default().limits(),
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Vec<u8>| {
        let mut request = http.request(method, format!("{base}{path}")).body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            // (www-authenticate, connection)
            let headers = (header("www-authenticate"), header("connection"));
            (status, response.bytes().await.unwrap().to_vec(), headers)
        })
    };
    use reqwest::Method;
    let token = Some("s3cret-token");
    let message = |body: &[u8]| serde_json::from_slice::<ErrorReply>(body).unwrap().message;

    // No token, a wrong one: 401, and nothing changes.
    let (status, _, (www, _)) = call(Method::GET, "/guests", None, vec![]);
    assert_eq!(status, 401);
    assert_eq!(www.as_deref(), Some("Bearer realm=\"weir-admin\""));
    for bad in [Some("wrong"), Some(""), Some("s3cret-token-and-more")] {
        let (status, _, (_, connection)) = call(Method::PUT, "/guests/marker", bad, b.clone());
        assert_eq!(status, 401, "token {bad:?}");
        // The body was not read: the connection is not reused.
        assert_eq!(connection.as_deref(), Some("close"));
        let (status, _, _) = call(Method::POST, "/guests/marker/rollback", bad, vec![]);
        assert_eq!(status, 401);
    }
    assert_eq!(set.version("marker").unwrap(), sha(&a));

    // Refused modules: 422 with the reason; the running version stays.
    for (module, reason) in [
        (b"garbage".to_vec(), "not a WebAssembly file"),
        (bytes("fixture_wrong_world"), "does not fit"),
        (bytes("fixture_wasi_clock"), "does not grant"),
    ] {
        let (status, body, _) = call(Method::PUT, "/guests/marker", token, module);
        assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
        assert!(message(&body).contains(reason), "{}", message(&body));
        assert_eq!(set.version("marker").unwrap(), sha(&a));
    }
    // Too large: 413 (the limit is 1 MiB here); empty: 400; unknown guest: 404; nothing
    // to roll back to yet: 409.
    let (status, body, (_, connection)) =
        call(Method::PUT, "/guests/marker", token, vec![0; 2 << 20]);
    assert_eq!(status, 413);
    assert_eq!(connection.as_deref(), Some("close"));
    assert!(
        message(&body).contains("admin.max_body"),
        "{}",
        message(&body)
    );
    assert_eq!(call(Method::PUT, "/guests/marker", token, vec![]).0, 400);
    let (status, body, _) = call(Method::PUT, "/guests/nope", token, b.clone());
    assert_eq!(status, 404);
    assert!(message(&body).contains("nope"));
    assert_eq!(
        call(Method::POST, "/guests/marker/rollback", token, vec![]).0,
        409
    );
    assert_eq!(set.version("marker").unwrap(), sha(&a));

    // A good module is swapped into both pipelines.
    let (status, body, _) = call(Method::PUT, "/guests/marker", token, b.clone());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: SwapReply = serde_json::from_slice(&body).unwrap();
    assert!(reply.changed);
    assert_eq!((reply.old_version, reply.version), (sha(&a), sha(&b)));
    for p in ["stocks", "crypto"] {
        assert_eq!(set.slot(p).unwrap().current().id().version, sha(&b));
    }
    let (status, body, _) = call(Method::PUT, "/guests/marker", token, b.clone());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let reply: SwapReply = serde_json::from_slice(&body).unwrap();
    assert!(!reply.changed, "the same version again changes nothing");

    let (status, body, _) = call(Method::GET, "/guests", token, vec![]);
    assert_eq!(status, 200);
    let list: GuestList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.guests.len(), 1);
    let g = &list.guests[0];
    assert_eq!(
        (&g.name, &g.version, g.previous_version.as_deref(), g.swaps),
        (&"marker".to_string(), &sha(&b), Some(sha(&a).as_str()), 1)
    );
    let topics: Vec<(&str, &str, &str)> = list
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.pipeline.as_str(), t.guest.as_str()))
        .collect();
    assert_eq!(
        topics,
        [
            ("topic.crypto", "crypto", "marker"),
            ("topic.stocks", "stocks", "marker")
        ]
    );

    // Rollback returns to the previous version.
    let (status, body, _) = call(Method::POST, "/guests/marker/rollback", token, vec![]);
    assert_eq!(status, 200);
    let reply: SwapReply = serde_json::from_slice(&body).unwrap();
    assert_eq!((reply.old_version, reply.version), (sha(&b), sha(&a)));
    assert_eq!(set.version("marker").unwrap(), sha(&a));

    // The token file is read per request: a rotated token replaces the old one.
    std::fs::write(&token_file, "rotated").unwrap();
    assert_eq!(call(Method::GET, "/guests", token, vec![]).0, 401);
    assert_eq!(call(Method::GET, "/guests", Some("rotated"), vec![]).0, 200);
}

fn count(url: &str, sql: &str) -> i64 {
    query(url, sql)[0].get(0)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The schemas pushed, `topic` made with three partitions, and the marker fixtures' table.
fn prepare_marked(db: &TestDb, registry: &Registry, broker: &Broker, topic: &str) {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let out = weir(&[
        "schemas",
        "push",
        "--registry",
        &registry.url,
        schemas.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    rt().block_on(weir::source::kafka::ensure_topics(
        &broker.bootstrap,
        &[topic.to_string()],
        3,
    ))
    .unwrap();
    weir_tests::run_sql(
        &db.url(),
        "CREATE TABLE marked (kafka_partition int NOT NULL, kafka_offset bigint NOT NULL,
            marker text NOT NULL, batch_first bigint NOT NULL, batch_len int NOT NULL,
            guest_version text NOT NULL)",
    );
}

/// What `weir ingest simulate` had delivered (acknowledged) when it stopped, from its log.
fn delivered(log: &Path) -> i64 {
    let said = std::fs::read_to_string(log).unwrap();
    let total: i64 = said
        .lines()
        .rev()
        .find(|l| l.ends_with("all delivered"))
        .and_then(|l| l.strip_prefix("ingest: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no final count from the producer: {said}"));
    assert!(total > 1000, "only {total} messages produced");
    total
}

/// Exactly once: every one of `total` messages one row of `marked`, none dead-lettered.
fn assert_marked_exactly_once(url: &str, total: i64) {
    let per_partition: Vec<(i32, i64, i64, i64)> = query(
        url,
        "SELECT kafka_partition, count(*), count(DISTINCT kafka_offset), max(kafka_offset)
           FROM marked GROUP BY 1 ORDER BY 1",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect();
    for (partition, rows, distinct, max) in &per_partition {
        assert_eq!(
            rows, distinct,
            "partition {partition}: a message written twice ({per_partition:?})"
        );
        assert_eq!(
            max + 1,
            *rows,
            "partition {partition}: offsets missing ({per_partition:?})"
        );
    }
    assert_eq!(count(url, "SELECT count(*) FROM marked"), total);
    assert_eq!(count(url, "SELECT count(*) FROM dead_letters"), 0);
}

struct Killed(Child);

/// `weir ingest simulate` of `stocks` only, at `rate` ticks/s from `seed`, its log at `log`.
fn simulate(
    broker: &Broker,
    registry: &Registry,
    rate: &str,
    seed: &str,
    stocks: &str,
    log: &Path,
) -> Killed {
    Killed(
        Command::new(weir_bin())
            .args(["ingest", "simulate", "--brokers", &broker.bootstrap])
            .args(["--registry", &registry.url, "--rate", rate, "--seed", seed])
            .args(["--stocks", stocks])
            .args(["--crypto", "none", "--currency", "none"])
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn twenty_swaps_under_load_lose_duplicate_and_mix_nothing() {
    const TOPIC: &str = "tickers.stocks";
    let db = TestDb::new();
    let registry = Registry::start(&db.url());
    let broker = Broker::start();
    prepare_marked(&db, &registry, &broker, TOPIC);

    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (bytes("fixture_marker_a"), bytes("fixture_marker_b"));
    let (a_file, b_file) = (
        guest_path("fixture_marker_a"),
        guest_path("fixture_marker_b"),
    );
    let guests = tmp.path().join("guests");
    std::fs::create_dir(&guests).unwrap();
    let mut configmap = ConfigMapDir::new(&guests, &[("marker.wasm", &a)]);
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, "load-test-token").unwrap();
    let (http_port, admin_port) = (free_port(), free_port());
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let config = tmp.path().join("weir.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: \"{}\"\n  group_id: swaps\n\
             registry:\n  url: \"{}\"\n\
             database:\n  url: \"{}\"\n\
             http:\n  listen: \"127.0.0.1:{http_port}\"\n\
             admin:\n  listen: \"127.0.0.1:{admin_port}\"\n  token_file: admin-token\n\
             guests:\n  dir: guests\n\
             pipelines:\n  - name: stocks\n    topic: {TOPIC}\n    guest: marker.wasm\n    batch: {{size: 200, linger: 20ms}}\n    tables: [marked]\n    version_column: guest_version\n",
            broker.bootstrap,
            registry.url,
            db.url()
        ),
    )
    .unwrap();
    let run_log = tmp.path().join("run.log");
    let _run = Killed(
        Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("WEIR_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&run_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let simulate_log = tmp.path().join("simulate.log");
    let mut simulate = simulate(
        &broker,
        &registry,
        "1500",
        "5",
        "AAPL,MSFT,NVDA,TSLA,JPM",
        &simulate_log,
    );
    let rows_of = |version: &str| {
        count(
            &db.url(),
            &format!("SELECT count(*) FROM marked WHERE guest_version = '{version}'"),
        )
    };
    let fail = |what: &str| -> ! { panic!("{what}; weir run log:\n{}", log_tail(&run_log)) };
    let start = Instant::now();
    while rows_of(&sha(&a)) == 0 {
        if start.elapsed() > Duration::from_secs(60) {
            fail("no rows from the first version");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let token = token_file.to_str().unwrap();
    let list = || -> GuestList {
        let out = weir(&[
            "guest",
            "list",
            "--admin",
            &admin_url,
            "--token-file",
            token,
            "--json",
        ]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for i in 0..20 {
        let (target, file, bytes) = if i % 2 == 0 {
            (sha(&b), &b_file, &b)
        } else {
            (sha(&a), &a_file, &a)
        };
        let before = rows_of(&target);
        if i < 10 {
            configmap.update(&[("marker.wasm", bytes)]);
        } else {
            let out = weir(&[
                "guest",
                "deploy",
                "--admin",
                &admin_url,
                "--token-file",
                token,
                "marker",
                file.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{out:?}");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.contains(&format!("-> {}", &target[..12])), "{said}");
        }
        // Swapped in, and then batches ran with it while messages kept coming.
        let swapped = Instant::now();
        while list().guests[0].version != target {
            if swapped.elapsed() > Duration::from_secs(30) {
                fail(&format!("swap {i} did not happen"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("swap {i} took effect after {:?}", swapped.elapsed());
        while rows_of(&target) <= before {
            if swapped.elapsed() > Duration::from_secs(60) {
                fail(&format!("no rows after swap {i}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // Stop producing, then wait for everything produced to be written.
    let _ = Command::new("kill")
        .args(["-TERM", &simulate.0.id().to_string()])
        .status();
    assert!(simulate.0.wait().unwrap().success());
    let total = delivered(&simulate_log);
    let start = Instant::now();
    while count(&db.url(), "SELECT count(*) FROM marked") < total {
        if start.elapsed() > Duration::from_secs(120) {
            fail("not everything produced was written");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));

    let url = db.url();
    assert_marked_exactly_once(&url, total);
    // Every row's marker is that of the version the sink recorded for its batch.
    let mismatched = count(
        &url,
        &format!(
            "SELECT count(*) FROM marked WHERE (marker = 'a') <> (guest_version = '{}') \
                OR guest_version NOT IN ('{}', '{}')",
            sha(&a),
            sha(&a),
            sha(&b)
        ),
    );
    assert_eq!(mismatched, 0, "rows whose marker is not their version's");
    // Every batch is whole and ran with one version.
    let mixed = count(
        &url,
        "SELECT count(*) FROM (SELECT kafka_partition, batch_first FROM marked
            GROUP BY 1, 2 HAVING count(DISTINCT marker) > 1 OR count(*) <> min(batch_len)) m",
    );
    assert_eq!(mixed, 0, "batches that mix versions or are not whole");
    // Per partition, in offset order, the version changes at most once per swap.
    let changes = count(
        &url,
        "SELECT count(*) FROM (SELECT marker <> lag(marker) OVER w AS changed FROM marked
            WINDOW w AS (PARTITION BY kafka_partition ORDER BY kafka_offset)) c WHERE changed",
    );
    assert!(changes <= 3 * 20, "{changes} version changes");

    // Swaps are counted and listed.
    let g = &list().guests[0];
    assert_eq!((g.swaps, g.version.as_str()), (20, sha(&a).as_str()));
    let metrics = rt()
        .block_on(async {
            reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
                .await?
                .text()
                .await
        })
        .unwrap();
    assert!(
        metrics.contains("weir_guest_swaps_total{guest=\"marker\"} 20"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&run_log).unwrap();
    let logged = log
        .lines()
        .filter(|l| {
            l.contains("Swapped in a new guest version")
                && l.contains(&sha(&a))
                && l.contains(&sha(&b))
        })
        .count();
    assert_eq!(logged, 20, "each swap logged with its old and new version");
    assert!(
        !log.contains("load-test-token"),
        "the admin token appears in the log"
    );
}

/// One `weir run` of a group, with its admin API.
/// The `weir run` config of a member of `group` with metrics and admin API on `ports`,
/// the admin token in `admin-token` and the guest `guests/marker.wasm`, running pipeline
/// `stocks` of topic tickers.stocks with `pipeline` (its further keys, indented as the
/// first) and the guest version in `guest_version`.
fn member_config(
    broker: &Broker,
    registry: &Registry,
    url: &str,
    group: &str,
    (http_port, admin_port): (u16, u16),
    pipeline: &str,
) -> String {
    format!(
        "kafka:\n  brokers: \"{}\"\n  group_id: {group}\n\
         registry:\n  url: \"{}\"\n\
         database:\n  url: \"{url}\"\n\
         http:\n  listen: \"127.0.0.1:{http_port}\"\n\
         admin:\n  listen: \"127.0.0.1:{admin_port}\"\n  token_file: admin-token\n\
         guests:\n  dir: guests\n\
         pipelines:\n  - name: stocks\n    topic: tickers.stocks\n    guest: marker.wasm\n    batch: {{size: 100, linger: 20ms}}\n    {pipeline}\n    version_column: guest_version\n",
        broker.bootstrap, registry.url,
    )
}

struct Member {
    config: PathBuf,
    log: PathBuf,
    admin: String,
    child: Option<Killed>,
}

impl Member {
    fn spawn(&mut self) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        use std::io::Write as _;
        writeln!(log, "--- start").unwrap();
        self.child = Some(Killed(
            Command::new(weir_bin())
                .args(["run", "--config"])
                .arg(&self.config)
                .env("WEIR_LOG", "info,rdkafka=warn")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }

    fn kill(&mut self) {
        self.child = None;
    }

    /// Waits until the admin API accepts connections.
    fn wait_admin(&self) {
        let address = self.admin.trim_start_matches("http://");
        let start = Instant::now();
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{address} never listened:\n{}",
                log_tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn group_deploys_reach_every_member_at_one_switch_and_survive_restarts() {
    const TOPIC: &str = "tickers.stocks";
    const GROUP: &str = "deploys";
    let db = TestDb::new();
    let url = db.url();
    let registry = Registry::start(&url);
    let broker = Broker::start();
    prepare_marked(&db, &registry, &broker, TOPIC);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (bytes("fixture_marker_a"), bytes("fixture_marker_b"));
    let guests = tmp.path().join("guests");
    std::fs::create_dir(&guests).unwrap();
    std::fs::write(guests.join("marker.wasm"), &a).unwrap();
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, "group-token").unwrap();
    let mut members: Vec<Member> = ["a", "b"]
        .iter()
        .map(|m| {
            let (http_port, admin_port) = (free_port(), free_port());
            let config = tmp.path().join(format!("weir-{m}.yaml"));
            let ports = (http_port, admin_port);
            let text = member_config(&broker, &registry, &url, GROUP, ports, "tables: [marked]");
            std::fs::write(&config, text).unwrap();
            Member {
                config,
                log: tmp.path().join(format!("run-{m}.log")),
                admin: format!("http://127.0.0.1:{admin_port}"),
                child: None,
            }
        })
        .collect();
    for m in &mut members {
        m.spawn();
    }
    let simulate_log = tmp.path().join("simulate.log");
    let mut simulate = simulate(
        &broker,
        &registry,
        "800",
        "9",
        "AAPL,MSFT,NVDA,TSLA,JPM,AMZN,GOOG,META,NFLX",
        &simulate_log,
    );
    let logs = |members: &[Member]| {
        members
            .iter()
            .map(|m| format!("{}:\n{}", m.log.display(), log_tail(&m.log)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let wait =
        |what: &str, members: &[Member], secs: u64, mut done: Box<dyn FnMut() -> bool + '_>| {
            let start = Instant::now();
            while !done() {
                if start.elapsed() > Duration::from_secs(secs) {
                    panic!("timed out waiting until {what}; logs:\n{}", logs(members));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
    // Partitions whose rows show `version`.
    let partitions_with = |version: &str| {
        count(
            &url,
            &format!(
                "SELECT count(DISTINCT kafka_partition) FROM marked WHERE guest_version = '{version}'"
            ),
        )
    };
    wait(
        "both members hold partitions and every partition has rows",
        &members,
        90,
        // Rows first: weir's tables exist by then.
        Box::new(|| {
            partitions_with(&sha(&a)) == 3
                && count(
                    &url,
                    &format!(
                        "SELECT count(DISTINCT member_id) FROM weir_leases
                          WHERE group_id = '{GROUP}' AND expires_at > now()"
                    ),
                ) == 2
        }),
    );

    let token = token_file.to_str().unwrap();
    let mut deployed = vec![sha(&a)];
    for i in 1..=10u32 {
        let module = variant(if i % 2 == 1 { &b } else { &a }, i);
        let target = sha(&module);
        let file = tmp.path().join(format!("marker-{i}.wasm"));
        std::fs::write(&file, &module).unwrap();
        let out = weir(&[
            "guest",
            "deploy",
            "--admin",
            &members[0].admin,
            "--token-file",
            token,
            "marker",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "deploy {i}: {out:?}\n{}",
            logs(&members)
        );
        deployed.push(target.clone());
        // Live on both members: every partition's rows show it.
        wait(
            &format!("version {i} shows on every partition"),
            &members,
            60,
            Box::new(|| partitions_with(&target) == 3),
        );
        // A restart of either member keeps the deployed version.
        if i == 4 || i == 7 {
            let m = if i == 4 { 1 } else { 0 };
            members[m].kill();
            members[m].spawn();
            members[m].wait_admin();
        }
    }

    let _ = Command::new("kill")
        .args(["-TERM", &simulate.0.id().to_string()])
        .status();
    assert!(simulate.0.wait().unwrap().success());
    let total = delivered(&simulate_log);
    wait(
        "everything produced is written",
        &members,
        120,
        Box::new(|| count(&url, "SELECT count(*) FROM marked") >= total),
    );
    std::thread::sleep(Duration::from_millis(500));

    assert_marked_exactly_once(&url, total);

    // The group recorded eleven versions, each live from an offset on every partition;
    // every row ran with the version live at its offset, never a superseded one.
    let history = weir(&[
        "guest",
        "history",
        "--admin",
        &members[1].admin,
        "--token-file",
        token,
        "--json",
        "marker",
    ]);
    assert!(history.status.success(), "{history:?}");
    let history: weir::admin::History = serde_json::from_slice(&history.stdout).unwrap();
    let shas: Vec<&str> = history.versions.iter().map(|v| v.sha256.as_str()).collect();
    assert_eq!(
        shas,
        deployed.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for (n, v) in history.versions.iter().enumerate() {
        assert_eq!(v.version as usize, n + 1);
        let expected = if n == 10 { "live" } else { "superseded" };
        assert_eq!(v.status, expected, "{v:?}");
        if n > 0 {
            assert_eq!(v.switches.len(), 3, "{v:?}");
            assert!(v.origin.contains("admin API"), "{v:?}");
            assert_eq!(v.previous, Some(n as i32));
        }
    }
    let ran_superseded = count(
        &url,
        &format!(
            "SELECT count(*) FROM marked m
              WHERE m.guest_version <> coalesce((
                SELECT d.sha256 FROM weir_switches s
                  JOIN weir_deployments d USING (group_id, guest, version)
                 WHERE s.group_id = '{GROUP}' AND s.topic = '{TOPIC}'
                   AND s.partition = m.kafka_partition AND s.from_offset <= m.kafka_offset
                 ORDER BY s.version DESC LIMIT 1), '{}')",
            sha(&a)
        ),
    );
    assert_eq!(
        ran_superseded, 0,
        "rows not made by the version live at their offset"
    );
    // Every row's marker is its version's.
    let mismatched = count(
        &url,
        &format!(
            "SELECT count(*) FROM marked m JOIN weir_deployments d
                ON d.group_id = '{GROUP}' AND d.sha256 = m.guest_version
              WHERE (m.marker = 'a') <> (d.version % 2 = 1)"
        ),
    );
    assert_eq!(mismatched, 0);
}

/// `GET http://127.0.0.1:{port}{path}`: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    rt().block_on(async {
        match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    })
}

/// The value of the sample `series` (name and labels, as exposed) on `port`, 0 if absent.
fn sample(port: u16, series: &str) -> f64 {
    http_get(port, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A version that fails on every message trips its pipeline's breaker instead of
/// dead-lettering message after message: swapped in while running, it is rolled back for
/// the group and the batches go on with the version before; run as the only version, it
/// pauses the pipeline (in `/readyz` and `/metrics`) until a good one is deployed. Nothing
/// is dead-lettered, and every message is written exactly once by a good version.
#[test]
fn a_version_failing_every_message_is_rolled_back_or_pauses_the_pipeline() {
    const TOPIC: &str = "tickers.stocks";
    let db = TestDb::new();
    let url = db.url();
    let registry = Registry::start(&url);
    let broker = Broker::start();
    prepare_marked(&db, &registry, &broker, TOPIC);
    weir_tests::run_sql(&url, "CREATE TABLE marked_b (LIKE marked)");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, broken) = (
        bytes("fixture_marker_a"),
        bytes("fixture_marker_b"),
        bytes("fixture_broken"),
    );
    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, "breaker-token").unwrap();
    let token = token_file.to_str().unwrap();
    // One member of `group` writing `table`, its guest file `first`, and its metrics port.
    let member = |group: &str, first: &[u8], table: &str| -> (Member, u16) {
        let dir = tmp.path().join(group);
        std::fs::create_dir_all(dir.join("guests")).unwrap();
        std::fs::write(dir.join("guests/marker.wasm"), first).unwrap();
        std::fs::copy(&token_file, dir.join("admin-token")).unwrap();
        let (http_port, admin_port) = (free_port(), free_port());
        let config = dir.join("weir.yaml");
        let pipeline = format!(
            "config: {{table: {table}}}\n    tables: [{table}]\n    \
             breaker: {{window: 50, min_failures: 10, pause: 1s, max_pause: 2s}}"
        );
        let text = member_config(
            &broker,
            &registry,
            &url,
            group,
            (http_port, admin_port),
            &pipeline,
        );
        std::fs::write(&config, text).unwrap();
        let mut m = Member {
            config,
            log: dir.join("run.log"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            child: None,
        };
        m.spawn();
        m.wait_admin();
        (m, http_port)
    };
    let deploy = |m: &Member, module: &[u8], name: &str| {
        let file = tmp.path().join(name);
        std::fs::write(&file, module).unwrap();
        let out = weir(&[
            "guest",
            "deploy",
            "--admin",
            &m.admin,
            "--token-file",
            token,
            "marker",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "deploy {name}: {out:?}\n{}",
            log_tail(&m.log)
        );
    };
    let wait = |what: &str, m: &Member, mut done: Box<dyn FnMut() -> bool + '_>| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out waiting until {what}; log:\n{}",
                log_tail(&m.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let trips = |port: u16, action: &str| {
        sample(
            port,
            &format!("weir_guest_breaker_trips_total{{pipeline=\"stocks\",action=\"{action}\"}}"),
        )
    };
    let rows = |table: &str| count(&url, &format!("SELECT count(*) FROM {table}"));

    // Swapped in while running: rolled back, the stream goes on with marker a.
    let (m1, port1) = member("breaker-rollback", &a, "marked");
    let simulate_log = tmp.path().join("simulate.log");
    let mut simulate = simulate(
        &broker,
        &registry,
        "400",
        "5",
        "AAPL,MSFT,NVDA,TSLA,JPM,AMZN,GOOG,META,NFLX",
        &simulate_log,
    );
    wait("marker a writes", &m1, Box::new(|| rows("marked") >= 300));
    deploy(&m1, &broken, "broken.wasm");
    wait(
        "the breaker rolls the broken version back",
        &m1,
        Box::new(|| trips(port1, "rolled_back") >= 1.0),
    );
    let after = rows("marked");
    wait(
        "marker a writes again",
        &m1,
        Box::new(|| rows("marked") >= after + 300),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &simulate.0.id().to_string()])
        .status();
    assert!(simulate.0.wait().unwrap().success());
    let total = delivered(&simulate_log);
    wait(
        "everything produced is written",
        &m1,
        Box::new(|| {
            rows("marked")
                + count(
                    &url,
                    "SELECT count(*) FROM dead_letters WHERE group_id = 'breaker-rollback'",
                )
                >= total
        }),
    );
    std::thread::sleep(Duration::from_millis(500));
    // Exactly once: each message one row by marker a, or — the few the broken version
    // failed on before the breaker had seen enough (fewer than min_failures) — one dead
    // letter, for `weir dlq replay`.
    let dead = count(
        &url,
        "SELECT count(*) FROM dead_letters WHERE group_id = 'breaker-rollback'",
    );
    assert!(
        dead < 10,
        "{dead} dead letters: the breaker did not stop them"
    );
    assert_eq!(
        count(
            &url,
            &format!(
                "SELECT count(*) FROM dead_letters WHERE stage <> 'guest' OR guest_version <> '{}'",
                sha(&broken)
            )
        ),
        0,
        "dead letters only of the broken version"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM (SELECT kafka_partition, kafka_offset FROM marked
               UNION SELECT partition, \"offset\" FROM dead_letters) m"
        ),
        total,
        "every message once, as a row or a dead letter"
    );
    assert_eq!(rows("marked") + dead, total, "a message written twice");
    assert_eq!(
        count(
            &url,
            &format!(
                "SELECT count(*) FROM marked WHERE guest_version <> '{}'",
                sha(&a)
            )
        ),
        0,
        "every row by marker a"
    );
    assert_eq!(trips(port1, "paused"), 0.0);
    assert!(
        sample(
            port1,
            "weir_guest_errors_total{guest=\"marker\",kind=\"panic\"}"
        ) >= 10.0,
        "the broken version's failures are counted"
    );
    let log = std::fs::read_to_string(&m1.log).unwrap();
    assert!(
        log.contains("rolled the group back to the version before it"),
        "{}",
        log_tail(&m1.log)
    );
    let history = weir(&[
        "guest",
        "history",
        "--admin",
        &m1.admin,
        "--token-file",
        token,
        "--json",
        "marker",
    ]);
    assert!(history.status.success(), "{history:?}");
    let history: weir::admin::History = serde_json::from_slice(&history.stdout).unwrap();
    let live = history.versions.last().unwrap();
    assert_eq!(live.sha256, sha(&a), "{history:?}");
    assert_eq!(live.status, "live");
    assert!(live.origin.contains("guest breaker"), "{live:?}");
    drop(m1);

    // The only version: the pipeline pauses, nothing is written or dead-lettered, until
    // a good version is deployed; then every message is written once.
    let (m2, port2) = member("breaker-pause", &broken, "marked_b");
    wait(
        "the breaker pauses the pipeline",
        &m2,
        Box::new(|| {
            sample(port2, "weir_guest_breaker_open{pipeline=\"stocks\"}") == 1.0
                && http_get(port2, "/readyz").1.contains("guest breaker")
        }),
    );
    wait(
        "the pause is tried again, and trips again",
        &m2,
        Box::new(|| trips(port2, "paused") >= 2.0),
    );
    let dead_b = "SELECT count(*) FROM dead_letters WHERE group_id = 'breaker-pause'";
    assert_eq!(rows("marked_b"), 0);
    assert_eq!(count(&url, dead_b), 0);
    deploy(&m2, &b, "b.wasm");
    wait(
        "marker b writes everything",
        &m2,
        Box::new(|| rows("marked_b") >= total),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM marked_b WHERE marker = 'b'"
        ),
        total
    );
    assert_eq!(rows("marked_b"), total);
    assert_eq!(count(&url, dead_b), 0);
    wait(
        "the breaker closes",
        &m2,
        Box::new(|| sample(port2, "weir_guest_breaker_open{pipeline=\"stocks\"}") == 0.0),
    );
}
