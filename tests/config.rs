//! The configuration file: rendering (env(), values files), parsing and checking, through
//! `weir::config` and through `weir config render`, on real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir::config::{self, Config, ConfigError};
use weir::runtime::GuestLimits;
use weir_tests::{weir, weir_env};

/// A temporary directory for a configuration file and the files it names.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `text` to `name` (under the directory), creating parent directories.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `weir.yaml` with `text`.
    fn config(&self, text: &str) -> PathBuf {
        self.write("weir.yaml", text)
    }

    /// Loads `weir.yaml` with `text`, expecting an error; returns its message, checking it
    /// starts with the file's path.
    fn load_err(&self, text: &str) -> String {
        let path = self.config(text);
        let err = config::load(&path, None)
            .expect_err("the configuration should be refused")
            .to_string();
        let prefix = format!("{}: ", path.display());
        assert!(err.starts_with(&prefix), "{err}");
        err[prefix.len()..].to_string()
    }
}

/// Lines 1–7 of the files below; pipelines start on line 8.
const HEADER: &str = "\
kafka:
  brokers: localhost:9092
registry:
  url: http://localhost:8081
database:
  url: postgresql://localhost/weir
pipelines:
";

fn with_header(pipelines: &str) -> String {
    format!("{HEADER}{pipelines}")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `weir …` expecting exit code 1; returns stderr.
fn weir_failing(args: &[&str]) -> String {
    let out = weir(args);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    text(&out.stderr)
}

/// One pipeline, lines 8–11.
const PIPE: &str =
    "  - name: stocks\n    topic: tickers.stocks\n    guest: g.wasm\n    tables: [ticks]\n";

#[test]
fn env_fills_in_variables_with_and_without_defaults() {
    let dir = Dir::new();
    let path = dir.config(
        "brokers: {{ env(name=\"WEIR_TEST_BROKERS\") }}\n\
         registry: {{ env(name=\"WEIR_TEST_NEVER_SET_1\", default=\"http://r:8081\") }}\n\
         set_wins: {{ env(name=\"WEIR_TEST_BROKERS\", default=\"unused\") }}\n",
    );
    let out = weir_env(
        &["config", "render", "--config", s(&path)],
        &[("WEIR_TEST_BROKERS", "b1:9092,b2:9092")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "brokers: b1:9092,b2:9092\nregistry: http://r:8081\nset_wins: b1:9092,b2:9092\n"
    );
}

#[test]
fn unset_variable_without_default_names_it_the_file_and_the_line() {
    let dir = Dir::new();
    let path = dir.config("a: 1\nb: 2\nc: {{ env(name=\"WEIR_TEST_NEVER_SET_2\") }}\n");
    let stderr = weir_failing(&["config", "render", "--config", s(&path)]);
    assert!(
        stderr.starts_with(&format!(
            "error: {}: environment variable WEIR_TEST_NEVER_SET_2 is not set (line 3); set it, or give env() a default",
            path.display()
        )),
        "{stderr}"
    );

    match config::load(&path, None) {
        Err(ConfigError::EnvUnset { name, line, .. }) => {
            assert_eq!((name.as_str(), line), ("WEIR_TEST_NEVER_SET_2", Some(3)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn values_file_fills_values_and_capital_values_helm_style() {
    let dir = Dir::new();
    dir.write("guests/a.wasm", "");
    dir.write("guests/b.wasm", "");
    let values = dir.write(
        "values/prod.yaml",
        "kafka:\n  brokers: kafka-0:9092\nregistry: {url: 'http://registry:8081'}\n\
         pipelines:\n  - {name: a, topic: t.a}\n  - {name: b, topic: t.b}\n",
    );
    let path = dir.config(
        "kafka:\n\
         \x20 brokers: {{ values.kafka.brokers | default(value=\"localhost:9092\") }}\n\
         \x20 group_id: {{ values.kafka.group | default(value=\"weir\") }}\n\
         registry:\n\
         \x20 url: {{ Values.registry.url }}\n\
         database:\n\
         \x20 url: postgresql://db/weir\n\
         guests:\n\
         \x20 dir: guests\n\
         pipelines:\n\
         {%- for p in values.pipelines %}\n\
         \x20 - name: {{ p.name }}\n\
         \x20   topic: {{ p.topic }}\n\
         \x20   guest: {{ p.name }}.wasm\n\
         \x20   tables: [{{ p.name }}_ticks]\n\
         {%- endfor %}\n",
    );

    let out = weir(&[
        "config",
        "render",
        "--config",
        s(&path),
        "--values",
        s(&values),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "kafka:\n  brokers: kafka-0:9092\n  group_id: weir\nregistry:\n  url: http://registry:8081\n\
         database:\n  url: postgresql://db/weir\nguests:\n  dir: guests\npipelines:\n\
         \x20 - name: a\n    topic: t.a\n    guest: a.wasm\n    tables: [a_ticks]\n\
         \x20 - name: b\n    topic: t.b\n    guest: b.wasm\n    tables: [b_ticks]\n"
    );

    let c = config::load(&path, Some(&values)).unwrap();
    assert_eq!(c.kafka.brokers, "kafka-0:9092");
    assert_eq!(c.registry.url, "http://registry:8081");
    let names: Vec<_> = c.pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.pipelines[1].guest, dir.path().join("guests/b.wasm"));
    assert_eq!(c.pipelines[1].tables, ["b_ticks"]);

    // Without the values file the defaults apply, and a missing value is an error that
    // names it.
    let err = config::load(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("template: Variable `Values.registry.url` not found"),
        "{err}"
    );
}

#[test]
fn values_file_missing_or_not_yaml_is_refused() {
    let dir = Dir::new();
    let path = dir.config("a: {{ values.a }}\n");
    let missing = dir.path().join("nope.yaml");
    let stderr = weir_failing(&[
        "config",
        "render",
        "--config",
        s(&path),
        "--values",
        s(&missing),
    ]);
    assert!(
        stderr.starts_with(&format!(
            "error: values file {}: cannot read: No such file",
            missing.display()
        )),
        "{stderr}"
    );

    let broken = dir.write("broken.yaml", "a: [1, 2\nb: }\n");
    let stderr = weir_failing(&[
        "config",
        "render",
        "--config",
        s(&path),
        "--values",
        s(&broken),
    ]);
    assert!(
        stderr.starts_with(&format!(
            "error: values file {}: not valid YAML: ",
            broken.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("line"), "{stderr}");

    let list = dir.write("list.yaml", "- a\n- b\n");
    let err = config::load(&path, Some(&list)).unwrap_err().to_string();
    assert!(
        err.ends_with("must be a YAML mapping (key: value lines)"),
        "{err}"
    );
}

#[test]
fn template_syntax_errors_give_tera_line_and_column() {
    let dir = Dir::new();
    let err = dir.load_err("kafka:\n  brokers: x\nregistry:\n  url: {{ values.url | }}\n");
    assert!(
        err.starts_with("template: syntax error at line 4, column "),
        "{err}"
    );
    let err = dir.load_err("a: 1\n{% for x in values %}\nb: 2\n");
    assert!(err.starts_with("template: syntax error at line "), "{err}");
}

#[test]
fn a_recursive_macro_and_a_huge_range_are_refused_without_a_crash() {
    let dir = Dir::new();
    // Each would exhaust the stack or the memory if rendered.
    let path = dir.config(
        "kafka:\n  brokers: {{ self::brokers(n=1) }}\n\
         {% macro brokers(n) %}{{ self::brokers(n=n + 1) }}{% endmacro brokers %}\n",
    );
    for command in [&["config", "render", "--config"][..], &["run", "--config"]] {
        let mut args = command.to_vec();
        args.push(s(&path));
        let stderr = weir_failing(&args);
        assert!(
            stderr.contains(
                "template: macro `brokers` calls itself (brokers → brokers): recursion is not allowed in a configuration template (line 3)"
            ),
            "{stderr}"
        );
    }
    let path = dir
        .config("kafka:\n  brokers: x\n# {% for i in range(end=200000000) %}{{ i }}{% endfor %}\n");
    let stderr = weir_failing(&["config", "render", "--config", s(&path)]);
    assert!(
        stderr.contains(
            "template: range() would make 200000000 numbers, past the 1000000 all range() calls of one render may make together"
        ),
        "{stderr}"
    );
}

#[test]
fn a_template_past_the_memory_of_a_render_fails_in_its_own_process() {
    let dir = Dir::new();
    // A value doubled forty times in a loop that writes nothing: no check of the
    // template's text sees it coming; the rendering process's memory cap does.
    let path = dir.config(
        "{% set_global s = \"xxxxxxxxxxxxxxxx\" %}\
         {% for i in range(end=40) %}{% set_global s = s ~ s %}{% endfor %}kafka: {}\n",
    );
    for command in [&["config", "render", "--config"][..], &["run", "--config"]] {
        let mut args = command.to_vec();
        args.push(s(&path));
        let stderr = weir_failing(&args);
        assert!(
            stderr.contains("template: rendering needs more than 1GiB of memory"),
            "{stderr}"
        );
    }
}

#[test]
fn render_prints_the_rendered_text_and_check_validates_it() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let template = with_header(PIPE).replace(
        "localhost:9092",
        "{{ env(name=\"WEIR_TEST_NEVER_SET_3\", default=\"k:9092\") }}",
    );
    let path = dir.config(&template);

    let out = weir(&["config", "render", "--config", s(&path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        with_header(PIPE).replace("localhost:9092", "k:9092")
    );

    let out = weir(&["config", "render", "--config", s(&path), "--check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");

    // WEIR_CONFIG stands in for --config.
    let out = weir_env(
        &["config", "render", "--check"],
        &[("WEIR_CONFIG", s(&path))],
    );
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));

    // Rendering does not validate; --check does.
    dir.config(&with_header(&PIPE.replace("g.wasm", "missing.wasm")));
    let out = weir(&["config", "render", "--config", s(&path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = weir_failing(&["config", "render", "--config", s(&path), "--check"]);
    assert!(
        stderr.contains("pipelines[0] (stocks).guest: ") && stderr.contains("does not exist"),
        "{stderr}"
    );

    let stderr = weir_failing(&["config", "render", "--config", "/no/such/weir.yaml"]);
    assert!(
        stderr.starts_with("error: cannot read configuration file /no/such/weir.yaml: "),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key_and_the_line() {
    let dir = Dir::new();
    dir.write("g.wasm", "");

    let err = dir.load_err(&with_header(&PIPE.replace("topic:", "topik:")));
    assert!(
        err.starts_with(
            "pipelines[0]: unknown field `topik`, expected one of `name`, `topic`, `topics`"
        ),
        "{err}"
    );
    assert!(err.ends_with("at line 9 column 5"), "{err}");

    let err = dir.load_err(&with_header(PIPE).replace("kafka:", "kafak:"));
    assert!(
        err.starts_with("unknown field `kafak`, expected one of `kafka`"),
        "{err}"
    );
    assert!(err.contains("at line 1 column 1"), "{err}");

    let err = dir.load_err(&with_header(&format!("{PIPE}    batch: {{size: lots}}\n")));
    assert!(
        err.starts_with("pipelines[0].batch.size: invalid type: string \"lots\", expected usize"),
        "{err}"
    );
    assert!(err.contains("at line 12"), "{err}");

    let err = dir.load_err(&with_header(&format!(
        "{PIPE}    limits:\n      deadline: 5\n"
    )));
    assert!(
        err.starts_with(
            "pipelines[0].limits.deadline: the duration 5 has no unit; write 5ms or 5s"
        ),
        "{err}"
    );
    assert!(err.contains("at line 13"), "{err}");

    let err = dir.load_err(&with_header(&format!(
        "{PIPE}    limits: {{max_memory: 64 furlongs}}\n"
    )));
    assert!(
        err.starts_with("pipelines[0].limits.max_memory: \"64 furlongs\": unknown size unit"),
        "{err}"
    );

    let err = dir.load_err(
        HEADER
            .replace("  url: postgresql://localhost/weir\n", "")
            .as_str(),
    );
    assert!(err.starts_with("database: missing field `url`"), "{err}");
}

#[test]
fn a_topic_routed_twice_names_both_pipelines() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&with_header(
        "  - name: stocks\n    topic: tickers.stocks\n    guest: g.wasm\n    tables: [ticks]\n\
         \x20 - name: crypto\n    topic: tickers.crypto\n    guest: g.wasm\n    tables: [ticks]\n\
         \x20 - name: everything\n    topics:\n      - tickers.currency\n      - tickers.crypto\n    guest: g.wasm\n    tables: [ticks]\n",
    ));
    assert_eq!(
        err,
        "pipelines[2] (everything).topics: topic tickers.crypto is already routed to \
         pipelines[1] (crypto) (line 13); a topic feeds one pipeline (line 19)"
    );
}

#[test]
fn duplicate_pipeline_names_are_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&with_header(&format!(
        "{PIPE}  - name: stocks\n    topic: tickers.other\n    guest: g.wasm\n    tables: [ticks]\n"
    )));
    assert_eq!(
        err,
        "pipelines[1].name: \"stocks\" is already the name of pipelines[0] (stocks) (line 8); \
         pipeline names must be unique (line 12)"
    );
}

#[test]
fn empty_topics_are_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&with_header(
        "  - name: stocks\n    topics: []\n    guest: g.wasm\n    tables: [ticks]\n",
    ));
    assert_eq!(
        err,
        "pipelines[0] (stocks).topics: is empty: list at least one topic (line 9)"
    );

    let err = dir.load_err(&with_header(
        "  - name: stocks\n    guest: g.wasm\n    tables: [ticks]\n",
    ));
    assert_eq!(
        err,
        "pipelines[0] (stocks).topics: no topic: give `topic: NAME` or `topics: [A, B]` (line 8)"
    );

    let err = dir.load_err(&with_header(
        "  - name: stocks\n    topic: a\n    topics: [b]\n    guest: g.wasm\n    tables: [ticks]\n",
    ));
    assert!(err.contains("give `topic` or `topics`, not both"), "{err}");
}

#[test]
fn batch_size_zero_is_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&with_header(&format!(
        "{PIPE}    batch:\n      linger: 5ms\n      size: 0\n"
    )));
    assert_eq!(
        err,
        "pipelines[0] (stocks).batch.size: must be at least 1 (line 14)"
    );
}

#[test]
fn zero_deadline_is_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&with_header(&format!(
        "{PIPE}    limits: {{deadline: 0s, max_memory: 16MiB}}\n"
    )));
    assert_eq!(
        err,
        "pipelines[0] (stocks).limits.deadline: must be more than 0 (a guest call needs time to run) (line 12)"
    );
}

#[test]
fn a_memory_limit_above_the_runtime_maximum_is_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let text = format!(
        "runtime:\n  max_memory: 256MiB\n{}",
        with_header(&format!("{PIPE}    limits:\n      max_memory: 512MiB\n"))
    );
    let err = dir.load_err(&text);
    assert_eq!(
        err,
        "pipelines[0] (stocks).limits.max_memory: 512MiB is more than runtime.max_memory \
         (256MiB), the largest memory any guest may have; lower it or raise runtime.max_memory (line 15)"
    );
}

#[test]
fn a_missing_guest_file_is_named_by_its_resolved_path() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&with_header(&format!(
        "{PIPE}  - name: crypto\n    topic: tickers.crypto\n    guest: sub/x.wasm\n    tables: [ticks]\n"
    )));
    assert_eq!(
        err,
        format!(
            "pipelines[1] (crypto).guest: {} does not exist (line 14)",
            dir.path().join("sub/x.wasm").display()
        )
    );
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let dir = Dir::new();
    dir.write("deploy/guests/ticks.wasm", "");
    dir.write("deploy/sql/001.sql", "");
    let elsewhere = dir.write("elsewhere/abs.wasm", "");
    let text = with_header(&format!(
        "  - name: a\n    topic: t.a\n    guest: ticks.wasm\n    tables: [ticks]\n\
         \x20 - name: b\n    topic: t.b\n    guest: {}\n    tables: [ticks]\n",
        elsewhere.display()
    ))
    .replace(
        "  url: postgresql://localhost/weir\n",
        "  url: postgresql://localhost/weir\n  migrations: ./sql\nguests:\n  dir: guests\n",
    );
    let path = dir.write("deploy/weir.yaml", &text);
    // The test runs in another directory: paths must not depend on it.
    assert_ne!(std::env::current_dir().unwrap(), dir.path().join("deploy"));
    let c = config::load(&path, None).unwrap();
    let deploy = dir.path().join("deploy");
    assert_eq!(c.source, path);
    assert_eq!(c.guests.dir, Some(deploy.join("guests")));
    assert_eq!(c.database.migrations, Some(deploy.join("sql")));
    assert_eq!(c.pipelines[0].guest, deploy.join("guests/ticks.wasm"));
    assert_eq!(c.pipelines[1].guest, elsewhere);

    // Without guests.dir, guests are found beside the configuration file.
    dir.write("deploy/plain.wasm", "");
    let path = dir.write(
        "deploy/weir.yaml",
        &with_header("  - name: a\n    topic: t.a\n    guest: plain.wasm\n    tables: [ticks]\n"),
    );
    let c = config::load(&path, None).unwrap();
    assert_eq!(c.pipelines[0].guest, deploy.join("plain.wasm"));

    // A directory that is not there is named.
    let err = dir.load_err(&format!("{}guests:\n  dir: nowhere\n", with_header(PIPE)));
    assert_eq!(
        err,
        format!(
            "guests.dir: {} does not exist (line 13)",
            dir.path().join("nowhere").display()
        )
    );
}

#[test]
fn a_full_file_parses_into_typed_settings() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let path = dir.config(
        "kafka:
  brokers: k1:9092,k2:9092
  group_id: weir-prod
  properties:
    session.timeout.ms: 45000
    enable.partition.eof: false
registry:
  url: https://registry.example:8081
database:
  url: postgresql://weir@db/weir
http:
  listen: 0.0.0.0:9100
runtime:
  max_stack: 1MiB
  instances: 8
  max_memory: 256MiB
pipelines:
  - name: stocks
    topic: tickers.stocks
    guest: g.wasm
    batch: {size: 1000, linger: 250ms}
    limits: {deadline: 2s, max_memory: 64MiB}
    config:
      table: stock_ticks
      precision: 4
      strict: true
      ratio: 0.25
  - name: fx
    topics: [tickers.currency, tickers.fx]
    guest: g.wasm
    tables: [fx_ticks, fx_candles]
",
    );
    let c: Config = config::load(&path, None).unwrap();
    assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
    assert_eq!(c.kafka.group_id, "weir-prod");
    assert_eq!(
        c.kafka
            .properties
            .get("session.timeout.ms")
            .map(String::as_str),
        Some("45000")
    );
    assert_eq!(
        c.kafka
            .properties
            .get("enable.partition.eof")
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(c.http.listen, "0.0.0.0:9100".parse().unwrap());
    assert_eq!(c.runtime.max_stack, 1 << 20);

    let stocks = &c.pipelines[0];
    assert_eq!(stocks.topics, ["tickers.stocks"]);
    assert_eq!(stocks.batch_size, 1000);
    assert_eq!(stocks.linger, Duration::from_millis(250));
    assert_eq!(
        stocks.limits,
        GuestLimits {
            deadline: Duration::from_secs(2),
            max_memory: 64 << 20
        }
    );
    let config: Vec<_> = stocks
        .guest_config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        config,
        [
            ("precision", "4"),
            ("ratio", "0.25"),
            ("strict", "true"),
            ("table", "stock_ticks")
        ]
    );
    assert_eq!(stocks.tables, ["stock_ticks"], "defaults to config.table");

    let fx = &c.pipelines[1];
    assert_eq!(fx.topics, ["tickers.currency", "tickers.fx"]);
    assert_eq!(fx.tables, ["fx_ticks", "fx_candles"]);
    assert_eq!(fx.batch_size, 500);
    assert_eq!(fx.linger, Duration::from_millis(100));
    assert_eq!(fx.limits, GuestLimits::default());

    let rc = c.runtime_config();
    assert_eq!(rc.max_wasm_stack, 1 << 20);
    let pool = rc.pooling.unwrap();
    assert_eq!((pool.instances, pool.max_memory), (8, 256 << 20));
}

/// The example in the `weir::config` documentation, as written there.
fn documented_example() -> String {
    let source = include_str!("../host/src/config/mod.rs");
    let mut lines = source
        .lines()
        .skip_while(|l| *l != "//! ```yaml")
        .skip(1)
        .take_while(|l| *l != "//! ```");
    let mut out = String::new();
    for l in lines.by_ref() {
        out.push_str(l.strip_prefix("//! ").or(l.strip_prefix("//!")).unwrap());
        out.push('\n');
    }
    assert!(out.contains("pipelines:"), "{out}");
    out
}

#[test]
fn the_documented_example_loads() {
    let dir = Dir::new();
    dir.write("guests/ticks.wasm", "");
    dir.write("guests/candles.wasm", "");
    dir.write("guests/extra.wasm", "");
    dir.write("migrations/001.sql", "");
    let path = dir.config(&documented_example());
    let values = dir.write(
        "values.yaml",
        "extra_pipelines:\n  - {name: extra, topic: tickers.extra, guest: extra.wasm, table: extra_ticks}\n",
    );

    let out = weir_env(
        &[
            "config",
            "render",
            "--check",
            "--config",
            s(&path),
            "--values",
            s(&values),
        ],
        &[("DATABASE_URL", "postgresql://weir@db/weir")],
    );
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));

    if std::env::var_os("DATABASE_URL").is_none() {
        let stderr = weir_failing(&["config", "render", "--check", "--config", s(&path)]);
        assert!(
            stderr.contains("environment variable DATABASE_URL is not set (line 15)"),
            "{stderr}"
        );
    }
}

#[test]
fn hot_swap_settings_parse_with_their_defaults() {
    let dir = Dir::new();
    dir.write("guests/g.wasm", "");
    dir.write("secrets/token", "t");
    let base = format!(
        "{HEADER}  - name: stocks\n    topic: tickers.stocks\n    guest: g.wasm\n    tables: [ticks]\n    version_column: guest_version\n"
    );
    let path = dir.config(&format!("guests:\n  dir: guests\n{base}"));
    let c = config::load(&path, None).unwrap();
    assert!(c.guests.watch, "watched by default");
    assert_eq!(c.guests.rescan, Duration::from_secs(1));
    assert_eq!(c.admin, None, "the admin API is off by default");
    assert_eq!(
        c.pipelines[0].version_column.as_deref(),
        Some("guest_version")
    );

    let path = dir.config(&format!(
        "guests:\n  dir: guests\n  watch: false\n  rescan: 250ms\n\
         admin:\n  listen: 127.0.0.1:9465\n  token_file: secrets/token\n  max_body: 8MiB\n{base}"
    ));
    let c = config::load(&path, None).unwrap();
    assert!(!c.guests.watch);
    assert_eq!(c.guests.rescan, Duration::from_millis(250));
    let admin = c.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:9465".parse().unwrap());
    assert_eq!(
        admin.token_file.unwrap(),
        std::path::absolute(dir.path().join("secrets/token")).unwrap()
    );
    assert_eq!(admin.max_body, 8 << 20);
}

#[test]
fn an_admin_api_without_exactly_one_token_source_is_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let err = dir.load_err(&format!(
        "admin:\n  listen: 127.0.0.1:9465\n{}",
        with_header(PIPE)
    ));
    assert!(
        err.starts_with("admin: the admin API needs a bearer token: set token_file"),
        "{err}"
    );
    assert!(err.ends_with("(line 1)"), "{err}");
    let err = dir.load_err(&format!(
        "admin:\n  listen: 127.0.0.1:9465\n  token_file: t\n  token_env: T\n{}",
        with_header(PIPE)
    ));
    assert_eq!(
        err,
        "admin: give token_file or token_env, not both (line 4)"
    );
}

#[test]
fn a_guest_name_meaning_two_files_is_refused() {
    let dir = Dir::new();
    dir.write("a/g.wasm", "");
    dir.write("b/g.wasm", "");
    let err = dir.load_err(&with_header(
        "  - name: stocks\n    topic: tickers.stocks\n    guest: a/g.wasm\n    tables: [ticks]\n\
         \x20 - name: crypto\n    topic: tickers.crypto\n    guest: b/g.wasm\n    tables: [ticks]\n",
    ));
    assert!(err.starts_with("pipelines[1] (crypto).guest: "), "{err}");
    assert!(
        err.contains("has the guest name \"g\"") && err.ends_with("(line 14)"),
        "{err}"
    );
}

#[test]
fn weir_run_refuses_an_unreadable_admin_token_before_connecting() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let path = dir.config(&format!(
        "admin:\n  listen: 127.0.0.1:0\n  token_env: WEIR_TEST_UNSET_TOKEN\n{}",
        with_header(PIPE)
    ));
    let err = weir_failing(&["run", "--config", s(&path)]);
    assert!(
        err.contains("the admin token variable WEIR_TEST_UNSET_TOKEN is not set"),
        "{err}"
    );
}

#[test]
fn a_pipeline_listing_no_tables_is_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    let no_tables = "  - name: stocks\n    topic: tickers.stocks\n    guest: g.wasm\n";
    let err = dir.load_err(&with_header(no_tables));
    assert!(
        err.starts_with(
            "pipelines[0] (stocks).tables: lists no tables (and config.table is not set): "
        ),
        "{err}"
    );
    // No `tables` line to point at: the pipeline's.
    assert!(err.ends_with("(line 8)"), "{err}");

    // Other config does not stand in for config.table.
    let err = dir.load_err(&with_header(&format!(
        "{no_tables}    config: {{precision: 4}}\n"
    )));
    assert!(
        err.starts_with("pipelines[0] (stocks).tables: lists no tables"),
        "{err}"
    );

    // An empty list is no list.
    let err = dir.load_err(&with_header(&format!("{no_tables}    tables: []\n")));
    assert!(
        err.starts_with("pipelines[0] (stocks).tables: lists no tables")
            && err.ends_with("(line 11)"),
        "{err}"
    );
}

#[test]
fn a_pipeline_listing_one_of_weirs_own_tables_is_refused() {
    let dir = Dir::new();
    dir.write("g.wasm", "");
    for table in ["weir_offsets", "public.weir_offsets"] {
        let err = dir.load_err(&with_header(
            &PIPE.replace("[ticks]", &format!("[ticks, {table}]")),
        ));
        assert_eq!(
            err,
            format!(
                "pipelines[0] (stocks).tables: lists {table}, one of weir's own tables, \
                 which no pipeline may write (line 11)"
            )
        );
    }
}
