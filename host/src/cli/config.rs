//! `weir config render`: the configuration file as its template renders it, and whether
//! it is valid.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use anyhow::Context as _;

use crate::config::Config;

/// `weir config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration file rendered (environment variables and values filled in).
    Render(RenderArgs),
    /// Render the configuration file in this process, its memory capped: how the
    /// other commands render without risking their own memory.
    #[command(hide = true)]
    RenderIsolated(ConfigArgs),
}

/// Which configuration file, and its template values. Flatten it into any command that
/// reads the configuration.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The configuration file (a tera template of YAML).
    #[arg(long, short = 'c', env = "WEIR_CONFIG", default_value = "weir.yaml")]
    pub config: PathBuf,
    /// A YAML file of values for the template, available as `values` and `Values`.
    #[arg(long, env = "WEIR_VALUES")]
    pub values: Option<PathBuf>,
}

impl ConfigArgs {
    /// Renders (in a child process, see [`crate::config::render_isolated`]), parses and
    /// checks the configuration file.
    pub fn load(&self) -> anyhow::Result<Config> {
        Ok(crate::config::load_isolated(
            &self.config,
            self.values.as_deref(),
            &weir_exe()?,
        )?)
    }

    /// The rendered text (in a child process).
    fn render(&self) -> anyhow::Result<String> {
        Ok(crate::config::render_isolated(
            &self.config,
            self.values.as_deref(),
            &weir_exe()?,
        )?)
    }
}

/// This `weir` binary, to run children of.
fn weir_exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the weir binary")
}

/// Arguments of `weir config render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Parse and check the rendered file too, and print `ok` instead of the text.
    #[arg(long)]
    check: bool,
}

/// Runs `weir config …`.
pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Render(args) => {
            if args.check {
                args.config.load()?;
                println!("ok");
            } else {
                print!("{}", args.config.render()?);
            }
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::RenderIsolated(args) => {
            crate::isolate::cap_memory(crate::config::RENDER_MEMORY)?;
            let text = crate::config::render(&args.config, args.values.as_deref())?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
