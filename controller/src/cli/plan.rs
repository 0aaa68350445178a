//! `vexctl plan check FILE`: parse and check a test plan without running it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::plan;

use super::EXIT_OK;

/// Arguments of `vexctl plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PlanCommand,
}

/// `vexctl plan` subcommands.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Check a plan: syntax (errors name line and column) and meaning.
    Check {
        /// The plan file.
        file: PathBuf,
        /// Print the parsed plan as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `vexctl plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<u8> {
    match args.command {
        PlanCommand::Check { file, json } => {
            let p = plan::load(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let crashes = p.tests.iter().filter(|t| t.expect_crash.is_some()).count();
                println!(
                    "{}: ok: plan {:?}, {} tests ({} expecting a crash) on {}",
                    file.display(),
                    p.name,
                    p.tests.len(),
                    crashes,
                    p.kernels.join(", ")
                );
            }
            Ok(EXIT_OK)
        }
    }
}
