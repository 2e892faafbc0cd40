//! `weir config render`: the configuration file as its template renders it, and whether
//! it is valid.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{Config, ConfigError};

/// `weir config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration file rendered (environment variables and values filled in).
    Render(RenderArgs),
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
    /// Renders, parses and checks the configuration file.
    pub fn load(&self) -> Result<Config, ConfigError> {
        crate::config::load(&self.config, self.values.as_deref())
    }
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
                let text =
                    crate::config::render(&args.config.config, args.config.values.as_deref())?;
                print!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
