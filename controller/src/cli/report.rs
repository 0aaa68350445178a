//! `vexctl report merge|show`: combine shard results files, re-render a results file.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::report;
use crate::results::RunResults;

use super::{EXIT_FAILURES, EXIT_OK};

/// Arguments of `vexctl report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// `vexctl report` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge the results files of the shards of one plan, print the summary and
    /// write the requested reports. Exit 0 when everything passed, 1 otherwise.
    Merge {
        /// Results JSON files (`--json` output of each shard).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the merged results JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Print a results file's summary and re-render its reports. Exit 0 when
    /// everything passed, 1 otherwise.
    Show {
        /// Results JSON file.
        file: PathBuf,
        /// Write the HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
}

/// Runs `vexctl report`.
pub fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let (r, junit, json, html) = match args.command {
        ReportCommand::Merge {
            files,
            junit,
            json,
            html,
        } => {
            let parts = files.iter().map(|f| read(f)).collect::<Result<_, _>>()?;
            let merged = report::merge(parts).context("merging results")?;
            (merged, junit, json, html)
        }
        ReportCommand::Show { file, html, junit } => (read(&file)?, junit, None, html),
    };
    // Summary first: a report that cannot be written (full disk) should not hide it.
    let mut out = std::io::stdout().lock();
    out.write_all(report::summary(&r, color()).as_bytes())?;
    out.flush()?;
    report::write_all(&r, junit.as_deref(), json.as_deref(), html.as_deref())?;
    Ok(if r.all_ok() { EXIT_OK } else { EXIT_FAILURES })
}

fn read(path: &Path) -> anyhow::Result<RunResults> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    report::parse(&text).with_context(|| format!("reading {}", path.display()))
}

/// Color on a terminal unless NO_COLOR is set to something (no-color.org).
fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
