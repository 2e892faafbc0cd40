//! `weir guest check` and `weir guest run`; `deploy`, `list`, `history`, `rollback`,
//! `promote`, `discard` and `diff` are in
//! [`super::admin`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::jsonl::{self, Defaults, Input};
use crate::model::{ConfigEntry, NoLookups, StateLimits, StateStore, StateTxn, batch_of};
use crate::runtime::{
    CallContext, GuestLimits, LoadError, PoolingConfig, Runtime, RuntimeConfig, TracingEvents,
    WORLD,
};

/// Guest commands.
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Print a guest's world (which contract version it targets), imports and exports;
    /// exit 0 only if it fits that version's world.
    Check {
        /// The guest component (.wasm).
        file: PathBuf,
    },
    /// Run a guest over messages given as JSON lines and print its outcomes as JSON lines.
    ///
    /// Each input line is a message: `{"topic": …, "partition": …, "offset": …, "key": …,
    /// "headers": [{"key": …, "value": …}], "fields": {…}}`, or just the fields object.
    /// Typed values are one-key objects: {"$timestamp": "2024-05-01T12:00:00Z"},
    /// {"$decimal": "1.50"}, {"$bytes": "<base64>"}. Consecutive messages of one partition
    /// make a batch. A guest that keeps state starts from none and keeps it, per
    /// partition, for the run; lookups need a database, so they fail here.
    Run(RunArgs),
    /// Deploy a new version of a guest to the group of a running `weir run` through its
    /// admin API: compiled and checked by every member, then switched in everywhere at
    /// once, and recorded in Postgres so restarts keep it.
    Deploy {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// The guest name (the file stem of the guest in the pipeline config).
        name: String,
        /// The new version (.wasm).
        file: PathBuf,
        /// Run it as a shadow candidate instead: next to the live version on the same
        /// batches on every member, its outcomes compared (`weir guest diff`) and never
        /// written, until `weir guest promote` or `weir guest discard`.
        #[arg(long)]
        shadow: bool,
    },
    /// Make the shadow candidate of a guest live on the group (as a deploy does) and end
    /// its shadow run.
    Promote {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// The guest name.
        name: String,
    },
    /// End the shadow run of a guest, forgetting its differences.
    Discard {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// The guest name.
        name: String,
    },
    /// Show how a guest's shadow candidate compares with the live version: messages
    /// compared and differing, and the latest differences (rows, emits, dead letters).
    Diff {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// Print the admin API's JSON answer.
        #[arg(long)]
        json: bool,
        /// How many of the latest differences to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// The guest name.
        name: String,
    },
    /// List the guests of a running `weir run`: version, load time, calls, errors, topics.
    List {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// Print the admin API's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List every version of a guest deployed to the group of a running `weir run`: when,
    /// by what, and from which offset of each partition it was live.
    History {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// Print the admin API's JSON answer.
        #[arg(long)]
        json: bool,
        /// The guest name.
        name: String,
    },
    /// Roll a guest of a running `weir run` back to the version its last swap replaced.
    Rollback {
        #[command(flatten)]
        admin: super::admin::AdminArgs,
        /// The guest name.
        name: String,
    },
    /// Compile a component read on stdin, under a memory cap, writing the compiled
    /// artifact on stdout: how `weir run` compiles guests without risking its memory.
    #[command(hide = true)]
    CompileIsolated {
        /// Memory this process may use, in bytes.
        #[arg(long)]
        max_memory: usize,
        /// The runtime's guest stack, in bytes (it shapes the compiled code).
        #[arg(long)]
        max_stack: usize,
    },
}

/// Arguments of `weir guest run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The guest component (.wasm).
    file: PathBuf,
    /// Messages as JSON lines; `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// Topic of messages whose line names none.
    #[arg(long, default_value = "input")]
    topic: String,
    /// A guest config value, `KEY=VALUE`; repeatable.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Messages per guest call; 0 puts them all in one batch.
    #[arg(long, default_value_t = 0)]
    batch_size: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Per-call limits, as on the command line.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// CPU time a guest call may take.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    deadline: Duration,
    /// Linear memory a guest call may use.
    #[arg(long, default_value = "128MiB", value_parser = super::parse_size)]
    max_memory: usize,
    /// Native stack a guest call may use.
    #[arg(long, default_value = "512KiB", value_parser = super::parse_size)]
    max_stack: usize,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs a guest command.
pub fn run(cmd: GuestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GuestCommand::Check { file } => check(&file),
        GuestCommand::Run(args) => run_jsonl(args),
        GuestCommand::Deploy {
            admin,
            name,
            file,
            shadow,
        } => super::block_on(super::admin::deploy(&admin, &name, &file, shadow)),
        GuestCommand::Promote { admin, name } => {
            super::block_on(super::admin::promote(&admin, &name))
        }
        GuestCommand::Discard { admin, name } => {
            super::block_on(super::admin::discard(&admin, &name))
        }
        GuestCommand::Diff {
            admin,
            json,
            limit,
            name,
        } => super::block_on(super::admin::diff(&admin, &name, limit, json)),
        GuestCommand::List { admin, json } => super::block_on(super::admin::list(&admin, json)),
        GuestCommand::History { admin, json, name } => {
            super::block_on(super::admin::history(&admin, &name, json))
        }
        GuestCommand::Rollback { admin, name } => {
            super::block_on(super::admin::rollback(&admin, &name))
        }
        GuestCommand::CompileIsolated {
            max_memory,
            max_stack,
        } => {
            crate::runtime::compile_isolated(max_memory, max_stack)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime(max_stack: usize, max_memory: usize) -> anyhow::Result<Runtime> {
    // One call at a time: a small pool is enough.
    let config = RuntimeConfig {
        max_wasm_stack: max_stack,
        pooling: Some(PoolingConfig {
            instances: 4,
            max_memory: max_memory.max(PoolingConfig::default().max_memory),
        }),
        ..RuntimeConfig::default()
    };
    Runtime::new(config, Arc::new(TracingEvents::default())).context("starting the wasm runtime")
}

fn read_guest(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read guest {}", file.display()))
}

fn check(file: &Path) -> anyhow::Result<ExitCode> {
    let bytes = read_guest(file)?;
    let rt = runtime(RuntimeConfig::default().max_wasm_stack, 0)?;
    let name = file.display().to_string();
    let info = rt.inspect(&name, &bytes)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "guest:   {name}")?;
    writeln!(out, "size:    {} bytes", bytes.len())?;
    writeln!(out, "sha256:  {}", sha256_hex(&bytes))?;
    writeln!(out, "targets: {}", info.contract)?;
    if let Some(wit) = &info.wit {
        writeln!(out, "world:")?;
        for line in wit.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out, "imports:")?;
    for i in &info.imports {
        let verdict = if i.allowed { "ok" } else { "NOT GRANTED" };
        writeln!(out, "  {:<40} {:<10} {verdict}", i.name, i.kind)?;
    }
    writeln!(out, "exports:")?;
    for e in &info.exports {
        let verdict = if e.allowed { "ok" } else { "ignored" };
        writeln!(out, "  {:<40} {:<10} {verdict}", e.name, e.kind)?;
    }
    match rt.load(&name, &bytes, GuestLimits::default()) {
        Ok(guest) => {
            writeln!(out, "result:  fits {}", guest.contract())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "result:  does not fit {WORLD}")?;
            drop(out);
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn read_messages(input: &Path, defaults: &Defaults) -> anyhow::Result<Vec<Input>> {
    let (reader, source): (Box<dyn BufRead>, String) = if input == Path::new("-") {
        (Box::new(std::io::stdin().lock()), "<stdin>".into())
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read input {}", input.display()))?;
        (Box::new(BufReader::new(file)), input.display().to_string())
    };
    let mut messages = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{source}:{}: cannot read", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let message = jsonl::parse_message(&line, messages.len(), defaults)
            .map_err(|e| anyhow::anyhow!("{source}:{}: {e}", n + 1))?;
        messages.push(message);
    }
    Ok(messages)
}

fn run_jsonl(args: RunArgs) -> anyhow::Result<ExitCode> {
    let defaults = Defaults {
        topic: args.topic.clone(),
    };
    // Read the input before compiling, so a bad line is reported at once.
    let messages = read_messages(&args.input, &defaults)?;
    let rt = runtime(args.limits.max_stack, args.limits.max_memory)?;
    let limits = GuestLimits {
        deadline: args.limits.deadline,
        max_memory: args.limits.max_memory,
    };
    let guest = match rt.load_file(&args.file, limits) {
        Ok(g) => g,
        Err(e @ LoadError::Read { .. }) => bail!("{e}"),
        Err(e) => return Err(e.into()),
    };
    let config: Vec<ConfigEntry> = args
        .config
        .iter()
        .map(|(key, value)| ConfigEntry {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let guest = rt.setup(&guest, "weir guest run", limits, config)?;
    let size = if args.batch_size == 0 {
        usize::MAX
    } else {
        args.batch_size
    };
    let lookups = Arc::new(NoLookups(
        "`weir guest run` has no database to run lookups in; they run under `weir run`".into(),
    ));
    let mut states: HashMap<(String, i32), Arc<StateStore>> = HashMap::new();
    let mut out = std::io::stdout().lock();
    let mut pending = messages.into_iter().peekable();
    while let Some(first) = pending.next() {
        let (topic, partition) = (first.topic, first.partition);
        let mut records = vec![first.record];
        while records.len() < size
            && let Some(next) = pending.next_if(|m| m.topic == topic && m.partition == partition)
        {
            records.push(next.record);
        }
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        let batch = batch_of(&topic, partition, records);
        let key = (topic.clone(), partition);
        let state = guest.uses_state().then(|| {
            StateTxn::new(
                states.get(&key).cloned().unwrap_or_default(),
                StateLimits::default(),
            )
        });
        let call = guest.process(
            &batch,
            CallContext {
                state,
                lookups: Some(lookups.clone()),
            },
        );
        let output = call.output?;
        if let Some(txn) = call.state {
            let mut store = states
                .get(&key)
                .map_or_else(StateStore::default, |s| (**s).clone());
            store.apply(&txn.writes());
            states.insert(key, Arc::new(store));
        }
        for (offset, outcome) in offsets.iter().zip(&output.outcomes) {
            let line = jsonl::outcome_json(&topic, partition, *offset, outcome, &output);
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
