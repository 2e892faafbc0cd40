//! The Kubernetes deployment, checked without a cluster: the five charts lint and render
//! (defaults and each environment's values), `helmfile template` renders both
//! environments as helmfile 0.x and 1.x read the file, every rendered object validates
//! strictly against the Kubernetes schemas (kubernetes-validate, offline), every pod is
//! locked down with a ServiceAccount of its own, no password is in a ConfigMap or an env
//! literal and no render makes one up, production needs an image repository, the image is
//! set once for every release that runs weir, guests given through helmfile survive the
//! next sync, a bad value is refused by the chart's schema, the releases reach each
//! other by the names the charts create, their NetworkPolicies (when enabled) allow those
//! connections and no others, and TLS and credentials (Kafka, the registry's users and
//! clients) come from Secrets, and Grafana's PostgreSQL data source (the weir markets
//! dashboard) logs in to storage's Postgres with the password of storage's Secret. The
//! market pipeline is deployed whole: the processing release runs the demo's pipelines
//! (tests/demo/weir.yaml, the options pipeline and its lookups included) with guests the
//! image builds, the streaming release creates every topic with a schema in schemas/, the
//! storage release applies every migration and they create every table the pipelines use,
//! and the simulator's command, option trades included, is one weir takes.
//!
//! The tools come from `make tools` (tests/deploy/tools.sh) in `.tools/bin`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use serde::Deserialize as _;
use serde_yaml::Value;
use sha2::Digest as _;
use weir_tests::{GUEST_DIR, repo_root, weir};

const CHARTS: [&str; 5] = [
    "storage",
    "streaming",
    "processing",
    "ingestion",
    "monitoring",
];
const ENVIRONMENTS: [&str; 2] = ["local", "production"];
/// The Kubernetes versions the manifests are validated against: the oldest the charts
/// support (their `kubeVersion`) and a current release.
const KUBERNETES: [&str; 2] = ["1.29.0", "1.35.0"];

/// How helmfile reads the file: as 0.x does, and as 1.x does (the bundled 0.x binary's
/// 1.0 mode).
const HELMFILE_MODES: [(&str, &[(&str, &str)]); 2] =
    [("0.x", &[]), ("1.x", &[("HELMFILE_V1MODE", "true")])];

/// What the production environment needs to render: an image repository, and the first
/// install's passwords (there is no cluster to read them back from).
const PRODUCTION_ENV: [(&str, &str); 4] = [
    ("WEIR_IMAGE_REPOSITORY", "registry.example.com/weir"),
    ("WEIR_POSTGRES_PASSWORD", "pg-Pw-7d1c0e93"),
    ("WEIR_GRAFANA_PASSWORD", "graf-Pw-52ab1f"),
    ("WEIR_ADMIN_TOKEN", "admin-Tk-9e44c2"),
];

/// What each chart needs for a first install, when rendered on its own: the passwords no
/// render makes up.
fn first_install(chart: &str) -> &'static [&'static str] {
    match chart {
        "storage" => &["--set", "auth.password=pg-Pw-7d1c0e93"],
        "monitoring" => &["--set", "grafana.adminPassword=graf-Pw-52ab1f"],
        _ => &[],
    }
}

fn tool(name: &str) -> PathBuf {
    let path = repo_root().join(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make tools` (tests/deploy/tools.sh)",
        path.display()
    );
    path
}

/// Runs a tool from the repository root; returns (success, stdout, stderr).
fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    run_env(program, args, &[])
}

/// [`run`] with extra environment variables (and none of the WEIR_ ones of this process).
fn run_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let tools = repo_root().join(".tools/bin");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(program);
    for (var, _) in std::env::vars() {
        if var.starts_with("WEIR_") {
            command.env_remove(var);
        }
    }
    let out = command
        .args(args)
        .current_dir(repo_root())
        .envs(env.iter().copied())
        .env("PATH", path)
        // helm keeps caches and plugins in these; a throwaway home keeps runs apart.
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("weir-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("weir-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("weir-helm-data"),
        )
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(program: &Path, args: &[&str]) -> String {
    ok_env(program, args, &[])
}

fn ok_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let (success, stdout, stderr) = run_env(program, args, env);
    assert!(
        success,
        "{} {} failed:\n{stderr}\n{stdout}",
        program.display(),
        args.join(" ")
    );
    stdout
}

/// `helm template RELEASE charts/CHART` with the first install's passwords and extra
/// arguments.
fn template(release: &str, chart: &str, extra: &[&str]) -> String {
    let dir = format!("charts/{chart}");
    let mut args = vec!["template", release, dir.as_str(), "--namespace", "weir"];
    args.extend_from_slice(first_install(chart));
    args.extend_from_slice(extra);
    ok(&tool("helm"), &args)
}

/// The environment a helmfile command of `environment` runs with, in `mode`.
fn helmfile_env(
    environment: &str,
    mode: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut env = mode.to_vec();
    if environment == "production" {
        env.extend(PRODUCTION_ENV);
    }
    env
}

/// `helmfile --environment ENV template` with extra arguments, in `mode`.
fn helmfile(environment: &str, mode: &[(&'static str, &'static str)], extra: &[&str]) -> String {
    let mut args = vec!["--environment", environment];
    args.extend_from_slice(extra);
    args.extend(["template", "--skip-deps", "--args", "--namespace=weir"]);
    ok_env(&tool("helmfile"), &args, &helmfile_env(environment, mode))
}

/// `helmfile template` of an environment as helmfile `mode` (`0.x`, `1.x`) reads the file,
/// rendered once per test binary (several tests read it).
fn helmfile_template(environment: &str, mode: &str) -> &'static str {
    static RENDERED: OnceLock<BTreeMap<(&'static str, &'static str), String>> = OnceLock::new();
    let rendered = RENDERED.get_or_init(|| {
        let mut all = BTreeMap::new();
        for env in ENVIRONMENTS {
            for (mode, vars) in HELMFILE_MODES {
                all.insert((env, mode), helmfile(env, vars, &[]));
            }
        }
        all
    });
    rendered
        .iter()
        .find(|((e, m), _)| *e == environment && *m == mode)
        .map(|(_, yaml)| yaml.as_str())
        .unwrap_or_else(|| panic!("no environment {environment} in mode {mode}"))
}

/// The documents of a multi-document YAML stream (empty ones dropped).
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_str()
}

fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn find<'a>(all: &'a [Value], k: &str, n: &str) -> &'a Value {
    all.iter()
        .find(|v| kind(v) == k && name(v) == n)
        .unwrap_or_else(|| {
            let have: Vec<String> = all
                .iter()
                .map(|v| format!("{}/{}", kind(v), name(v)))
                .collect();
            panic!("no {k} named {n}; rendered: {have:?}")
        })
}

/// Validates rendered manifests strictly, offline, against each of [`KUBERNETES`].
fn validate(label: &str, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{label}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    for version in KUBERNETES {
        let (success, stdout, stderr) = run(
            &tool("kubernetes-validate"),
            &["--strict", "--quiet", "-k", version, file.to_str().unwrap()],
        );
        assert!(
            success && !stdout.contains("ERROR"),
            "{label} does not validate against Kubernetes {version}:\n{stdout}\n{stderr}"
        );
    }
}

/// Every rendering the checks look at: (label, YAML), rendered once per test binary.
fn renderings() -> &'static [(String, String)] {
    static RENDERINGS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    RENDERINGS.get_or_init(render_all)
}

fn render_all() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for chart in CHARTS {
        out.push((format!("{chart}-defaults"), template(chart, chart, &[])));
        for env in ENVIRONMENTS {
            let values = format!("charts/environments/{env}/{chart}.yaml");
            out.push((
                format!("{chart}-{env}"),
                template(chart, chart, &["--values", &values]),
            ));
        }
    }
    for env in ENVIRONMENTS {
        for (mode, _) in HELMFILE_MODES {
            out.push((
                format!("helmfile-{mode}-{env}"),
                helmfile_template(env, mode).to_string(),
            ));
        }
    }
    out
}

#[test]
fn every_chart_lints_with_its_defaults_and_each_environment() {
    for chart in CHARTS {
        let dir = format!("charts/{chart}");
        let mut args = vec!["lint", "--strict", dir.as_str()];
        args.extend_from_slice(first_install(chart));
        ok(&tool("helm"), &args);
        for env in ENVIRONMENTS {
            let values = format!("charts/environments/{env}/{chart}.yaml");
            let mut with_values = args.clone();
            with_values.extend(["--values", &values]);
            ok(&tool("helm"), &with_values);
        }
    }
}

#[test]
fn every_rendering_validates_strictly_and_every_pod_is_locked_down() {
    for (label, yaml) in renderings() {
        validate(label, yaml);
        let all = docs(yaml);
        assert!(!all.is_empty(), "{label} renders nothing");
        for doc in &all {
            check_pod_security(label, doc);
        }
    }
}

/// The pod template of a workload (or the pod itself), if it is one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match kind(doc) {
        "Pod" => doc.get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.get("spec")?.get("template")?.get("spec")
        }
        "CronJob" => doc
            .get("spec")?
            .get("jobTemplate")?
            .get("spec")?
            .get("template")?
            .get("spec"),
        _ => None,
    }
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k)?.as_sequence())
        .flatten()
        .collect()
}

fn check_pod_security(label: &str, doc: &Value) {
    let Some(spec) = pod_spec(doc) else { return };
    let what = format!("{label}: {} {}", kind(doc), name(doc));
    let pod = spec
        .get("securityContext")
        .unwrap_or_else(|| panic!("{what}: no pod securityContext"));
    assert_eq!(
        pod.get("runAsNonRoot").and_then(Value::as_bool),
        Some(true),
        "{what}: pod runAsNonRoot"
    );
    assert_eq!(
        str_at(pod, &["seccompProfile", "type"]),
        Some("RuntimeDefault"),
        "{what}: pod seccompProfile"
    );
    for c in containers(spec) {
        let what = format!("{what} container {}", str_at(c, &["name"]).unwrap_or("?"));
        let sc = c
            .get("securityContext")
            .unwrap_or_else(|| panic!("{what}: no securityContext"));
        assert_eq!(
            sc.get("allowPrivilegeEscalation").and_then(Value::as_bool),
            Some(false),
            "{what}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc.get("readOnlyRootFilesystem").and_then(Value::as_bool),
            Some(true),
            "{what}: readOnlyRootFilesystem"
        );
        let drop: Vec<&str> = sc
            .get("capabilities")
            .and_then(|c| c.get("drop"))
            .and_then(Value::as_sequence)
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(drop.contains(&"ALL"), "{what}: capabilities.drop ALL");
        assert!(
            sc.get("privileged").and_then(Value::as_bool) != Some(true),
            "{what}: privileged"
        );
        if let Some(user) = sc.get("runAsUser").and_then(Value::as_u64) {
            assert_ne!(user, 0, "{what}: runs as root");
        }
        for section in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c.get("resources")
                        .and_then(|r| r.get(section))
                        .and_then(|r| r.get(resource))
                        .is_some(),
                    "{what}: resources.{section}.{resource}"
                );
            }
        }
        for env in c
            .get("env")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let env_name = str_at(env, &["name"]).unwrap_or("").to_ascii_uppercase();
            if ["PASSWORD", "TOKEN", "SECRET"]
                .iter()
                .any(|w| env_name.contains(w))
            {
                assert!(
                    env.get("value").is_none() && env.get("valueFrom").is_some(),
                    "{what}: env {env_name} must come from a Secret (valueFrom), not a literal"
                );
            }
        }
    }
}

/// Secrets set through values, that must end up only in Secrets.
const PASSWORDS: [(&str, &str, &str); 3] = [
    ("storage", "auth.password", "pg-Pw-7d1c0e93"),
    ("monitoring", "grafana.adminPassword", "graf-Pw-52ab1f"),
    ("processing", "admin.token", "admin-Tk-9e44c2"),
];

#[test]
fn no_password_is_in_a_configmap_or_an_env_literal() {
    for (chart, key, secret) in PASSWORDS {
        let mut extra = vec!["--set".to_string(), format!("{key}={secret}")];
        if chart == "processing" {
            extra.extend(["--set".into(), "admin.enabled=true".into()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let yaml = template(chart, chart, &extra);
        let all = docs(&yaml);
        let mut in_secret = false;
        for doc in &all {
            let text = serde_yaml::to_string(doc).unwrap();
            match kind(doc) {
                "Secret" => {
                    // The value is in a Secret, base64 in data or plain in stringData.
                    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
                    in_secret |= text.contains(secret) || text.contains(&b64);
                }
                other => assert!(
                    !text.contains(secret),
                    "{chart}: the {key} value appears in {other} {}",
                    name(doc)
                ),
            }
        }
        assert!(in_secret, "{chart}: {key} is not in any Secret");
    }
    // And in every rendering: no env literal whose name says it is a secret (checked per
    // container by the security test), no ConfigMap key that looks like a password.
    for (label, yaml) in renderings() {
        for doc in docs(yaml).iter().filter(|d| kind(d) == "ConfigMap") {
            for (k, v) in doc
                .get("data")
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                let text = v.as_str().unwrap_or("").to_ascii_lowercase();
                for line in text.lines() {
                    let line = line.trim();
                    let looks_set = ["password:", "password=", "passwd:", "token:"]
                        .iter()
                        .any(|p| line.starts_with(p) && line.len() > p.len() + 1);
                    assert!(
                        !looks_set || line.contains("${") || line.contains("$__file"),
                        "{label}: ConfigMap {} key {k:?} sets a password: {line}",
                        name(doc)
                    );
                }
            }
        }
    }
}

#[test]
fn a_value_of_the_wrong_type_is_refused_with_its_key() {
    for (chart, key) in [
        ("processing", "replicas"),
        ("streaming", "kafka.replicas"),
        ("monitoring", "grafana.replicas"),
    ] {
        let set = format!("{key}=two");
        let chart_dir = format!("charts/{chart}");
        let (success, _, stderr) = run(
            &tool("helm"),
            &["template", chart, &chart_dir, "--set", &set],
        );
        assert!(!success, "{chart}: {set} was accepted");
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(leaf)
                && stderr.contains("integer"),
            "{chart}: {set} is refused without naming the key and the type:\n{stderr}"
        );
    }
}

/// The weir config in the processing release's ConfigMap.
fn weir_config(all: &[Value]) -> Value {
    let cm = find(all, "ConfigMap", "processing-weir-config");
    let text = str_at(cm, &["data", "weir.yaml"]).expect("weir.yaml in the config ConfigMap");
    serde_yaml::from_str(text).expect("weir.yaml parses")
}

/// `host:port` of a URL or address.
fn host_port(address: &str) -> (String, u16) {
    let rest = address.split("://").last().unwrap();
    let rest = rest.rsplit('@').next().unwrap();
    let hostport = rest.split(['/', '?']).next().unwrap();
    let (host, port) = hostport.rsplit_once(':').expect("an address with a port");
    (host.to_string(), port.parse().expect("a port number"))
}

/// Asserts a Service `host` exists with `port`.
fn assert_service(all: &[Value], what: &str, host: &str, port: u16) {
    let service = find(all, "Service", host);
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_u64))
        .collect();
    assert!(
        ports.contains(&(port as u64)),
        "{what}: Service {host} has ports {ports:?}, not {port}"
    );
}

fn env_of<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    container
        .get("env")?
        .as_sequence()?
        .iter()
        .find(|e| str_at(e, &["name"]) == Some(var))
}

fn workload_containers<'a>(all: &'a [Value], k: &str, n: &str) -> Vec<&'a Value> {
    containers(pod_spec(find(all, k, n)).expect("a pod template"))
}

#[test]
fn the_releases_reach_each_other_by_the_names_the_charts_create() {
    for env in ENVIRONMENTS {
        let all = docs(helmfile_template(env, "1.x"));
        let what = |s: &str| format!("{env}: {s}");

        // processing -> streaming (broker, registry) and storage (Postgres).
        let config = weir_config(&all);
        let brokers = config["kafka"]["brokers"].as_str().unwrap();
        for broker in brokers.split(',') {
            let (host, port) = host_port(broker);
            assert_service(&all, &what("processing kafka.brokers"), &host, port);
            assert!(host.starts_with("streaming-"), "{brokers}");
        }
        let (host, port) = host_port(config["registry"]["url"].as_str().unwrap());
        assert_service(&all, &what("processing registry.url"), &host, port);
        assert!(host.starts_with("streaming-"));
        let db = config["database"]["url"].as_str().unwrap();
        let (host, port) = host_port(db);
        assert_service(&all, &what("processing database.url"), &host, port);
        assert!(host.starts_with("storage-"));
        assert!(
            !db.split("://")
                .nth(1)
                .unwrap()
                .split('@')
                .next()
                .unwrap()
                .contains(':'),
            "{env}: the database URL carries a password: {db}"
        );

        // The Postgres password comes from the Secret the storage chart creates.
        let storage_secret = all
            .iter()
            .find(|d| kind(d) == "Secret" && name(d).starts_with("storage-"))
            .map(|d| name(d).to_string())
            .expect("the storage release's Secret");
        let weir_run = workload_containers(&all, "Deployment", "processing-weir");
        let pg = env_of(weir_run[weir_run.len() - 1], "PGPASSWORD")
            .unwrap_or_else(|| panic!("{env}: weir run has no PGPASSWORD"));
        assert_eq!(
            str_at(pg, &["valueFrom", "secretKeyRef", "name"]),
            Some(storage_secret.as_str()),
            "{env}: PGPASSWORD's Secret"
        );
        let secret = find(&all, "Secret", &storage_secret);
        let key = str_at(pg, &["valueFrom", "secretKeyRef", "key"]).unwrap();
        assert!(
            secret.get("data").and_then(|d| d.get(key)).is_some()
                || secret.get("stringData").and_then(|d| d.get(key)).is_some(),
            "{env}: Secret {storage_secret} has no key {key}"
        );

        // The registry (streaming) stores its schemas in storage's Postgres.
        let registry = workload_containers(&all, "Deployment", "streaming-registry");
        let url = env_of(registry[registry.len() - 1], "DATABASE_URL")
            .and_then(|e| str_at(e, &["value"]))
            .expect("the registry's DATABASE_URL");
        let (host, port) = host_port(url);
        assert_service(&all, &what("registry DATABASE_URL"), &host, port);

        // ingestion -> streaming.
        let ingest = workload_containers(&all, "Deployment", "ingestion-ingest");
        for var in ["KAFKA_BROKERS", "SCHEMA_REGISTRY_URL"] {
            let value = env_of(ingest[ingest.len() - 1], var)
                .and_then(|e| str_at(e, &["value"]))
                .unwrap_or_else(|| panic!("{env}: ingestion has no {var}"));
            for address in value.split(',') {
                let (host, port) = host_port(address);
                assert_service(&all, &what(&format!("ingestion {var}")), &host, port);
            }
        }

        // monitoring: AKHQ -> broker and registry; Grafana -> Prometheus; Prometheus
        // scrapes the pods processing annotates, on the port weir serves metrics on.
        let akhq = all
            .iter()
            .filter(|d| kind(d) == "ConfigMap" && name(d).starts_with("monitoring-akhq"))
            .map(|d| serde_yaml::to_string(&d["data"]).unwrap())
            .collect::<String>();
        assert!(
            akhq.contains("streaming-kafka:9092")
                && akhq.contains("http://streaming-registry:8081"),
            "{env}: AKHQ's config does not name the broker and the registry:\n{akhq}"
        );
        let grafana = all
            .iter()
            .filter(|d| kind(d) == "ConfigMap" && name(d).starts_with("monitoring-grafana"))
            .map(|d| serde_yaml::to_string(&d["data"]).unwrap())
            .collect::<String>();
        assert!(
            grafana.contains("http://monitoring-prometheus:9090"),
            "{env}: Grafana's datasource is not the Prometheus Service"
        );
        assert_service(
            &all,
            &what("grafana datasource"),
            "monitoring-prometheus",
            9090,
        );
        let template = &find(&all, "Deployment", "processing-weir")["spec"]["template"];
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/scrape"].as_str(),
            Some("true"),
            "{env}: weir pods are not marked for scraping"
        );
        let port = annotations["prometheus.io/port"].as_str().unwrap();
        let listen = config["http"]["listen"].as_str().unwrap();
        assert!(
            listen.ends_with(&format!(":{port}")),
            "{env}: the scrape port {port} is not weir's http.listen {listen}"
        );

        // Every Service selects pods that exist.
        check_selectors(&all, env);
    }
}

/// Each Service's selector matches the pod labels of some workload.
fn check_selectors(all: &[Value], env: &str) {
    let pods: Vec<BTreeMap<String, String>> = all
        .iter()
        .filter_map(|d| {
            let labels = match kind(d) {
                "Pod" => d["metadata"].get("labels"),
                _ => d
                    .get("spec")?
                    .get("template")?
                    .get("metadata")?
                    .get("labels"),
            }?;
            Some(
                labels
                    .as_mapping()?
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap_or("").to_string(),
                            v.as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    for service in all.iter().filter(|d| kind(d) == "Service") {
        let Some(selector) = service["spec"].get("selector").and_then(Value::as_mapping) else {
            continue;
        };
        let found = pods.iter().any(|labels| {
            selector.iter().all(|(k, v)| {
                labels.get(k.as_str().unwrap_or("")).map(String::as_str) == v.as_str()
            })
        });
        assert!(found, "{env}: Service {} selects no pod", name(service));
    }
}

#[test]
fn a_guest_set_with_set_file_lands_byte_for_byte_in_the_guests_configmap() {
    // Helm checks values against values.schema.json as YAML, which a raw binary cannot be,
    // so a guest goes in as base64 text (`--set-file ...=<(base64 -w0 tickers.wasm)`).
    let wasm = Path::new(GUEST_DIR).join("tickers.wasm");
    let want = std::fs::read(&wasm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b64 = dir.path().join("tickers.wasm.b64");
    std::fs::write(
        &b64,
        base64::engine::general_purpose::STANDARD.encode(&want),
    )
    .unwrap();
    let set = format!("guests.files.tickers\\.wasm={}", b64.display());
    let all = docs(&template("processing", "processing", &["--set-file", &set]));
    let cm = find(&all, "ConfigMap", "processing-weir-guests");
    let data = str_at(cm, &["binaryData", "tickers.wasm"]).expect("binaryData tickers.wasm");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        hex::encode(sha2::Sha256::digest(&want)),
        "the guest in the ConfigMap is not the file"
    );
    // The pipelines of tickers.wasm run it from the mounted ConfigMap, which is a directory
    // mount (so an upgrade swaps it in place) and no checksum of it restarts the pods; the
    // options pipeline still runs the image's options.wasm.
    let config = weir_config(&all);
    let guests: BTreeSet<&str> = config["pipelines"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["guest"].as_str().unwrap())
        .collect();
    let dir = config["guests"]["dir"].as_str().unwrap_or("");
    let paths: BTreeSet<String> = guests
        .iter()
        .map(|guest| {
            if guest.starts_with('/') {
                guest.to_string()
            } else {
                format!("{dir}/{guest}")
            }
        })
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/etc/weir/guests/tickers.wasm".to_string(),
            "/opt/weir/guests/options.wasm".to_string(),
        ]),
        "the pipelines' guests"
    );
    let deployment = find(&all, "Deployment", "processing-weir");
    let mounts = serde_yaml::to_string(&deployment["spec"]["template"]["spec"]).unwrap();
    assert!(mounts.contains("processing-weir-guests"));
    assert!(
        !mounts.contains("subPath: tickers.wasm"),
        "a subPath mount never sees updates"
    );
    let annotations =
        serde_yaml::to_string(&deployment["spec"]["template"]["metadata"]["annotations"]).unwrap();
    assert!(
        !annotations.contains(&hex::encode(sha2::Sha256::digest(&want))),
        "a checksum of the guests would restart the pods"
    );
}

#[test]
fn the_rendered_weir_config_is_one_weir_accepts() {
    // The processing release's weir.yaml, with the image's paths pointed at this checkout,
    // through weir's own config check.
    let all = docs(helmfile_template("production", "1.x"));
    let cm = find(&all, "ConfigMap", "processing-weir-config");
    let text = str_at(cm, &["data", "weir.yaml"]).unwrap();
    let text = text
        .replace("/opt/weir/guests", GUEST_DIR)
        .replace("/etc/weir/guests", GUEST_DIR);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, text).unwrap();
    let out = weir(&[
        "config",
        "render",
        "--check",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "weir refuses the chart's config:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pipelines of a weir config file as weir itself renders it (`weir config render`,
/// tera first), each guest reduced to its file name (the chart's are paths in the image).
fn rendered_pipelines(path: &Path, env: &[(&str, &str)]) -> Vec<Value> {
    let out = weir_tests::weir_env(
        &["config", "render", "--config", path.to_str().unwrap()],
        env,
    );
    assert!(
        out.status.success(),
        "weir config render {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_yaml::from_slice(&out.stdout).expect("the rendered config parses");
    config["pipelines"]
        .as_sequence()
        .expect("pipelines")
        .iter()
        .map(|p| {
            let mut p = p.clone();
            let file = p["guest"].as_str().unwrap().rsplit('/').next().unwrap();
            p["guest"] = Value::from(file.to_string());
            p
        })
        .collect()
}

#[test]
fn the_processing_release_runs_the_demos_market_pipelines_with_their_lookups() {
    // tests/demo/weir.yaml is the reference: after weir's own rendering (tera, which must
    // leave the lookups' $1 and $2 alone), each environment's pipelines are the demo's, key
    // for key, the guests being the image's files of the same names.
    let demo = rendered_pipelines(
        &repo_root().join("tests/demo/weir.yaml"),
        &[("WEIR_MAX_LATENESS", "1h")],
    );
    let names = |pipelines: &[Value]| -> Vec<String> {
        pipelines
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&demo), ["stocks", "crypto", "currency", "options"]);
    for env in ENVIRONMENTS {
        let all = docs(helmfile_template(env, "1.x"));
        let cm = find(&all, "ConfigMap", "processing-weir-config");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, str_at(cm, &["data", "weir.yaml"]).unwrap()).unwrap();
        let chart = rendered_pipelines(&path, &[]);
        assert_eq!(names(&chart), names(&demo), "{env}: the pipelines");
        for (ours, theirs) in chart.iter().zip(&demo) {
            assert_eq!(
                ours,
                theirs,
                "{env}: pipeline {} is not the demo's:\n{}\nthe demo's:\n{}",
                ours["name"].as_str().unwrap(),
                serde_yaml::to_string(ours).unwrap(),
                serde_yaml::to_string(theirs).unwrap()
            );
        }
        // What the demo's pipelines have, spelled out.
        let by_name = |n: &str| {
            chart
                .iter()
                .find(|p| p["name"].as_str() == Some(n))
                .unwrap()
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_sequence()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect()
        };
        for class in ["stocks", "crypto", "currency"] {
            let p = by_name(class);
            assert_eq!(p["guest"].as_str(), Some("tickers.wasm"));
            assert_eq!(
                strings(&p["tables"]),
                [
                    format!("ticks_{class}"),
                    "candles".into(),
                    "windows".into(),
                    "window_watermarks".into()
                ],
                "{env}: {class}"
            );
            let config = &p["config"];
            assert_eq!(config["windows"].as_str(), Some("1m,5m,15m"), "{env}");
            assert_eq!(config["window_hop"].as_str(), Some("1m"), "{env}");
            assert_eq!(config["window_close_offset"].as_str(), Some("5s"), "{env}");
        }
        let stocks = &by_name("stocks")["config"];
        assert_eq!(stocks["impute"].as_str(), Some("forward_fill"));
        assert_eq!(stocks["impute_fields"].as_str(), Some("bid,ask"));
        let crypto = &by_name("crypto")["config"];
        assert_eq!(crypto["impute"].as_str(), Some("trailing_mean"));
        assert_eq!(crypto["impute_fields"].as_str(), Some("last_size"));
        assert_eq!(crypto["impute_window"].as_u64(), Some(20));
        assert!(by_name("currency")["config"].get("impute").is_none());
        let options = by_name("options");
        assert_eq!(options["topic"].as_str(), Some("tickers.options"));
        assert_eq!(options["guest"].as_str(), Some("options.wasm"));
        assert_eq!(strings(&options["tables"]), ["option_trades"]);
        assert_eq!(options["dedup"]["key"].as_str(), Some("event_id"));
        let lookups = options["lookups"]
            .as_mapping()
            .expect("the options lookups");
        assert_eq!(lookups.len(), 2, "{env}: {lookups:?}");
        let underlying = options["lookups"]["underlying"].as_str().unwrap();
        assert!(
            underlying.contains("FROM ticks_stocks")
                && underlying.contains("symbol = $1")
                && underlying.contains("event_time <= $2"),
            "{env}: {underlying}"
        );
        let rate = options["lookups"]["rate"].as_str().unwrap();
        assert!(
            rate.contains("FROM rates") && rate.contains("day <= $1"),
            "{env}: {rate}"
        );
    }
}

#[test]
fn a_pipelines_lookups_are_sql_by_name_in_the_processing_schema() {
    let dir = tempfile::tempdir().unwrap();
    let values = |name: &str, lookups: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "pipelines:\n  - {{name: options, topic: tickers.options, guest: options.wasm, \
                 tables: [option_trades], lookups: {lookups}}}\n"
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    let good = values(
        "good.yaml",
        "{rate: 'SELECT rate FROM rates WHERE day <= $1'}",
    );
    let all = docs(&template("processing", "processing", &["--values", &good]));
    let config = weir_config(&all);
    assert_eq!(
        config["pipelines"][0]["lookups"]["rate"].as_str(),
        Some("SELECT rate FROM rates WHERE day <= $1")
    );
    for (file, lookups) in [
        ("list.yaml", "{rate: [SELECT 1]}"),
        ("empty.yaml", "{rate: ''}"),
    ] {
        let bad = values(file, lookups);
        let (success, _, stderr) = run(
            &tool("helm"),
            &[
                "template",
                "processing",
                "charts/processing",
                "--values",
                &bad,
            ],
        );
        assert!(
            !success
                && stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains("lookups"),
            "lookups: {lookups} is not refused naming lookups:\n{stderr}"
        );
    }
}

/// The topics the streaming release's topics Job creates, with their partitions.
fn created_topics(all: &[Value]) -> BTreeMap<String, u64> {
    let job = find(all, "Job", "streaming-topics");
    let script = pod_spec(job).unwrap()["containers"][0]["command"][2]
        .as_str()
        .expect("the topics script");
    let mut topics = BTreeMap::new();
    let mut topic = None;
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "--topic") {
            topic = Some(words[at + 1].trim_matches('\'').to_string());
        }
        if let Some(at) = words.iter().position(|w| *w == "--partitions") {
            let topic = topic.take().expect("--partitions after --topic");
            topics.insert(topic, words[at + 1].parse().expect("a partition count"));
        }
    }
    topics
}

#[test]
fn the_streaming_release_creates_every_topic_and_registers_every_schema_the_pipeline_uses() {
    // Every schemas/TOPIC.avsc goes into the image (/opt/weir/schemas), whose schemas Job
    // pushes it as TOPIC-value; the topics Job creates TOPIC, with the partitions of the
    // others.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY schemas /opt/weir/schemas"));
    let schemas: BTreeSet<String> = std::fs::read_dir(repo_root().join("schemas"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".avsc").map(str::to_string))
        .collect();
    assert!(schemas.contains("tickers.options"), "{schemas:?}");
    for (env, partitions) in [("local", 3), ("production", 6)] {
        let all = docs(helmfile_template(env, "1.x"));
        let push = serde_yaml::to_string(
            &pod_spec(find(&all, "Job", "streaming-schemas")).unwrap()["containers"][0]["command"],
        )
        .unwrap();
        assert!(
            push.contains("- push") && push.contains("- /opt/weir/schemas"),
            "{env}: {push}"
        );
        let topics = created_topics(&all);
        for topic in &schemas {
            assert_eq!(
                topics.get(topic),
                Some(&partitions),
                "{env}: the topics Job does not create {topic} with {partitions} partitions: {topics:?}"
            );
        }
        // What the pipelines read and emit.
        let config = weir_config(&all);
        for p in config["pipelines"].as_sequence().unwrap() {
            let mut used: Vec<&str> = p["topic"].as_str().into_iter().collect();
            for list in ["topics", "topics_out"] {
                if let Some(more) = p.get(list).and_then(Value::as_sequence) {
                    used.extend(
                        more.iter()
                            .filter_map(|t| t.as_str().or(t["topic"].as_str())),
                    );
                }
            }
            for topic in used {
                assert!(
                    topics.contains_key(topic),
                    "{env}: pipeline {} uses {topic}, which the topics Job does not create",
                    p["name"].as_str().unwrap()
                );
            }
        }
    }
}

#[test]
fn the_storage_release_applies_every_migration_and_they_create_what_the_pipelines_use() {
    let dir = repo_root().join("schemas/postgres");
    let want: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("sql"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    for file in ["005_options.sql", "006_analytics.sql"] {
        assert!(want.contains_key(file), "no {file} in {}", dir.display());
    }
    let sql = want.values().cloned().collect::<String>().to_lowercase();
    let creates = |table: &str| {
        ["create table ", "create table if not exists "]
            .iter()
            .any(|c| sql.contains(&format!("{c}{table} (")))
    };
    for env in ENVIRONMENTS {
        let all = docs(helmfile_template(env, "1.x"));
        // Byte for byte (weir migrate records each file's sha256), every one of them.
        let cm = find(&all, "ConfigMap", "storage-migrations");
        let got: BTreeMap<String, String> = cm["data"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{env}: the migrations"
        );
        assert!(
            got == want,
            "{env}: a migration in the ConfigMap is not the file"
        );
        let job =
            serde_yaml::to_string(pod_spec(find(&all, "Job", "storage-migrate")).unwrap()).unwrap();
        assert!(
            job.contains("name: storage-migrations") && job.contains("mountPath: /migrations"),
            "{env}: the migrate Job does not mount the migrations"
        );
        // The tables the pipelines write and their lookups read.
        let config = weir_config(&all);
        for p in config["pipelines"].as_sequence().unwrap() {
            let mut tables: Vec<String> = p["tables"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            for (_, query) in p
                .get("lookups")
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                let query = query.as_str().unwrap();
                let from = query.split("FROM ").nth(1).expect("a lookup reads a table");
                tables.push(from.split_whitespace().next().unwrap().to_string());
            }
            for table in tables {
                assert!(
                    creates(&table),
                    "{env}: pipeline {} uses {table}, which no migration creates",
                    p["name"].as_str().unwrap()
                );
            }
        }
    }
}

#[test]
fn the_image_has_what_the_charts_use() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for path in [
        "/usr/local/bin/weir",
        "/opt/weir/guests",
        "/opt/weir/schemas",
        "USER 10001:10001",
    ] {
        assert!(dockerfile.contains(path), "the Dockerfile has no {path}");
    }
    // Every guest the default pipelines name is built into the image.
    let all = docs(&template("processing", "processing", &[]));
    let config = weir_config(&all);
    let mut built_in = BTreeSet::new();
    for p in config["pipelines"].as_sequence().unwrap() {
        let guest = p["guest"].as_str().unwrap();
        assert!(
            guest.starts_with("/opt/weir/guests/"),
            "{guest}: not the image's"
        );
        let file = guest.rsplit('/').next().unwrap();
        let krate = file.trim_end_matches(".wasm");
        assert!(
            dockerfile.contains(&format!(" -p {krate}")),
            "the image does not build the {krate} guest"
        );
        assert!(
            dockerfile.contains(&format!("target/wasm32-wasip2/release/{file}")),
            "the image does not install {file} in /opt/weir/guests"
        );
        built_in.insert(file.to_string());
    }
    assert_eq!(
        built_in,
        BTreeSet::from(["tickers.wasm".to_string(), "options.wasm".to_string()]),
        "the default pipelines' guests"
    );
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for kept in ["host", "guests", "wit", "schemas", "Cargo.lock"] {
        assert!(
            !ignore.lines().any(|l| l.trim() == kept),
            ".dockerignore drops {kept}"
        );
    }
}

/// Every container image of a rendering, with the pod it is in.
fn images(all: &[Value]) -> Vec<(String, String)> {
    all.iter()
        .filter_map(|d| Some((d, pod_spec(d)?)))
        .flat_map(|(d, spec)| {
            containers(spec).into_iter().map(move |c| {
                (
                    format!("{} {}", kind(d), name(d)),
                    str_at(c, &["image"]).unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// The images that are not weir's: Postgres, Kafka, AKHQ, Prometheus, Grafana.
const THIRD_PARTY: [&str; 5] = [
    "postgres:",
    "apache/kafka:",
    "tchiotludo/akhq:",
    "prom/prometheus:",
    "grafana/grafana:",
];

#[test]
fn production_needs_an_image_repository_and_every_release_gets_the_one_image() {
    for (mode, vars) in HELMFILE_MODES {
        // Without one, or with the bare default, production refuses to render.
        for repository in ["", "weir"] {
            let mut env = helmfile_env("production", vars);
            env.retain(|(k, _)| *k != "WEIR_IMAGE_REPOSITORY");
            env.push(("WEIR_IMAGE_REPOSITORY", repository));
            let (success, _, stderr) = run_env(
                &tool("helmfile"),
                &["--environment", "production", "template", "--skip-deps"],
                &env,
            );
            assert!(
                !success,
                "{mode}: production rendered with image.repository {repository:?}"
            );
            assert!(
                stderr.contains("image.repository is required in production"),
                "{mode}: {stderr}"
            );
        }
        // With a registry, a repository and a digest: every weir container runs exactly
        // that image, and every pod running it has the pull secret.
        let digest = format!("sha256:{}", "5e".repeat(32));
        let set = format!(
            "image.registry=ghcr.io,image.repository=acme/weir,image.digest={digest},image.pullSecrets[0]=acme-pull"
        );
        let all = docs(&helmfile("production", vars, &["--state-values-set", &set]));
        let want = format!("ghcr.io/acme/weir@{digest}");
        let mut weir_pods = BTreeSet::new();
        for (pod, image) in images(&all) {
            if THIRD_PARTY.iter().any(|t| image.starts_with(t)) {
                continue;
            }
            assert_eq!(image, want, "{mode}: {pod}");
            weir_pods.insert(pod);
        }
        for workload in [
            "Deployment processing-weir",
            "Deployment ingestion-ingest",
            "Job storage-migrate",
            "Deployment streaming-registry",
            "Job streaming-schemas",
        ] {
            assert!(
                weir_pods.contains(workload),
                "{mode}: {workload} runs no weir image"
            );
        }
        for doc in all
            .iter()
            .filter(|d| weir_pods.contains(&format!("{} {}", kind(d), name(d))))
        {
            let secrets =
                serde_yaml::to_string(&pod_spec(doc).unwrap()["imagePullSecrets"]).unwrap();
            assert!(
                secrets.contains("acme-pull"),
                "{mode}: {} {} has no pull secret",
                kind(doc),
                name(doc)
            );
        }
    }
    // Local runs the image the README builds and loads: weir:<appVersion>.
    let all = docs(helmfile_template("local", "1.x"));
    for (pod, image) in images(&all) {
        if !THIRD_PARTY.iter().any(|t| image.starts_with(t)) {
            assert_eq!(image, "weir:0.1.0", "{pod}");
        }
    }
}

/// The guests ConfigMap's files, by name, as their sha256.
fn guests_in(all: &[Value]) -> BTreeMap<String, String> {
    let cm = find(all, "ConfigMap", "processing-weir-guests");
    cm.get("binaryData")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            (
                k.as_str().unwrap().to_string(),
                hex::encode(sha2::Sha256::digest(bytes)),
            )
        })
        .collect()
}

#[test]
fn guests_given_through_helmfile_are_still_there_after_the_next_sync() {
    let wasm = Path::new(GUEST_DIR).join("tickers.wasm");
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(&wasm).unwrap()));
    // The documented way: the environment's `guests:`, here as a state values file.
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("guests.yaml");
    std::fs::write(
        &values,
        format!("guests:\n  tickers.wasm: {}\n", wasm.display()),
    )
    .unwrap();
    let values = values.to_str().unwrap();
    for (mode, vars) in HELMFILE_MODES {
        // `helmfile sync` twice: each applies what `template` renders and passes what
        // `write-values` writes; the second must not lose what the first delivered.
        for sync in 1..=2 {
            let all = docs(&helmfile("local", vars, &["--state-values-file", values]));
            assert_eq!(
                guests_in(&all),
                BTreeMap::from([("tickers.wasm".to_string(), want.clone())]),
                "{mode}: sync {sync}: the guests ConfigMap"
            );
            let config = weir_config(&all);
            for p in config["pipelines"].as_sequence().unwrap() {
                let guest = p["guest"].as_str().unwrap();
                if p["name"].as_str() == Some("options") {
                    // Not delivered: the image's.
                    assert_eq!(
                        guest, "/opt/weir/guests/options.wasm",
                        "{mode}: sync {sync}"
                    );
                    continue;
                }
                assert!(
                    guest == "/etc/weir/guests/tickers.wasm"
                        || (guest == "tickers.wasm"
                            && config["guests"]["dir"].as_str() == Some("/etc/weir/guests")),
                    "{mode}: sync {sync}: a pipeline runs {guest}, not the delivered guest"
                );
            }
            let out = tempfile::tempdir().unwrap();
            let template = format!("{}/{{{{ .Release.Name }}}}.yaml", out.path().display());
            let args = [
                "--environment",
                "local",
                "--state-values-file",
                values,
                "write-values",
                "--skip-deps",
                "--output-file-template",
                &template,
            ];
            ok_env(&tool("helmfile"), &args, &helmfile_env("local", vars));
            let release: Value = serde_yaml::from_str(
                &std::fs::read_to_string(out.path().join("processing.yaml")).unwrap(),
            )
            .unwrap();
            let b64 = release["guests"]["files"]["tickers.wasm"]
                .as_str()
                .unwrap_or_else(|| panic!("{mode}: sync {sync}: no guest in the release's values"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(bytes)),
                want,
                "{mode}: sync {sync}"
            );
        }
    }
    // Without guests, the ConfigMap is empty and the pipelines run the image's.
    assert!(guests_in(&docs(helmfile_template("local", "1.x"))).is_empty());
}

/// The data of the Secret `name` in a rendering.
fn secret_data(all: &[Value], name: &str) -> String {
    serde_yaml::to_string(&find(all, "Secret", name)["data"]).unwrap()
}

#[test]
fn no_render_makes_up_a_secret_and_a_first_install_without_one_is_refused() {
    // The charts' Secrets, with the value that fills them and the message without it.
    let cases: [(&str, &str, &[&str], &str, &str); 3] = [
        (
            "storage",
            "storage-postgres",
            &[],
            "auth.password",
            "storage: no Postgres password: give auth.password for the first install (with helmfile: WEIR_POSTGRES_PASSWORD)",
        ),
        (
            "monitoring",
            "monitoring-grafana",
            &[],
            "grafana.adminPassword",
            "monitoring: no Grafana admin password: give grafana.adminPassword for the first install (with helmfile: WEIR_GRAFANA_PASSWORD)",
        ),
        (
            "processing",
            "processing-weir-admin",
            &["--set", "admin.enabled=true"],
            "admin.token",
            "processing: admin.enabled needs a token: give admin.token for the first install (with helmfile: WEIR_ADMIN_TOKEN)",
        ),
    ];
    for (chart, secret, extra, key, refusal) in cases {
        let dir = format!("charts/{chart}");
        let mut args = vec!["template", chart, dir.as_str()];
        args.extend_from_slice(extra);
        let (success, _, stderr) = run(&tool("helm"), &args);
        assert!(!success, "{chart}: rendered a Secret without {key}");
        assert!(stderr.contains(refusal), "{chart}: {stderr}");
        let set = format!("{key}=s3cret-value");
        args.extend(["--set", &set]);
        let first = secret_data(&docs(&ok(&tool("helm"), &args)), secret);
        let second = secret_data(&docs(&ok(&tool("helm"), &args)), secret);
        assert_eq!(first, second, "{chart}: two renders, two Secrets");
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cret-value");
        assert!(first.contains(&b64), "{chart}: {first}");
    }
    // Through helmfile: production names the variable of a first install; two renders
    // give the same Secrets.
    let mut env = helmfile_env("production", &[]);
    env.retain(|(k, _)| *k != "WEIR_POSTGRES_PASSWORD");
    let (success, _, stderr) = run_env(
        &tool("helmfile"),
        &["--environment", "production", "template", "--skip-deps"],
        &env,
    );
    assert!(
        !success && stderr.contains("WEIR_POSTGRES_PASSWORD"),
        "{stderr}"
    );
    for env in ENVIRONMENTS {
        let again = docs(&helmfile(env, &[], &[]));
        let first = docs(helmfile_template(env, "0.x"));
        for secret in ["storage-postgres", "monitoring-grafana"] {
            assert_eq!(
                secret_data(&first, secret),
                secret_data(&again, secret),
                "{env}: {secret}"
            );
        }
    }
}

#[test]
fn the_charts_do_what_well_kept_charts_do() {
    for chart in CHARTS {
        let meta: Value = serde_yaml::from_str(
            &std::fs::read_to_string(repo_root().join(format!("charts/{chart}/Chart.yaml")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta["kubeVersion"].as_str(),
            Some(">=1.29.0-0"),
            "{chart}: Chart.yaml kubeVersion"
        );
    }
    for env in ENVIRONMENTS {
        let all = docs(helmfile_template(env, "1.x"));
        let accounts: BTreeMap<&str, &Value> = all
            .iter()
            .filter(|d| kind(d) == "ServiceAccount")
            .map(|d| (name(d), d))
            .collect();
        for doc in &all {
            let what = format!("{env}: {} {}", kind(doc), name(doc));
            // Hook Jobs go once they succeed.
            if let Some(hook) = str_at(doc, &["metadata", "annotations", "helm.sh/hook"]) {
                let policy = str_at(
                    doc,
                    &["metadata", "annotations", "helm.sh/hook-delete-policy"],
                )
                .unwrap_or("");
                assert!(
                    policy.split(',').any(|p| p == "hook-succeeded")
                        && policy.split(',').any(|p| p == "before-hook-creation"),
                    "{what} ({hook}): hook-delete-policy {policy:?}"
                );
            }
            // A ServiceAccount of its own, without a token unless it uses the API.
            let Some(spec) = pod_spec(doc) else { continue };
            let account = str_at(spec, &["serviceAccountName"])
                .unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
            let sa = accounts
                .get(account)
                .unwrap_or_else(|| panic!("{what}: ServiceAccount {account} is not rendered"));
            let uses_api = account.ends_with("-prometheus");
            for (owner, automount) in [
                ("pod", spec.get("automountServiceAccountToken")),
                ("ServiceAccount", sa.get("automountServiceAccountToken")),
            ] {
                assert_eq!(
                    automount.and_then(Value::as_bool),
                    Some(uses_api),
                    "{what}: {owner} automountServiceAccountToken"
                );
            }
        }
        // AKHQ: no admin rights for anonymous users, no JMX.
        let akhq = find(&all, "ConfigMap", "monitoring-akhq");
        let app: Value =
            serde_yaml::from_str(str_at(akhq, &["data", "application.yml"]).unwrap()).unwrap();
        let group = app["akhq"]["security"]["default-group"].as_str();
        assert!(
            matches!(group, Some("reader" | "no-roles")),
            "{env}: AKHQ default-group {group:?}"
        );
        let jvm = str_at(akhq, &["data", "jvm.options"]).unwrap();
        assert!(!jvm.contains("jmxremote"), "{env}: AKHQ opens JMX: {jvm}");
        let akhq_pod = workload_containers(&all, "Deployment", "monitoring-akhq");
        assert_eq!(
            env_of(akhq_pod[0], "JVM_OPTS_FILE").and_then(|e| str_at(e, &["value"])),
            Some("/etc/akhq/jvm.options"),
            "{env}: AKHQ reads the image's jvm.options (unauthenticated JMX)"
        );
        // Kafka: its start counts once the node is in sync again; its cluster id is this
        // install's, kept, and not the old fixed default.
        let kafka = workload_containers(&all, "StatefulSet", "streaming-kafka");
        let startup = serde_yaml::to_string(&kafka[0]["startupProbe"]).unwrap();
        assert!(
            startup.contains("in-sync.sh"),
            "{env}: Kafka's startup probe: {startup}"
        );
        let id = find(&all, "ConfigMap", "streaming-kafka-cluster-id");
        assert_eq!(
            str_at(id, &["metadata", "annotations", "helm.sh/resource-policy"]),
            Some("keep"),
            "{env}: the cluster id goes with the volumes"
        );
        let cluster_id = str_at(id, &["data", "cluster-id"]).unwrap();
        assert_ne!(
            cluster_id, "d2Vpci1rcmFmdC1jbHVzdA",
            "{env}: the fixed default cluster id"
        );
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cluster_id)
            .unwrap_or_else(|e| panic!("{env}: cluster id {cluster_id}: {e}"));
        assert_eq!(bytes.len(), 16, "{env}: cluster id {cluster_id}");
        let from = env_of(kafka[0], "KAFKA_CLUSTER_ID").unwrap();
        assert_eq!(
            str_at(from, &["valueFrom", "configMapKeyRef", "name"]),
            Some("streaming-kafka-cluster-id")
        );
    }
    // Two installs, two cluster ids.
    let a = docs(&template("streaming", "streaming", &[]));
    let b = docs(&template("streaming", "streaming", &[]));
    let id = |all: &[Value]| {
        str_at(
            find(all, "ConfigMap", "streaming-kafka-cluster-id"),
            &["data", "cluster-id"],
        )
        .unwrap()
        .to_string()
    };
    assert_ne!(id(&a), id(&b));
}

#[test]
fn kafkas_startup_check_waits_until_the_node_is_in_sync() {
    // The script the startup probe runs, against a stand-in for kafka-topics.sh that prints
    // what a cluster would (the format of Kafka 3.8's --describe).
    let all = docs(&template("streaming", "streaming", &[]));
    let script = str_at(
        find(&all, "ConfigMap", "streaming-kafka"),
        &["data", "in-sync.sh"],
    )
    .unwrap()
    .to_string();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(dir.path().join("in-sync.sh"), &script).unwrap();
    let check = |described: &str, node: &str| -> bool {
        let tool = bin.join("kafka-topics.sh");
        std::fs::write(
            &tool,
            format!("#!/bin/bash\ncat <<'OUT'\n{described}\nOUT\n"),
        )
        .unwrap();
        Command::new("chmod").arg("+x").arg(&tool).status().unwrap();
        Command::new("bash")
            .arg(dir.path().join("in-sync.sh"))
            .env("KAFKA_HOME", dir.path())
            .env("POD_NAME", format!("streaming-kafka-{node}"))
            .output()
            .unwrap()
            .status
            .success()
    };
    let line = |partition: u32, replicas: &str, isr: &str| {
        format!(
            "\tTopic: tickers.stocks\tTopicId: 3x0\tPartition: {partition}\tLeader: 0\tReplicas: {replicas}\tIsr: {isr}\tElr: \tLastKnownElr: "
        )
    };
    // Nothing under-replicated: in sync.
    assert!(check("", "1"));
    // Node 1 missing from an ISR it belongs to: not yet.
    assert!(!check(&line(0, "0,1,2", "0,2"), "1"));
    // Under-replicated, but because of another node: this one is in sync.
    assert!(check(&line(0, "0,1,2", "0,1"), "1"));
    // Node ids are compared whole (node 1 is not in "11").
    assert!(!check(&line(3, "1,11,2", "11,2"), "1"));
    assert!(check(
        &[line(3, "1,11,2", "1,2"), line(4, "10,11,2", "10,2")].join("\n"),
        "1"
    ));
}

#[test]
fn tls_and_credentials_come_from_secrets_and_weir_accepts_the_config() {
    let values = [
        "kafka.tls.enabled=true",
        "kafka.tls.caSecret=kafka-ca",
        "kafka.sasl.mechanism=SCRAM-SHA-512",
        "kafka.sasl.username=weir",
        "kafka.sasl.passwordSecret.name=kafka-sasl",
        "registry.url=https://registry.example:8081",
        "registry.caSecret=registry-ca",
        "registry.basicAuthSecret.name=registry-auth",
        "database.tls.sslmode=verify-full",
        "database.tls.secret=postgres-tls",
        "database.tls.clientCertificate=true",
    ];
    let extra: Vec<&str> = values.iter().flat_map(|v| ["--set", *v]).collect();
    let yaml = template("processing", "processing", &extra);
    validate("processing-tls", &yaml);
    let all = docs(&yaml);
    for doc in &all {
        check_pod_security("processing-tls", doc);
    }
    let weir_container = workload_containers(&all, "Deployment", "processing-weir")[0];
    for (var, secret, key) in [
        ("KAFKA_SASL_PASSWORD", "kafka-sasl", "password"),
        (
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
            "registry-auth",
            "userInfo",
        ),
    ] {
        let env = env_of(weir_container, var).unwrap_or_else(|| panic!("no env {var}"));
        assert_eq!(
            str_at(env, &["valueFrom", "secretKeyRef", "name"]),
            Some(secret)
        );
        assert_eq!(
            str_at(env, &["valueFrom", "secretKeyRef", "key"]),
            Some(key)
        );
    }
    let deployment = find(&all, "Deployment", "processing-weir");
    let volumes =
        serde_yaml::to_string(&deployment["spec"]["template"]["spec"]["volumes"]).unwrap();
    for secret in ["kafka-ca", "registry-ca", "postgres-tls"] {
        assert!(
            volumes.contains(&format!("secretName: {secret}")),
            "{volumes}"
        );
    }

    // The ConfigMap's weir.yaml, with the Secrets' files where the pod mounts them, loads in
    // weir, and the credentials come from the environment.
    let ca = weir_tests::TestCa::new();
    let (cert, key) = ca.issue("weir", &[]);
    let tls = tempfile::tempdir().unwrap();
    for (dir, files) in [
        (
            "database",
            vec![
                ("ca.crt", ca.cert()),
                ("tls.crt", cert.clone()),
                ("tls.key", key.clone()),
            ],
        ),
        ("kafka", vec![("ca.crt", ca.cert())]),
        ("registry", vec![("ca.crt", ca.cert())]),
    ] {
        std::fs::create_dir(tls.path().join(dir)).unwrap();
        for (name, from) in files {
            std::fs::copy(from, tls.path().join(dir).join(name)).unwrap();
        }
    }
    let cm = find(&all, "ConfigMap", "processing-weir-config");
    let text = str_at(cm, &["data", "weir.yaml"])
        .unwrap()
        .replace("/opt/weir/guests", GUEST_DIR)
        .replace("/etc/weir/guests", GUEST_DIR)
        .replace("/etc/weir/tls", tls.path().to_str().unwrap());
    assert!(!text.contains("s3cr"), "{text}");
    let path = tls.path().join("weir.yaml");
    std::fs::write(&path, text).unwrap();
    let out = weir_tests::weir_env(
        &["config", "render", "--config", path.to_str().unwrap()],
        &[
            ("KAFKA_SASL_PASSWORD", "s3cr\"et"),
            ("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "weir:s3cr:et"),
        ],
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_yaml::from_str(&rendered).unwrap();
    let props = &config["kafka"]["properties"];
    assert_eq!(props["security.protocol"].as_str(), Some("SASL_SSL"));
    assert_eq!(props["sasl.mechanism"].as_str(), Some("SCRAM-SHA-512"));
    assert_eq!(props["sasl.password"].as_str(), Some("s3cr\"et"));
    assert_eq!(
        config["registry"]["basic_auth_user_info"].as_str(),
        Some("weir:s3cr:et")
    );
    assert_eq!(config["database"]["sslmode"].as_str(), Some("verify-full"));
    let out = weir_tests::weir_env(
        &[
            "config",
            "render",
            "--check",
            "--config",
            path.to_str().unwrap(),
        ],
        &[
            ("KAFKA_SASL_PASSWORD", "s3cr\"et"),
            ("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "weir:s3cr:et"),
        ],
    );
    assert!(
        out.status.success(),
        "weir refuses the chart's TLS config:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod labels of a workload named `"Kind name"`.
fn pod_labels<'a>(all: &'a [Value], workload: &str) -> &'a Value {
    let (k, n) = workload.split_once(' ').unwrap();
    &find(all, k, n)["spec"]["template"]["metadata"]["labels"]
}

/// Whether a label selector (matchLabels only, as the charts write them) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(selector.get("matchExpressions").is_none(), "{selector:?}");
    selector
        .get("matchLabels")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the NetworkPolicies of `all` let a pod labelled `from` reach one labelled `to`
/// (both in the releases' namespace) on TCP `port`: the policies selecting `to` let it in
/// and those selecting `from` let it out (a pod no policy of a direction selects is open
/// in that direction).
fn np_allows(all: &[Value], from: &Value, to: &Value, port: u64) -> bool {
    let lets = |pod: &Value, peer: &Value, direction: &str, peers: &str| {
        let policies: Vec<&Value> = all
            .iter()
            .filter(|d| kind(d) == "NetworkPolicy")
            .filter(|p| selects(&p["spec"]["podSelector"], pod))
            .filter(|p| {
                p["spec"]["policyTypes"]
                    .as_sequence()
                    .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(direction)))
            })
            .collect();
        let key = direction.to_ascii_lowercase();
        policies.is_empty()
            || policies
                .iter()
                .flat_map(|p| p["spec"][&key].as_sequence().unwrap())
                .any(|rule| {
                    let port_ok =
                        rule.get("ports")
                            .and_then(Value::as_sequence)
                            .is_none_or(|ports| {
                                ports.iter().any(|p| {
                                    p["port"].as_u64() == Some(port)
                                        && p.get("protocol")
                                            .is_none_or(|x| x.as_str() == Some("TCP"))
                                })
                            });
                    // A peer with a namespaceSelector or an ipBlock is elsewhere.
                    let peer_ok = rule
                        .get(peers)
                        .and_then(Value::as_sequence)
                        .is_none_or(|ps| {
                            ps.iter().any(|p| {
                                p.get("namespaceSelector").is_none()
                                    && p.get("ipBlock").is_none()
                                    && selects(&p["podSelector"], peer)
                            })
                        });
                    port_ok && peer_ok
                })
    };
    lets(to, from, "Ingress", "from") && lets(from, to, "Egress", "to")
}

/// The connections the releases make (as the_releases_reach_each_other_by_the_names_the_charts_create
/// finds them), as (client workload, server workload, the server pod's port).
const CONNECTIONS: [(&str, &str, u64); 16] = [
    (
        "Deployment processing-weir",
        "StatefulSet streaming-kafka",
        9092,
    ),
    (
        "Deployment processing-weir",
        "Deployment streaming-registry",
        8081,
    ),
    (
        "Deployment processing-weir",
        "StatefulSet storage-postgres",
        5432,
    ),
    (
        "Deployment ingestion-ingest",
        "StatefulSet streaming-kafka",
        9092,
    ),
    (
        "Deployment ingestion-ingest",
        "Deployment streaming-registry",
        8081,
    ),
    (
        "Deployment streaming-registry",
        "StatefulSet storage-postgres",
        5432,
    ),
    (
        "StatefulSet streaming-kafka",
        "StatefulSet streaming-kafka",
        9092,
    ),
    (
        "StatefulSet streaming-kafka",
        "StatefulSet streaming-kafka",
        9093,
    ),
    ("Job streaming-topics", "StatefulSet streaming-kafka", 9092),
    (
        "Job streaming-schemas",
        "Deployment streaming-registry",
        8081,
    ),
    ("Job storage-migrate", "StatefulSet storage-postgres", 5432),
    (
        "Deployment monitoring-akhq",
        "StatefulSet streaming-kafka",
        9092,
    ),
    (
        "Deployment monitoring-akhq",
        "Deployment streaming-registry",
        8081,
    ),
    (
        "Deployment monitoring-prometheus",
        "Deployment processing-weir",
        9464,
    ),
    (
        "Deployment monitoring-grafana",
        "Deployment monitoring-prometheus",
        9090,
    ),
    (
        "Deployment monitoring-grafana",
        "StatefulSet storage-postgres",
        5432,
    ),
];

#[test]
fn network_policies_allow_the_connections_the_releases_make_and_no_others() {
    // Off by default.
    for (label, yaml) in renderings() {
        assert!(
            !docs(yaml).iter().any(|d| kind(d) == "NetworkPolicy"),
            "{label} renders a NetworkPolicy"
        );
    }
    for env in ENVIRONMENTS {
        let yaml = helmfile(
            env,
            HELMFILE_MODES[1].1,
            &["--state-values-set", "networkPolicy.enabled=true"],
        );
        validate(&format!("{env}-network-policies"), &yaml);
        let all = docs(&yaml);
        let policies: Vec<&Value> = all.iter().filter(|d| kind(d) == "NetworkPolicy").collect();
        // Every pod is isolated both ways, and may ask the DNS.
        for doc in all.iter().filter(|d| pod_spec(d).is_some()) {
            let labels = &doc["spec"]["template"]["metadata"]["labels"];
            let mine: Vec<&&Value> = policies
                .iter()
                .filter(|p| selects(&p["spec"]["podSelector"], labels))
                .collect();
            let what = format!("{env}: {} {}", kind(doc), name(doc));
            assert_eq!(mine.len(), 1, "{what}: {} NetworkPolicies", mine.len());
            let spec = &mine[0]["spec"];
            assert_eq!(
                serde_yaml::to_string(&spec["policyTypes"]).unwrap(),
                "- Ingress\n- Egress\n",
                "{what}"
            );
            let dns = spec["egress"].as_sequence().unwrap().iter().any(|rule| {
                rule["ports"].as_sequence().into_iter().flatten().any(|p| {
                    p["port"].as_u64() == Some(53) && p["protocol"].as_str() == Some("UDP")
                })
            });
            assert!(dns, "{what}: no DNS");
        }
        for (from, to, port) in CONNECTIONS {
            let (k, n) = to.split_once(' ').unwrap();
            let ports = serde_yaml::to_string(&workload_containers(&all, k, n)).unwrap();
            assert!(
                ports.contains(&format!("containerPort: {port}")),
                "{env}: {to} has no port {port}"
            );
            assert!(
                np_allows(&all, pod_labels(&all, from), pod_labels(&all, to), port),
                "{env}: {from} cannot reach {to}:{port}"
            );
        }
        // Nothing else: not ingestion or AKHQ to Postgres, not ingestion to weir's metrics,
        // not a pod outside the releases to anything but the UIs.
        let outsider: Value = serde_yaml::from_str("{app: browser}").unwrap();
        for (from, to, port) in [
            (
                "Deployment ingestion-ingest",
                "StatefulSet storage-postgres",
                5432,
            ),
            (
                "Deployment monitoring-akhq",
                "StatefulSet storage-postgres",
                5432,
            ),
            (
                "Deployment ingestion-ingest",
                "Deployment processing-weir",
                9464,
            ),
            (
                "Deployment processing-weir",
                "StatefulSet streaming-kafka",
                9093,
            ),
        ] {
            assert!(
                !np_allows(&all, pod_labels(&all, from), pod_labels(&all, to), port),
                "{env}: {from} may reach {to}:{port}"
            );
        }
        for (to, port, open) in [
            ("Deployment monitoring-grafana", 3000, true),
            ("Deployment monitoring-akhq", 8080, true),
            ("StatefulSet storage-postgres", 5432, false),
            ("StatefulSet streaming-kafka", 9092, false),
            ("Deployment streaming-registry", 8081, false),
        ] {
            assert_eq!(
                np_allows(&all, &outsider, pod_labels(&all, to), port),
                open,
                "{env}: from outside to {to}:{port}"
            );
        }
    }
    // The other releases may be in other namespaces, by a selector.
    let all = docs(&template(
        "processing",
        "processing",
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.namespaceSelector.matchLabels.team=data",
        ],
    ));
    let egress =
        serde_yaml::to_string(&find(&all, "NetworkPolicy", "processing-weir")["spec"]["egress"])
            .unwrap();
    assert_eq!(egress.matches("team: data").count(), 3, "{egress}");
}

/// The env var `var` of `container` comes from the Secret `secret`, key `key`.
fn assert_env_from_secret(container: &Value, var: &str, secret: &str, key: &str) {
    let env = env_of(container, var).unwrap_or_else(|| panic!("no env {var}"));
    assert_eq!(
        (
            str_at(env, &["valueFrom", "secretKeyRef", "name"]),
            str_at(env, &["valueFrom", "secretKeyRef", "key"]),
        ),
        (Some(secret), Some(key)),
        "env {var}"
    );
}

/// Renders a chart with `--set` values, validated and locked down.
/// The `args` of a rendered container.
fn container_args(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn template_checked(chart: &str, values: &[&str]) -> Vec<Value> {
    let extra: Vec<&str> = values.iter().flat_map(|v| ["--set", *v]).collect();
    let yaml = template(chart, chart, &extra);
    validate(&format!("{chart}-secrets"), &yaml);
    let all = docs(&yaml);
    for doc in &all {
        check_pod_security(chart, doc);
    }
    all
}

#[test]
fn registry_auth_takes_the_users_and_every_clients_credentials_from_secrets() {
    let auth = "registry.auth.usersSecret.name=registry-users";
    // The schemas Job must have credentials then.
    let (success, _, stderr) = run(
        &tool("helm"),
        &["template", "streaming", "charts/streaming", "--set", auth],
    );
    assert!(
        !success && stderr.contains("jobs.schemas.basicAuthSecret.name"),
        "{stderr}"
    );
    let all = template_checked(
        "streaming",
        &[auth, "jobs.schemas.basicAuthSecret.name=registry-writer"],
    );
    // The users file is the Secret's, mounted read-only where --users-file reads it.
    let registry = find(&all, "Deployment", "streaming-registry");
    let spec = pod_spec(registry).unwrap();
    let container = &containers(spec)[0];
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = command
        .iter()
        .position(|a| *a == "--users-file")
        .expect("--users-file");
    let file = Path::new(command[at + 1]);
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Some(file.parent().unwrap().to_str().unwrap()) == str_at(m, &["mountPath"]))
        .unwrap_or_else(|| panic!("nothing is mounted at {}", file.display()));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        str_at(volume, &["secret", "secretName"]),
        Some("registry-users")
    );
    assert_eq!(
        str_at(&volume["secret"]["items"][0], &["path"]),
        file.file_name().unwrap().to_str()
    );
    // The probes need no credentials: every path does then.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(
            container[probe].get("httpGet").is_none(),
            "{probe}: {:?}",
            container[probe]
        );
        assert!(container[probe].get("tcpSocket").is_some(), "{probe}");
    }
    // weir's registry has the flag the chart passes.
    let help = weir(&["registry", "serve", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--users-file"));
    // The clients: the schemas Job, ingestion, AKHQ (processing: the TLS test above).
    let schemas = workload_containers(&all, "Job", "streaming-schemas");
    assert_env_from_secret(
        schemas.last().unwrap(),
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "registry-writer",
        "userInfo",
    );
    let all = template_checked(
        "ingestion",
        &["registry.basicAuthSecret.name=registry-reader"],
    );
    assert_env_from_secret(
        workload_containers(&all, "Deployment", "ingestion-ingest")[0],
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "registry-reader",
        "userInfo",
    );
    let all = template_checked(
        "monitoring",
        &[
            "akhq.schemaRegistry.basicAuth.username=akhq",
            "akhq.schemaRegistry.basicAuth.passwordSecret.name=registry-akhq",
        ],
    );
    let akhq = workload_containers(&all, "Deployment", "monitoring-akhq")[0];
    assert_env_from_secret(akhq, "WEIR_REGISTRY_PASSWORD", "registry-akhq", "password");
    let app: Value = serde_yaml::from_str(
        str_at(
            find(&all, "ConfigMap", "monitoring-akhq"),
            &["data", "application.yml"],
        )
        .unwrap(),
    )
    .unwrap();
    let registry = &app["akhq"]["connections"]["weir"]["schema-registry"];
    assert_eq!(registry["basic-auth-username"].as_str(), Some("akhq"));
    assert_eq!(
        registry["basic-auth-password"].as_str(),
        Some("${WEIR_REGISTRY_PASSWORD}")
    );
}

#[test]
fn ingestion_takes_kafka_tls_sasl_and_registry_credentials_from_secrets() {
    let all = template_checked(
        "ingestion",
        &[
            "kafka.tls.enabled=true",
            "kafka.tls.caSecret=kafka-ca",
            "kafka.sasl.mechanism=SCRAM-SHA-512",
            "kafka.sasl.username=ingest",
            "kafka.sasl.passwordSecret.name=kafka-sasl",
            "registry.url=https://127.0.0.1:1",
            "registry.caSecret=registry-ca",
            "registry.basicAuthSecret.name=registry-reader",
        ],
    );
    let deployment = find(&all, "Deployment", "ingestion-ingest");
    let spec = pod_spec(deployment).unwrap();
    let volumes = serde_yaml::to_string(&spec["volumes"]).unwrap();
    for secret in ["kafka-ca", "registry-ca"] {
        assert!(
            volumes.contains(&format!("secretName: {secret}")),
            "{volumes}"
        );
    }
    let ingest = &spec["containers"][0];
    let args = container_args(ingest);
    let joined = args.join(" ");
    for property in [
        "security.protocol=SASL_SSL",
        "ssl.ca.location=/etc/weir/tls/kafka/ca.crt",
        "sasl.mechanism=SCRAM-SHA-512",
        "sasl.username=ingest",
    ] {
        assert!(joined.contains(&format!("-X {property}")), "{joined}");
    }
    assert_env_from_secret(
        ingest,
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "registry-reader",
        "userInfo",
    );
    // The SASL password: from the Secret into the --kafka-config file, by the init
    // container's script.
    let init = &spec["initContainers"][0];
    assert_env_from_secret(init, "KAFKA_SASL_PASSWORD", "kafka-sasl", "password");
    let at = args.iter().position(|a| a == "--kafka-config").unwrap();
    let config = &args[at + 1];
    let dir = tempfile::tempdir().unwrap();
    let local = |path: &str| {
        path.replace("/run/weir/kafka", dir.path().to_str().unwrap())
            .replace("/etc/weir/tls/registry", dir.path().to_str().unwrap())
    };
    let script = local(init["command"][2].as_str().unwrap());
    let out = Command::new("/bin/sh")
        .args(["-c", &script])
        .env("KAFKA_SASL_PASSWORD", "s3cr:e=t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(local(config)).unwrap();
    assert_eq!(written, "sasl.password=s3cr:e=t\n");
    // weir ingest takes the arguments and the file, and gets as far as asking the registry.
    let ca = weir_tests::TestCa::new();
    std::fs::copy(ca.cert(), dir.path().join("ca.crt")).unwrap();
    let args: Vec<String> = args.iter().map(|a| local(a)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = |var: &str| {
        str_at(env_of(ingest, var).unwrap(), &["value"])
            .unwrap()
            .to_string()
    };
    let out = weir_tests::weir_env(
        &args,
        &[
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("SCHEMA_REGISTRY_URL", &env("SCHEMA_REGISTRY_URL")),
            ("SCHEMA_REGISTRY_CA", &local(&env("SCHEMA_REGISTRY_CA"))),
            ("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "reader:pw"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("push the schemas first"),
        "{stderr}"
    );
}

#[test]
fn a_live_feed_source_is_one_scraped_probed_pod_whose_command_weir_accepts() {
    let mut all = template_checked(
        "ingestion",
        &[
            "source=yahoo",
            "feed.symbols={AAPL,BTC-USD,EURUSD=X}",
            "networkPolicy.enabled=true",
        ],
    );
    all.extend(template_checked(
        "monitoring",
        &["networkPolicy.enabled=true", "grafana.adminPassword=x"],
    ));
    let deployment = find(&all, "Deployment", "ingestion-ingest");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1));
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9102"));
    let ingest = &pod_spec(deployment).unwrap()["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            str_at(ingest, &[probe, "httpGet", "path"]),
            Some("/healthz"),
            "{probe}"
        );
    }
    assert_eq!(ingest["ports"][0]["containerPort"].as_u64(), Some(9102));
    // Prometheus may scrape it, and nothing else may reach it; it may reach the feed.
    let (prometheus, feed) = (
        pod_labels(&all, "Deployment monitoring-prometheus"),
        pod_labels(&all, "Deployment ingestion-ingest"),
    );
    assert!(np_allows(&all, prometheus, feed, 9102));
    let grafana = pod_labels(&all, "Deployment monitoring-grafana");
    assert!(!np_allows(&all, grafana, feed, 9102));
    let policy = find(&all, "NetworkPolicy", "ingestion-ingest");
    let egress = serde_yaml::to_string(&policy["spec"]["egress"]).unwrap();
    assert!(egress.contains("port: 443"), "{egress}");

    // The command is one weir takes: it gets as far as asking the registry.
    let args = container_args(ingest);
    let joined = args.join(" ");
    assert!(
        joined.starts_with("ingest yahoo --symbols AAPL,BTC-USD,EURUSD=X "),
        "{joined}"
    );
    assert!(joined.contains("--http 0.0.0.0:9102"), "{joined}");
    let http = format!("127.0.0.1:{}", weir_tests::free_port());
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if a == "0.0.0.0:9102" {
                http.as_str()
            } else {
                a
            }
        })
        .collect();
    let out = weir_tests::weir_env(
        &args,
        &[
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("SCHEMA_REGISTRY_URL", "http://127.0.0.1:1"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("registry") && !stderr.contains("Usage:"),
        "{stderr}"
    );
    // Coinbase, with its default products; Yahoo without symbols is refused.
    let all = template_checked("ingestion", &["source=coinbase"]);
    let args = serde_yaml::to_string(
        &pod_spec(find(&all, "Deployment", "ingestion-ingest")).unwrap()["containers"][0]["args"],
    )
    .unwrap();
    assert!(
        args.starts_with("- ingest\n- coinbase\n- --stale-after\n"),
        "{args}"
    );
    let (success, _, stderr) = run(
        &tool("helm"),
        &[
            "template",
            "ingestion",
            "charts/ingestion",
            "--set",
            "source=yahoo",
        ],
    );
    assert!(!success && stderr.contains("feed.symbols"), "{stderr}");
}

#[test]
fn the_simulator_produces_option_trades_with_a_command_weir_accepts() {
    // By default, and in both environments, the simulator trades options on its stocks.
    let mut renderings = vec![("defaults", template_checked("ingestion", &[]))];
    for env in ENVIRONMENTS {
        renderings.push((env, docs(helmfile_template(env, "1.x"))));
    }
    for (label, all) in &renderings {
        let ingest =
            &pod_spec(find(all, "Deployment", "ingestion-ingest")).unwrap()["containers"][0];
        let joined = container_args(ingest).join(" ");
        assert!(
            joined.starts_with("ingest simulate ")
                && joined.contains(" --options --option-share 0.2")
                && !joined.contains("--risk-free-rate"),
            "{label}: {joined}"
        );
    }
    // The command is one weir takes: it gets past its arguments to asking the registry.
    let all = template_checked(
        "ingestion",
        &["options.share=0.35", "options.riskFreeRate=0.05", "seed=7"],
    );
    let ingest = &pod_spec(find(&all, "Deployment", "ingestion-ingest")).unwrap()["containers"][0];
    let args = container_args(ingest);
    let joined = args.join(" ");
    assert!(
        joined.contains(" --options --option-share 0.35 --risk-free-rate 0.05"),
        "{joined}"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = weir_tests::weir_env(
        &args,
        &[
            ("KAFKA_BROKERS", "127.0.0.1:1"),
            ("SCHEMA_REGISTRY_URL", "http://127.0.0.1:1"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("registry")
            && !stderr.contains("Usage:")
            && !stderr.contains("--option"),
        "{stderr}"
    );
    // Off, no option flag (--option-share alone is refused by weir).
    let all = template_checked("ingestion", &["options.enabled=false"]);
    let joined = container_args(
        &pod_spec(find(&all, "Deployment", "ingestion-ingest")).unwrap()["containers"][0],
    )
    .join(" ");
    assert!(!joined.contains("--option"), "{joined}");
    // Options without stocks, and a share above 1, are refused naming the value.
    for (set, key) in [
        ("stocks={none}", "options.enabled"),
        ("options.share=2", "share"),
    ] {
        let (success, _, stderr) = run(
            &tool("helm"),
            &["template", "ingestion", "charts/ingestion", "--set", set],
        );
        assert!(!success && stderr.contains(key), "{set}: {stderr}");
    }
}

/// The data sources of the monitoring release's Grafana (its provisioning file).
fn grafana_datasources(all: &[Value]) -> Vec<Value> {
    let cm = find(all, "ConfigMap", "monitoring-grafana");
    let text = str_at(cm, &["data", "datasources.yaml"]).expect("datasources.yaml");
    let file: Value = serde_yaml::from_str(text).expect("datasources.yaml parses");
    file["datasources"].as_sequence().unwrap().clone()
}

#[test]
fn grafana_reads_the_markets_from_storages_postgres_with_the_password_of_its_secret() {
    for env in ENVIRONMENTS {
        let all = docs(helmfile_template(env, "1.x"));
        let what = |s: &str| format!("{env}: {s}");

        // The PostgreSQL data source: storage's Service, database and user, the password
        // an env var Grafana expands, from storage's Secret.
        let sources = grafana_datasources(&all);
        let pg = sources
            .iter()
            .find(|d| str_at(d, &["uid"]) == Some("weir-postgres"))
            .unwrap_or_else(|| panic!("{env}: no data source weir-postgres: {sources:?}"));
        assert_eq!(str_at(pg, &["type"]), Some("grafana-postgresql-datasource"));
        let (host, port) = host_port(str_at(pg, &["url"]).unwrap());
        assert_service(&all, &what("grafana postgres datasource"), &host, port);
        assert_eq!(host, "storage-postgres");
        assert_eq!(str_at(pg, &["user"]), Some("weir"));
        assert_eq!(str_at(pg, &["jsonData", "database"]), Some("weir"));
        assert_eq!(str_at(pg, &["jsonData", "sslmode"]), Some("disable"));
        assert_eq!(
            str_at(pg, &["secureJsonData", "password"]),
            Some("${WEIR_POSTGRES_PASSWORD}"),
            "{env}: the password is not the env var"
        );
        let grafana = workload_containers(&all, "Deployment", "monitoring-grafana");
        assert_env_from_secret(
            grafana[0],
            "WEIR_POSTGRES_PASSWORD",
            "storage-postgres",
            "password",
        );
        let secret = find(&all, "Secret", "storage-postgres");
        let password = base64::engine::general_purpose::STANDARD
            .decode(str_at(secret, &["data", "password"]).expect("storage's password"))
            .unwrap();
        let password = String::from_utf8(password).unwrap();
        for doc in all.iter().filter(|d| kind(d) != "Secret") {
            assert!(
                !serde_yaml::to_string(doc).unwrap().contains(&password),
                "{env}: the Postgres password is in {} {}",
                kind(doc),
                name(doc)
            );
        }

        // Both dashboards are in the ConfigMap as the files are, mounted where the
        // provider reads, and every panel's data source is a provisioned one.
        let cm = find(&all, "ConfigMap", "monitoring-grafana");
        let provider: Value =
            serde_yaml::from_str(str_at(cm, &["data", "dashboards.yaml"]).unwrap()).unwrap();
        let path = str_at(&provider["providers"][0], &["options", "path"]).unwrap();
        let spec = pod_spec(find(&all, "Deployment", "monitoring-grafana")).unwrap();
        let mount = grafana[0]["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| str_at(m, &["mountPath"]) == Some(path))
            .unwrap_or_else(|| panic!("{env}: nothing mounted at the provider's {path}"));
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let items: Vec<&str> = volume["configMap"]["items"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|i| str_at(i, &["path"]).unwrap())
            .collect();
        let uids: Vec<&str> = sources.iter().filter_map(|d| str_at(d, &["uid"])).collect();
        for file in ["weir-dashboard.json", "weir-markets.json"] {
            assert!(
                items.contains(&file),
                "{env}: {file} is not mounted: {items:?}"
            );
            let shipped: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(repo_root().join("charts/monitoring/files").join(file))
                    .unwrap(),
            )
            .unwrap();
            let rendered: serde_json::Value =
                serde_json::from_str(str_at(cm, &["data", file]).unwrap()).unwrap();
            assert_eq!(rendered, shipped, "{env}: {file} differs from the file");
            for panel in rendered["panels"].as_array().unwrap() {
                if let Some(uid) = panel["datasource"]["uid"].as_str() {
                    assert!(
                        uids.contains(&uid),
                        "{env}: {file} panel {} uses data source {uid}, not provisioned",
                        panel["title"]
                    );
                }
            }
        }
    }

    // Off: no data source, no password, no markets dashboard.
    let all = docs(&template(
        "monitoring",
        "monitoring",
        &["--set", "grafana.postgres.enabled=false"],
    ));
    assert!(
        grafana_datasources(&all)
            .iter()
            .all(|d| str_at(d, &["uid"]) != Some("weir-postgres"))
    );
    let grafana = workload_containers(&all, "Deployment", "monitoring-grafana");
    assert!(env_of(grafana[0], "WEIR_POSTGRES_PASSWORD").is_none());
    let cm = find(&all, "ConfigMap", "monitoring-grafana");
    assert!(str_at(cm, &["data", "weir-markets.json"]).is_none());

    // Another database and Secret (a read-only role, storage's existingSecret).
    let all = template_checked(
        "monitoring",
        &[
            "grafana.postgres.host=pg.example.com:6432",
            "grafana.postgres.user=grafana_ro",
            "grafana.postgres.passwordSecret.name=grafana-ro",
            "grafana.postgres.passwordSecret.key=pw",
            "grafana.postgres.sslmode=verify-full",
            "networkPolicy.enabled=true",
        ],
    );
    let pg = grafana_datasources(&all)
        .into_iter()
        .find(|d| str_at(d, &["uid"]) == Some("weir-postgres"))
        .unwrap();
    assert_eq!(str_at(&pg, &["url"]), Some("pg.example.com:6432"));
    assert_eq!(str_at(&pg, &["user"]), Some("grafana_ro"));
    assert_eq!(str_at(&pg, &["jsonData", "sslmode"]), Some("verify-full"));
    let grafana = workload_containers(&all, "Deployment", "monitoring-grafana");
    assert_env_from_secret(grafana[0], "WEIR_POSTGRES_PASSWORD", "grafana-ro", "pw");
    // An explicit address is outside the releases: no rule to storage's pods for it.
    let egress =
        serde_yaml::to_string(&find(&all, "NetworkPolicy", "monitoring-grafana")["spec"]["egress"])
            .unwrap();
    assert!(!egress.contains("5432"), "{egress}");
    // A wrong sslmode is refused by the schema.
    let (success, _, stderr) = run(
        &tool("helm"),
        &[
            "template",
            "monitoring",
            "charts/monitoring",
            "--set",
            "grafana.adminPassword=x",
            "--set",
            "grafana.postgres.sslmode=prefer",
        ],
    );
    assert!(!success && stderr.contains("sslmode"), "{stderr}");
}
