//! A real Prometheus (Debian's `prometheus`) scraping `weir run`, and the shipped Grafana
//! dashboard's queries evaluated through its HTTP API the way Grafana sends them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;

use crate::{free_port, wait_for_port, wait_until};

/// How often the test Prometheus scrapes and evaluates.
const SCRAPE_INTERVAL: &str = "1s";
/// What `$__rate_interval` becomes: Grafana makes it at least four scrape intervals; a
/// test's traffic comes in bursts, so the window is wide enough to hold one.
const RATE_INTERVAL: &str = "2m";
/// What `$__range` becomes: the dashboard's default time range.
const RANGE: &str = "1h";

/// `prometheus` scraping one target, with its own data directory; killed on drop.
pub struct Prometheus {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, path `/metrics`) as job `job`,
    /// every series labelled `pod="<pod>"` as the charts' Kubernetes discovery labels it,
    /// and waits until it answers.
    pub fn start(job: &str, target: &str, pod: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n        labels:\n          pod: {pod}\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's package `prometheus`; `make system` installs it)");
        let p = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
        p
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `query` parameters: its `data`, after checking the
    /// answer is a success.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> Json {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), query).unwrap();
        let body: Json = crate::rt().block_on(async {
            reqwest::get(url.clone())
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .json()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"))
        });
        assert_eq!(body["status"], "success", "{url}: {body}");
        body["data"].clone()
    }

    /// The instant vector or scalar `expr` evaluates to now.
    pub fn query(&self, expr: &str) -> Vec<Json> {
        let data = self.api("query", &[("query", expr)]);
        match &data["result"] {
            Json::Array(series) => series.clone(),
            other => vec![other.clone()],
        }
    }

    /// Waits until the one target is up, scraped at least `scrapes` times without error.
    pub fn wait_scraped(&self, job: &str, scrapes: u32) {
        let counted = format!("count_over_time(up{{job=\"{job}\"}}[{RANGE}])");
        wait_until(
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let healthy = self.api("targets", &[])["activeTargets"]
                    .as_array()
                    .is_some_and(|t| t.len() == 1 && t[0]["health"] == "up");
                healthy
                    && self.query(&counted).first().is_some_and(|s| {
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|n| n >= f64::from(scrapes))
                    })
            },
            || {
                format!(
                    "{job} not scraped {scrapes} times: targets {}\nlog:\n{}",
                    self.api("targets", &[]),
                    self.log()
                )
            },
        );
    }

    /// Evaluates every query of the Grafana dashboard at `dashboard` as Grafana would —
    /// its variables from their own queries, `$__rate_interval` and `$__range` filled in
    /// — and returns, for each query that returns no series, its panel and expression.
    pub fn empty_dashboard_queries(&self, dashboard: &Path) -> Vec<String> {
        let json: Json = serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", dashboard.display()));
        let mut variables = Vec::new();
        for var in json["templating"]["list"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap();
            let definition = var["definition"].as_str().unwrap();
            let values = self.label_values(definition);
            assert!(
                !values.is_empty(),
                "variable ${name} ({definition}) has no values"
            );
            variables.push((format!("${name}"), values.join("|")));
        }
        let mut empty = Vec::new();
        let mut queries = 0;
        for panel in panels(&json["panels"]) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                queries += 1;
                let mut q = expr
                    .replace("$__rate_interval", RATE_INTERVAL)
                    .replace("$__range", RANGE);
                for (var, value) in &variables {
                    q = q.replace(var, value);
                }
                if self.query(&q).is_empty() {
                    let title = panel["title"].as_str().unwrap_or("(untitled)");
                    empty.push(format!("panel {title:?}: {expr}"));
                }
            }
        }
        assert!(queries > 0, "no queries in {}", dashboard.display());
        empty
    }

    /// The values of a `label_values(<selector>, <label>)` variable query.
    fn label_values(&self, definition: &str) -> Vec<String> {
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a label_values query: {definition}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("label_values without a label: {definition}"));
        self.api(
            &format!("label/{}/values", label.trim()),
            &[("match[]", selector.trim())],
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
    }
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(list: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for panel in list.as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panels(&panel["panels"]));
    }
    all
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
