//! The shipped Grafana dashboards on Postgres ("weir markets",
//! `charts/monitoring/files/weir-markets.json`), checked without a Grafana: the JSON as
//! Grafana needs it to load and render, and every query run against a real database as
//! Grafana's PostgreSQL data source would send it.
//!
//! What Grafana does to a panel's `rawSql` before Postgres sees it, and so what
//! [`check_markets_dashboard`] does:
//! 1. Template variables (`$name`, `${name}`, `${name:format}`, `[[name]]`) are replaced
//!    by their value. A variable's value is the first one its own query returns (Grafana's
//!    pick when the dashboard has no saved selection); a variable that is `multi` or
//!    `includeAll` is single-quoted (`'AAPL'`, so `IN ($symbol)`), any other goes in as
//!    it is (`'$underlying'` in the SQL quotes it).
//! 2. The data source's macros are expanded over the time range: `$__timeFilter(col)` →
//!    `col BETWEEN 'from' AND 'to'`, `$__timeFrom()`, `$__timeTo()`, `$__time(col)`,
//!    `$__timeEpoch(col)`, `$__timeGroup(col, '5m')`, `$__timeGroupAlias(col, '5m')`,
//!    `$__unixEpochFilter(col)`, `$__unixEpochFrom()`, `$__unixEpochTo()`; times in
//!    RFC 3339, UTC.
//!
//! The time range is the dashboard's default (`time`, e.g. now-6h to now) resolved
//! against the wall clock, as a browser opening the dashboard gets. Data simulated with
//! `weir ingest simulate --start-time` in the past, or replayed from a file, falls outside
//! it: check such data with [`check_dashboard_over`] and the range it covers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;

/// The uid of the provisioned PostgreSQL data source (charts/monitoring's grafana
/// ConfigMap).
pub const POSTGRES_UID: &str = "weir-postgres";
/// Its type: the name Grafana 10 and later give the core PostgreSQL plugin.
pub const POSTGRES_TYPE: &str = "grafana-postgresql-datasource";

/// Panel types Grafana ships (core panels), the only ones a dashboard provisioned
/// without plugins may use.
pub const PANEL_TYPES: &[&str] = &[
    "row",
    "timeseries",
    "candlestick",
    "table",
    "stat",
    "gauge",
    "bargauge",
    "barchart",
    "xychart",
    "histogram",
    "heatmap",
    "piechart",
    "state-timeline",
    "status-history",
    "text",
    "logs",
    "trend",
    "geomap",
    "nodeGraph",
    "traces",
    "flamegraph",
    "canvas",
    "dashlist",
    "news",
    "alertlist",
    "annolist",
];

/// Variable types Grafana has.
const VARIABLE_TYPES: &[&str] = &[
    "query",
    "custom",
    "constant",
    "textbox",
    "interval",
    "datasource",
    "adhoc",
];

/// The macros of the PostgreSQL data source that [`expand_macros`] knows.
const MACROS: &[&str] = &[
    "__timeFilter",
    "__timeFrom",
    "__timeTo",
    "__time",
    "__timeEpoch",
    "__timeGroup",
    "__timeGroupAlias",
    "__unixEpochFilter",
    "__unixEpochFrom",
    "__unixEpochTo",
];

/// The "weir markets" dashboard as the monitoring chart ships it.
pub fn markets_dashboard() -> PathBuf {
    crate::repo_root().join("charts/monitoring/files/weir-markets.json")
}

/// A dashboard's time range, resolved to instants.
#[derive(Clone, Copy, Debug)]
pub struct TimeRange {
    /// Start.
    pub from: SystemTime,
    /// End.
    pub to: SystemTime,
}

impl TimeRange {
    /// The dashboard's default range (`time.from`, `time.to`) resolved at `now`.
    pub fn of_dashboard(dashboard: &Json, now: SystemTime) -> Result<Self, String> {
        let at = |key: &str| {
            let text = dashboard["time"][key]
                .as_str()
                .ok_or_else(|| format!("dashboard time.{key} is missing"))?;
            resolve_time(text, now).map_err(|e| format!("dashboard time.{key} {text:?}: {e}"))
        };
        let range = Self {
            from: at("from")?,
            to: at("to")?,
        };
        if range.from >= range.to {
            return Err(format!(
                "dashboard time range is empty: {:?}",
                dashboard["time"]
            ));
        }
        Ok(range)
    }
}

/// A time of a Grafana range: `now`, `now-6h` (s, m, h, d, w), RFC 3339, or epoch millis.
fn resolve_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Some(rest) = text.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(now);
        }
        let ago = rest
            .strip_prefix('-')
            .ok_or("only now and now-<duration> are understood (no rounding with /)")?;
        return Ok(now - parse_duration(ago)?);
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_millis(ms));
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| e.to_string())
}

/// A Grafana duration: a number and one of s, m, h, d, w (`5m`, `6h`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim().trim_matches('\'');
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit"))?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "{text:?}: unit {unit:?} is not one of s, m, h, d, w"
            ));
        }
    };
    Ok(Duration::from_secs(n * seconds))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Expands the PostgreSQL data source's macros in `sql` over `range`, as Grafana's
/// backend does; an unknown macro or a wrong argument is an error.
pub fn expand_macros(sql: &str, range: &TimeRange) -> Result<String, String> {
    let (from, to) = (rfc3339(range.from), rfc3339(range.to));
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let tail = &after[name_len..];
        if !MACROS.contains(&name) {
            return Err(format!("unknown macro ${name}"));
        }
        let (args, next) = macro_args(tail).ok_or_else(|| format!("${name} without (...)"))?;
        let arg = |i: usize| {
            args.get(i)
                .filter(|a| !a.is_empty())
                .cloned()
                .ok_or_else(|| format!("${name} needs argument {}", i + 1))
        };
        let group = |alias: bool| -> Result<String, String> {
            let seconds = parse_duration(&arg(1)?)?.as_secs();
            let alias = if alias { " AS \"time\"" } else { "" };
            Ok(format!(
                "floor(extract(epoch from {})/{seconds})*{seconds}{alias}",
                arg(0)?
            ))
        };
        let expanded = match name {
            "__timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", arg(0)?),
            "__timeFrom" => format!("'{from}'"),
            "__timeTo" => format!("'{to}'"),
            "__time" => format!("{} AS \"time\"", arg(0)?),
            "__timeEpoch" => format!("extract(epoch from {}) AS \"time\"", arg(0)?),
            "__timeGroup" => group(false)?,
            "__timeGroupAlias" => group(true)?,
            "__unixEpochFilter" => {
                let col = arg(0)?;
                format!(
                    "{col} >= {} AND {col} <= {}",
                    epoch(range.from),
                    epoch(range.to)
                )
            }
            "__unixEpochFrom" => epoch(range.from).to_string(),
            "__unixEpochTo" => epoch(range.to).to_string(),
            _ => unreachable!("listed in MACROS"),
        };
        out.push_str(&expanded);
        rest = next;
    }
    out.push_str(rest);
    Ok(out)
}

/// The comma-separated arguments of a macro call at the start of `text` (`(a, b)...`),
/// nested parentheses kept, and what follows the call.
fn macro_args(text: &str) -> Option<(Vec<String>, &str)> {
    let inner = text.strip_prefix('(')?;
    let mut depth = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => {
                let mut args = Vec::new();
                let mut current = String::new();
                let mut d = 0;
                for c in inner[..i].chars() {
                    match c {
                        '(' => d += 1,
                        ')' => d -= 1,
                        ',' if d == 0 => {
                            args.push(current.trim().to_string());
                            current.clear();
                            continue;
                        }
                        _ => {}
                    }
                    current.push(c);
                }
                args.push(current.trim().to_string());
                return Some((args, &inner[i + 1..]));
            }
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A template variable with the value it has while the queries run.
#[derive(Clone, Debug)]
pub struct Variable {
    /// Its name (without `$`).
    pub name: String,
    /// Its value: the first its query returns.
    pub value: String,
    /// `multi` or `includeAll`: Grafana single-quotes its values in SQL.
    pub quoted: bool,
}

/// Where `$name`, `${name}`, `${name:format}` and `[[name]]` occur in `text`: (start,
/// end, name, format).
fn variable_refs(text: &str) -> Vec<(usize, usize, String, Option<String>)> {
    let bytes = text.as_bytes();
    let word = |from: usize| {
        let len = text[from..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len() - from);
        &text[from..from + len]
    };
    let mut refs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            if let Some(close) = text[i..].find('}') {
                let inner = &text[i + 2..i + close];
                let (name, format) = match inner.split_once(':') {
                    Some((n, f)) => (n, Some(f.to_string())),
                    None => (inner, None),
                };
                refs.push((i, i + close + 1, name.to_string(), format));
                i += close + 1;
                continue;
            }
        } else if bytes[i] == b'$' {
            let name = word(i + 1);
            if !name.is_empty() {
                refs.push((i, i + 1 + name.len(), name.to_string(), None));
                i += 1 + name.len();
                continue;
            }
        } else if text[i..].starts_with("[[")
            && let Some(close) = text[i..].find("]]")
        {
            let name = &text[i + 2..i + close];
            refs.push((i, i + close + 2, name.to_string(), None));
            i += close + 2;
            continue;
        }
        i += 1;
    }
    refs
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Replaces the template variables of `sql` by their values as Grafana's SQL data
/// sources format them; names that are no variable (macros, `$1`) stay as they are.
pub fn interpolate(sql: &str, variables: &[Variable]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for (start, end, name, format) in variable_refs(sql) {
        let Some(var) = variables.iter().find(|v| v.name == name) else {
            continue;
        };
        out.push_str(&sql[last..start]);
        let value = match format.as_deref() {
            Some("raw" | "csv" | "text") => var.value.clone(),
            Some("sqlstring" | "singlequote") => quote(&var.value),
            _ if var.quoted => quote(&var.value),
            _ => var.value.replace('\'', "''"),
        };
        out.push_str(&value);
        last = end;
    }
    out.push_str(&sql[last..]);
    out
}

/// Every panel of a dashboard, rows' nested (collapsed) panels included.
fn panels(list: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for panel in list.as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panels(&panel["panels"]));
    }
    all
}

fn title(panel: &Json) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

/// The panel's queries: (refId, rawSql, format).
fn targets(panel: &Json) -> Vec<(&str, &str, &str)> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["refId"].as_str().unwrap_or(""),
                t["rawSql"].as_str().unwrap_or(""),
                t["format"].as_str().unwrap_or("table"),
            )
        })
        .collect()
}

/// The query of a `query` variable (a string, or an object with `rawSql` or `query`).
fn variable_query(var: &Json) -> Option<&str> {
    match &var["query"] {
        Json::String(s) => Some(s),
        Json::Object(o) => o
            .get("rawSql")
            .or_else(|| o.get("query"))
            .and_then(Json::as_str),
        _ => None,
    }
}

/// Whether `ds` is the provisioned PostgreSQL data source.
fn is_postgres(ds: &Json) -> bool {
    ds["uid"].as_str() == Some(POSTGRES_UID) && ds["type"].as_str() == Some(POSTGRES_TYPE)
}

/// What Grafana would refuse or not render in a dashboard on the PostgreSQL data
/// source: its identity, the template variables, and every panel's type, place,
/// data source and queries. Empty when all is well.
pub fn dashboard_problems(dashboard: &Json) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    for key in ["uid", "title"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problem(format!("dashboard has no {key}"));
        }
    }
    if dashboard["uid"].as_str().is_some_and(|u| u.len() > 40) {
        problem("dashboard uid is longer than Grafana's 40 characters".into());
    }
    if dashboard["schemaVersion"]
        .as_u64()
        .is_none_or(|v| !(36..=41).contains(&v))
    {
        problem(format!(
            "schemaVersion {} is not one Grafana 10 or 11 writes (36 to 41)",
            dashboard["schemaVersion"]
        ));
    }
    if let Err(e) = TimeRange::of_dashboard(dashboard, SystemTime::now()) {
        problem(e);
    }

    // Template variables: each defined once, before the variables whose queries use it.
    let mut defined: Vec<(&str, bool)> = Vec::new();
    let list = dashboard["templating"]["list"].as_array();
    for var in list.into_iter().flatten() {
        let Some(name) = var["name"]
            .as_str()
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        else {
            problem(format!("variable without a valid name: {var}"));
            continue;
        };
        let what = format!("variable ${name}");
        if defined.iter().any(|(n, _)| *n == name) {
            problem(format!("{what} is defined twice"));
        }
        let kind = var["type"].as_str().unwrap_or("");
        if !VARIABLE_TYPES.contains(&kind) {
            problem(format!(
                "{what}: type {kind:?} is not a Grafana variable type"
            ));
        }
        match kind {
            "query" => {
                if !is_postgres(&var["datasource"]) {
                    problem(format!(
                        "{what}: data source {} is not {POSTGRES_TYPE} {POSTGRES_UID}",
                        var["datasource"]
                    ));
                }
                match variable_query(var) {
                    Some(q) if !q.trim().is_empty() => {
                        for (_, _, used, _) in variable_refs(q) {
                            if !used.starts_with("__") && !defined.iter().any(|(n, _)| *n == used) {
                                problem(format!(
                                    "{what}: its query uses ${used}, which is not a variable defined before it"
                                ));
                            }
                        }
                        if let Err(e) = expand_macros(q, &TimeRange::of_now()) {
                            problem(format!("{what}: {e}"));
                        }
                    }
                    _ => problem(format!("{what}: no query")),
                }
                // 0 would show the options saved in the JSON, and there are none.
                if !matches!(var["refresh"].as_u64(), Some(1 | 2)) {
                    problem(format!(
                        "{what}: refresh {} does not load its values (1: on load, 2: on time range change)",
                        var["refresh"]
                    ));
                }
            }
            "custom" if custom_values(var).is_empty() => {
                problem(format!("{what}: no values"));
            }
            _ => {}
        }
        let multi =
            var["multi"].as_bool().unwrap_or(false) || var["includeAll"].as_bool().unwrap_or(false);
        defined.push((name, multi));
    }

    // Panels.
    let all = panels(&dashboard["panels"]);
    if all.iter().all(|p| p["type"] == "row") {
        problem("dashboard has no panels".into());
    }
    let mut ids = BTreeSet::new();
    for panel in all {
        let what = format!("panel {:?}", title(panel));
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            Some(id) => problem(format!("{what}: id {id} is used twice")),
            None => problem(format!("{what}: no numeric id")),
        }
        let kind = panel["type"].as_str().unwrap_or("");
        if !PANEL_TYPES.contains(&kind) {
            problem(format!(
                "{what}: type {kind:?} is not a panel Grafana ships"
            ));
        }
        let grid = &panel["gridPos"];
        let dim = |k: &str| grid[k].as_u64();
        match (dim("h"), dim("w"), dim("x"), dim("y")) {
            (Some(h), Some(w), Some(x), Some(_)) if h > 0 && w > 0 && x + w <= 24 => {}
            _ => problem(format!(
                "{what}: gridPos {grid} is not h, w > 0 and x + w <= 24"
            )),
        }
        for (_, _, used, _) in variable_refs(panel["title"].as_str().unwrap_or("")) {
            if !defined.iter().any(|(n, _)| *n == used) {
                problem(format!(
                    "{what}: its title uses ${used}, which is no variable"
                ));
            }
        }
        if let Some(repeat) = panel.get("repeat").and_then(Json::as_str) {
            match defined.iter().find(|(n, _)| *n == repeat) {
                Some((_, true)) => {}
                Some((_, false)) => problem(format!(
                    "{what}: repeats by ${repeat}, which is neither multi nor includeAll"
                )),
                None => problem(format!("{what}: repeats by ${repeat}, no such variable")),
            }
        }
        if kind == "row" {
            continue;
        }
        if !is_postgres(&panel["datasource"]) {
            problem(format!(
                "{what}: data source {} is not {POSTGRES_TYPE} {POSTGRES_UID}",
                panel["datasource"]
            ));
        }
        let list = targets(panel);
        if list.is_empty() {
            problem(format!("{what}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for (i, target) in panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (ref_id, sql, format) = list[i];
            let what = format!("{what} target {ref_id:?}");
            if ref_id.is_empty() || !refs.insert(ref_id) {
                problem(format!("{what}: refId missing or used twice"));
            }
            if let Some(ds) = target.get("datasource")
                && !is_postgres(ds)
            {
                problem(format!("{what}: data source {ds} is not the panel's"));
            }
            if sql.trim().is_empty() {
                problem(format!("{what}: no rawSql"));
            }
            if target["rawQuery"] != Json::Bool(true) && target["editorMode"] != "code" {
                problem(format!(
                    "{what}: neither rawQuery nor editorMode code: Grafana would build the SQL from the builder instead"
                ));
            }
            if !matches!(format, "table" | "time_series") {
                problem(format!("{what}: format {format:?} (table or time_series)"));
            }
            for (_, _, used, _) in variable_refs(sql) {
                if !used.starts_with("__") && !defined.iter().any(|(n, _)| *n == used) {
                    problem(format!("{what}: uses ${used}, which is no variable"));
                }
            }
            if let Err(e) = expand_macros(sql, &TimeRange::of_now()) {
                problem(format!("{what}: {e}"));
            }
        }
    }
    problems
}

impl TimeRange {
    /// The last hour: only for checking that macros expand.
    fn of_now() -> Self {
        let now = SystemTime::now();
        Self {
            from: now - Duration::from_secs(3600),
            to: now,
        }
    }
}

/// The values of a `custom` variable (comma separated, `text : value` pairs allowed).
fn custom_values(var: &Json) -> Vec<String> {
    var["query"]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(|v| {
            let v = v.trim();
            v.rsplit_once(" : ")
                .map_or(v, |(_, value)| value)
                .to_string()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

/// [`dashboard_problems`], then every variable and panel query run against `db_url`
/// over the dashboard's default time range (see the module docs): returns what is wrong,
/// each query that failed or returned no rows named by its panel's title (or its
/// variable) with the SQL as sent. Empty when every panel has data.
pub fn check_markets_dashboard(db_url: &str, dashboard: &Path) -> Vec<String> {
    let json = load(dashboard);
    match TimeRange::of_dashboard(&json, SystemTime::now()) {
        Ok(range) => check_dashboard_over(db_url, dashboard, range),
        Err(e) => vec![e],
    }
}

fn load(dashboard: &Path) -> Json {
    serde_json::from_str(
        &std::fs::read_to_string(dashboard)
            .unwrap_or_else(|e| panic!("read {}: {e}", dashboard.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dashboard.display()))
}

/// [`check_markets_dashboard`] over `range` instead of the dashboard's default.
pub fn check_dashboard_over(db_url: &str, dashboard: &Path, range: TimeRange) -> Vec<String> {
    let json = load(dashboard);
    let mut problems = dashboard_problems(&json);
    let url = db_url.to_string();
    let found = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_queries(&url, &json, &range))
    })
    .join()
    .expect("dashboard query thread");
    problems.extend(found);
    problems
}

/// A query's column names and rows (as text).
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

async fn query(client: &tokio_postgres::Client, sql: &str) -> Result<Answer, String> {
    use tokio_postgres::SimpleQueryMessage as M;
    let messages = client.simple_query(sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| format!("{}: {}", d.code().code(), d))
    })?;
    let mut answer = Answer {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in messages {
        match message {
            M::RowDescription(columns) => {
                answer.columns = columns.iter().map(|c| c.name().to_string()).collect();
            }
            M::Row(row) => {
                if answer.columns.is_empty() {
                    answer.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                answer.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok(answer)
}

async fn run_queries(url: &str, dashboard: &Json, range: &TimeRange) -> Vec<String> {
    let (client, conn) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => return vec![format!("connect to {url}: {e}")],
    };
    tokio::spawn(conn);
    // As Grafana's pool would; a dashboard query must not hang the check.
    if let Err(e) = client.batch_execute("SET statement_timeout = '20s'").await {
        return vec![format!("{url}: {e}")];
    }
    let mut problems = Vec::new();
    let sent = |sql: &str| -> Result<String, String> { expand_macros(sql, range) };

    let mut variables: Vec<Variable> = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().unwrap_or("").to_string();
        let quoted =
            var["multi"].as_bool().unwrap_or(false) || var["includeAll"].as_bool().unwrap_or(false);
        let values = match var["type"].as_str() {
            Some("custom") => custom_values(var),
            Some("query") => {
                let raw = variable_query(var).unwrap_or("");
                match sent(&interpolate(raw, &variables)) {
                    Err(e) => {
                        problems.push(format!("variable ${name}: {e}"));
                        Vec::new()
                    }
                    Ok(sql) => match query(&client, &sql).await {
                        Err(e) => {
                            problems.push(format!("variable ${name}: {e}\n{sql}"));
                            Vec::new()
                        }
                        // Grafana takes the first column as text and value (or
                        // __text / __value columns).
                        Ok(a) => {
                            let col = a.columns.iter().position(|c| c == "__value").unwrap_or(0);
                            a.rows
                                .into_iter()
                                .filter_map(|r| r.into_iter().nth(col).flatten())
                                .collect()
                        }
                    },
                }
            }
            _ => var["current"]["value"]
                .as_str()
                .map(|v| vec![v.to_string()])
                .unwrap_or_default(),
        };
        let value = match values.first() {
            Some(v) => v.clone(),
            None => {
                if !problems
                    .iter()
                    .any(|p| p.starts_with(&format!("variable ${name}:")))
                {
                    problems.push(format!("variable ${name}: its query returned no values"));
                }
                String::new()
            }
        };
        variables.push(Variable {
            name,
            value,
            quoted,
        });
    }

    for panel in panels(&dashboard["panels"]) {
        if panel["type"] == "row" {
            continue;
        }
        let what = format!("panel {:?}", title(panel));
        for (ref_id, raw, format) in targets(panel) {
            let sql = match sent(&interpolate(raw, &variables)) {
                Ok(sql) => sql,
                Err(e) => {
                    problems.push(format!("{what} ({ref_id}): {e}"));
                    continue;
                }
            };
            let answer = match query(&client, &sql).await {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("{what} ({ref_id}): {e}\n{sql}"));
                    continue;
                }
            };
            if answer.rows.is_empty() {
                problems.push(format!("{what} ({ref_id}): no rows\n{sql}"));
                continue;
            }
            let has = |c: &str| answer.columns.iter().any(|have| have == c);
            let mut need: Vec<&str> = Vec::new();
            if format == "time_series" {
                need.push("time");
            }
            match panel["type"].as_str() {
                Some("candlestick") => need.extend(["time", "open", "high", "low", "close"]),
                Some("xychart") => {
                    if let Some(x) = panel["options"]["dims"]["x"].as_str() {
                        need.push(x);
                    }
                    if answer.columns.len() < 2 {
                        problems.push(format!(
                            "{what} ({ref_id}): an XY chart needs an x and a y column, got {:?}",
                            answer.columns
                        ));
                    }
                }
                _ => {}
            }
            for column in need {
                if !has(column) {
                    problems.push(format!(
                        "{what} ({ref_id}): no column {column:?} (has {:?})",
                        answer.columns
                    ));
                }
            }
        }
    }
    problems
}
