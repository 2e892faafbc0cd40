//! `weir guest deploy` (also `--shadow`), `list`, `history`, `rollback`, `promote`, `discard`
//! and `diff`: clients of a running `weir run`'s admin API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::admin::{
    ErrorReply, GuestList, History, ShadowEnded, ShadowStarted, SwapReply, TokenSource,
};
use crate::model::ShadowReport;

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Base URL of the admin API of a running `weir run`.
    #[arg(
        long = "admin",
        env = "WEIR_ADMIN_URL",
        default_value = "http://127.0.0.1:9465"
    )]
    url: String,
    /// A file holding the bearer token; without it, the token is read from the
    /// environment variable WEIR_ADMIN_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Environment variable the token is read from without `--token-file`.
const TOKEN_ENV: &str = "WEIR_ADMIN_TOKEN";

/// Longest a request may take (a deploy includes compiling the module on the server).
const TIMEOUT: Duration = Duration::from_secs(300);

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let source = match &args.token_file {
            Some(f) => TokenSource::File(f.clone()),
            None => TokenSource::Env(TOKEN_ENV.into()),
        };
        let token = source.read().context(
            "the admin API needs its bearer token: pass --token-file or set WEIR_ADMIN_TOKEN",
        )?;
        Ok(Self {
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            base: args.url.trim_end_matches('/').to_string(),
            token: token.expose().to_string(),
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("admin API {} is unreachable", self.base))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .context("reading the admin API's answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorReply>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("admin API answered {status}: {message}");
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("admin API {} answered something unexpected", self.base))
    }

    /// `GET path`; with `json`, the answer is printed as JSON and `None` returned.
    async fn get<T: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        path: &str,
        json: bool,
    ) -> anyhow::Result<Option<T>> {
        let answer: T = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(None);
        }
        Ok(Some(answer))
    }
}

/// `weir guest deploy NAME FILE.wasm`.
pub async fn deploy(
    args: &AdminArgs,
    name: &str,
    file: &PathBuf,
    shadow: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let put = |path: String| {
        client
            .http
            .put(format!("{}{path}", client.base))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(bytes)
    };
    if shadow {
        let reply: ShadowStarted = client.send(put(format!("/guests/{name}/shadow"))).await?;
        println!(
            "Shadowing {}: candidate {} runs next to live {} on every member; see `weir guest diff {}`",
            reply.name,
            short(&reply.candidate),
            short(&reply.live),
            reply.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let reply: SwapReply = client.send(put(format!("/guests/{name}"))).await?;
    if reply.changed {
        println!(
            "Deployed {}: {} -> {}",
            reply.name,
            short(&reply.old_version),
            short(&reply.version)
        );
    } else {
        println!("{} already runs {}", reply.name, short(&reply.version));
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir guest rollback NAME`.
/// `weir guest promote`.
pub async fn promote(args: &AdminArgs, name: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let url = format!("{}/guests/{name}/promote", client.base);
    let reply: SwapReply = client.send(client.http.post(url)).await?;
    if reply.changed {
        println!(
            "Promoted {}'s shadow candidate: {} -> {}",
            reply.name,
            short(&reply.old_version),
            short(&reply.version)
        );
    } else {
        println!(
            "{} already runs {}; the shadow run ended",
            reply.name,
            short(&reply.version)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir guest discard`.
pub async fn discard(args: &AdminArgs, name: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let url = format!("{}/guests/{name}/shadow", client.base);
    let reply: ShadowEnded = client.send(client.http.delete(url)).await?;
    println!("Ended the shadow run of {}", reply.name);
    Ok(ExitCode::SUCCESS)
}

/// `weir guest diff`.
pub async fn diff(
    args: &AdminArgs,
    name: &str,
    limit: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/guests/{name}/diff?limit={limit}");
    let Some(report): Option<ShadowReport> = Client::new(args)?.get(&path, json).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "{}: candidate {} (since {}, by {})",
        report.guest,
        short(&report.sha256),
        report.started_at,
        report.origin
    );
    println!(
        "compared {} messages, {} differing; {} batches skipped while the candidate was busy",
        report.compared, report.differing, report.skipped
    );
    for d in &report.diffs {
        println!(
            "{} {}[{}]@{} {}\n  live:      {}\n  candidate: {}",
            d.pipeline, d.topic, d.partition, d.offset, d.kind, d.live, d.candidate
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(args: &AdminArgs, name: &str) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let url = format!("{}/guests/{name}/rollback", client.base);
    let reply: SwapReply = client.send(client.http.post(url)).await?;
    println!(
        "Rolled {} back: {} -> {}",
        reply.name,
        short(&reply.old_version),
        short(&reply.version)
    );
    Ok(ExitCode::SUCCESS)
}

/// `weir guest list`.
pub async fn list(args: &AdminArgs, json: bool) -> anyhow::Result<ExitCode> {
    let Some(list): Option<GuestList> = Client::new(args)?.get("/guests", json).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "{:<20} {:<12} {:<24} {:>10} {:>8} {:>6}  TOPICS",
        "GUEST", "VERSION", "LOADED AT", "CALLS", "ERRORS", "SWAPS"
    );
    for g in &list.guests {
        let topics: Vec<&str> = g
            .pipelines
            .iter()
            .flat_map(|p| p.topics.iter().map(String::as_str))
            .collect();
        println!(
            "{:<20} {:<12} {:<24} {:>10} {:>8} {:>6}  {}",
            g.name,
            short(&g.version),
            g.loaded_at,
            g.calls,
            g.errors,
            g.swaps,
            topics.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir guest history`: every version of a guest deployed to the group.
pub async fn history(args: &AdminArgs, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/guests/{name}/history");
    let Some(history): Option<History> = Client::new(args)?.get(&path, json).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "{:>7} {:<12} {:<10} {:<24} {:<24} {:<24}  FROM OFFSETS / ORIGIN",
        "VERSION", "SHA256", "STATUS", "DEPLOYED AT", "LIVE FROM", "LIVE UNTIL"
    );
    for v in &history.versions {
        let offsets: Vec<String> = v
            .switches
            .iter()
            .map(|s| format!("{}[{}]@{}", s.topic, s.partition, s.from_offset))
            .collect();
        println!(
            "{:>7} {:<12} {:<10} {:<24} {:<24} {:<24}  {}",
            v.version,
            short(&v.sha256),
            v.status,
            v.deployed_at,
            v.live_from.as_deref().unwrap_or("-"),
            v.live_until.as_deref().unwrap_or("-"),
            if offsets.is_empty() {
                "-".to_string()
            } else {
                offsets.join(" ")
            }
        );
        let detail = v
            .detail
            .as_deref()
            .map(|d| format!(" (refused: {d})"))
            .unwrap_or_default();
        println!("{:>7} {} by {}{detail}", "", v.kind, v.origin);
    }
    Ok(ExitCode::SUCCESS)
}

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}
