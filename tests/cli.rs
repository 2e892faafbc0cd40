//! `weir guest check` and `weir guest run`, and what `weir ingest replay` refuses before
//! it connects to anything, run as a user would.

use std::path::Path;

use serde_json::{Value, json};
use weir_tests::{guest_path, weir};

/// `weir guest check FILE`, expecting failure; returns stdout and stderr.
fn check_failing(file: &str) -> (String, String) {
    let out = weir(&["guest", "check", file]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    (text(&out.stdout), text(&out.stderr))
}

/// `weir guest run GUEST --input INPUT EXTRA…`, expecting failure; returns stderr.
fn run_failing(guest: &str, input: &str, extra: &[&str]) -> String {
    let guest = guest_path(guest);
    let mut args = vec!["guest", "run", path(&guest), "--input", input];
    args.extend_from_slice(extra);
    let out = weir(&args);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    text(&out.stderr)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_prints_the_world_and_accepts_a_fitting_guest() {
    let out = weir(&["guest", "check", path(&guest_path("passthrough"))]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("export init: func(config: list<config-entry>) -> result<_, string>;"),
        "{stdout}"
    );
    assert!(
        stdout.contains("export process: func(batch: batch) -> output;"),
        "{stdout}"
    );
    assert!(stdout.contains("weir:processor/types@0.2.0"), "{stdout}");
    assert!(stdout.contains("sha256:"), "{stdout}");
    assert!(stdout.contains("targets: weir:processor@0.2.0"), "{stdout}");
    assert!(
        stdout.contains("result:  fits weir:processor@0.2.0"),
        "{stdout}"
    );

    // A guest of the old world is still accepted, as one of that world.
    let out = weir(&[
        "guest",
        "check",
        path(&guest_path("fixture_v1_passthrough")),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("export process: func(batch: batch) -> list<outcome>;"),
        "{stdout}"
    );
    assert!(stdout.contains("weir:processor/types@0.1.0"), "{stdout}");
    assert!(
        stdout.contains("result:  fits weir:processor@0.1.0"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_forbidden_import_naming_it() {
    let (stdout, stderr) = check_failing(path(&guest_path("fixture_wasi_clock")));
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("wasi:clocks/wall-clock@") && l.ends_with("NOT GRANTED")),
        "{stdout}"
    );
    assert!(stdout.contains("result:  does not fit"), "{stdout}");
    assert!(stderr.contains("world does not grant"), "{stderr}");
}

#[test]
fn check_refuses_a_wrong_world_and_bad_files() {
    let (_, stderr) = check_failing(path(&guest_path("fixture_wrong_world")));
    assert!(
        stderr.contains("it exports `transform`, not `init: func(config: list<config-entry>)"),
        "{stderr}"
    );

    let (_, stderr) = check_failing("/no/such/guest.wasm");
    assert!(
        stderr.contains("cannot read guest /no/such/guest.wasm"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "definitely not wasm").unwrap();
    let (_, stderr) = check_failing(path(&junk));
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");
}

#[test]
fn run_maps_json_lines_to_outcome_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("batch.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"topic":"tickers.crypto","partition":2,"offset":40,"key":"BTC-USD","fields":{"symbol":"BTC-USD","price":{"$decimal":"64000.50"},"quote":{"bid":63999.5},"event_time":{"$timestamp":"2024-05-01T12:00:00Z"}}}"#,
            "\n\n",
            r#"{"symbol":"ETH-USD","price":3100.25,"volume":12}"#,
            "\n"
        ),
    )
    .unwrap();
    let guest = guest_path("passthrough");
    let out = weir(&[
        "guest",
        "run",
        path(&guest),
        "--input",
        path(&input),
        "--topic",
        "tickers.crypto",
        "--config",
        "table=crypto_ticks",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"topic":"tickers.crypto","partition":2,"offset":40,"actions":[{"insert":{"table":"crypto_ticks","row":{
                "symbol":"BTC-USD","price":{"$decimal":"64000.50"},"quote.bid":63999.5,
                "event_time":{"$timestamp":"2024-05-01T12:00:00.000000Z"}}}}]}),
            json!({"topic":"tickers.crypto","partition":0,"offset":1,"actions":[{"insert":{"table":"crypto_ticks","row":{
                "symbol":"ETH-USD","price":3100.25,"volume":12}}}]}),
        ]
    );
}

#[test]
fn run_reports_bad_input_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("batch.jsonl");
    std::fs::write(&input, "{\"a\":1}\n{\"a\":\n").unwrap();
    let stderr = run_failing("passthrough", path(&input), &[]);
    assert!(
        stderr.contains(&format!("{}:2: invalid JSON", input.display())),
        "{stderr}"
    );

    std::fs::write(&input, "{\"at\":{\"$timestamp\":\"soon\"}}\n").unwrap();
    let stderr = run_failing("passthrough", path(&input), &[]);
    assert!(stderr.contains(":1: field `at`"), "{stderr}");

    let stderr = run_failing("passthrough", "/no/such.jsonl", &[]);
    assert!(
        stderr.contains("cannot read input /no/such.jsonl"),
        "{stderr}"
    );
    // Two spellings of one field, and a key given twice, are refused, not merged.
    std::fs::write(&input, "{\"a.b\":1,\"a\":{\"b\":2}}\n{\"x\":1,\"x\":2}\n").unwrap();
    let stderr = run_failing("passthrough", path(&input), &[]);
    assert!(
        stderr.contains(&format!("{}:1: ", input.display()))
            && stderr.contains("both become the field `a.b`"),
        "{stderr}"
    );
    std::fs::write(&input, "{\"x\":1,\"x\":2}\n").unwrap();
    let stderr = run_failing("passthrough", path(&input), &[]);
    assert!(stderr.contains(r#"the key "x" appears twice"#), "{stderr}");
}

#[test]
fn run_reports_a_guest_failure_and_a_wrong_world() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("batch.jsonl");
    std::fs::write(&input, "{\"misbehave\":true}\n").unwrap();
    let stderr = run_failing("fixture_panic", path(&input), &[]);
    assert!(stderr.contains("guest fixture_panic"), "{stderr}");
    assert!(
        stderr.contains("panicked: fixture panicked on offset 0"),
        "{stderr}"
    );

    let stderr = run_failing("fixture_spin", path(&input), &["--deadline", "100ms"]);
    assert!(
        stderr.contains("interrupted after its 100ms deadline"),
        "{stderr}"
    );

    let stderr = run_failing("fixture_wrong_world", path(&input), &[]);
    assert!(
        stderr.contains("does not fit the weir:processor@0.1.0 or weir:processor@0.2.0 world"),
        "{stderr}"
    );
}

#[test]
fn migrate_takes_the_database_and_directory_from_a_config() {
    let db = weir_tests::TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sql")).unwrap();
    std::fs::write(
        dir.path().join("sql/001_t.sql"),
        "CREATE TABLE migrated (id int)",
    )
    .unwrap();
    let config = dir.path().join("weir.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: \"127.0.0.1:1\"}}\nregistry: {{url: \"http://127.0.0.1:1\"}}\n\
             database: {{url: \"{}\", migrations: sql}}\n\
             pipelines:\n  - {{name: p, topic: t, guest: \"{}\", tables: [x]}}\n",
            db.url(),
            guest_path("passthrough").display()
        ),
    )
    .unwrap();
    let run = || {
        let out = weir(&["migrate", "--config", path(&config)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(run(), "applied 001_t.sql\n");
    assert_eq!(
        run(),
        "skipped (already applied) 001_t.sql\nnothing to apply\n"
    );
    weir_tests::run_sql(&db.url(), "SELECT id FROM migrated");
}

#[test]
fn replay_refuses_a_number_out_of_range_and_a_column_named_twice() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at these: the file is refused before either is needed.
    let replay = |file: &Path| {
        let out = weir(&[
            "ingest",
            "replay",
            path(file),
            "--topic",
            "tickers.stocks",
            "--brokers",
            "127.0.0.1:1",
            "--registry",
            "http://127.0.0.1:1",
        ]);
        assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
        text(&out.stderr)
    };
    let jsonl = dir.path().join("ticks.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\":\"AAPL\",\"price\":187.25}\n{\"id\":\"MSFT\",\"price\":1e400}\n",
    )
    .unwrap();
    let stderr = replay(&jsonl);
    assert!(
        stderr.contains(&format!(
            "{}:2: invalid JSON: field `price`: the number 1e400 is out of range for a 64-bit float",
            jsonl.display()
        )),
        "{stderr}"
    );

    let csv = dir.path().join("ticks.csv");
    std::fs::write(&csv, "id,price,price\nAAPL,187.25,188\n").unwrap();
    let stderr = replay(&csv);
    assert!(
        stderr.contains(&format!(
            "{}:1: the CSV header names the column `price` twice (columns 2 and 3)",
            csv.display()
        )),
        "{stderr}"
    );
}
