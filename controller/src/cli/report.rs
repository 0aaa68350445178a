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
    run_to(args, &mut std::io::stdout().lock(), color())
}

fn run_to(args: ReportArgs, out: &mut dyn Write, color: bool) -> anyhow::Result<u8> {
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
    out.write_all(report::summary(&r, color).as_bytes())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;
    use crate::results::TestStatus;

    fn merge_args(files: Vec<PathBuf>, dir: &Path) -> ReportArgs {
        ReportArgs {
            command: ReportCommand::Merge {
                files,
                junit: Some(dir.join("junit.xml")),
                json: Some(dir.join("merged.json")),
                html: Some(dir.join("report.html")),
            },
        }
    }

    #[test]
    fn merge_writes_reports_and_maps_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (sample(), sample());
        a.kernels.truncate(1);
        b.kernels.remove(0);
        b.shard = Some("2/2".into());
        let (fa, fb) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&fa, report::json(&a)).unwrap();
        std::fs::write(&fb, report::json(&b)).unwrap();
        let mut out = Vec::new();
        let code = run_to(
            merge_args(vec![fb.clone(), fa.clone()], dir.path()),
            &mut out,
            false,
        );
        assert_eq!(code.unwrap(), EXIT_FAILURES);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("vexfs plan smoke (run 42)"), "{out}");
        let merged = read(&dir.path().join("merged.json")).unwrap();
        assert_eq!(merged.kernels, sample().kernels);
        assert!(dir.path().join("junit.xml").exists() && dir.path().join("report.html").exists());

        // Everything passing: exit 0.
        let mut ok = sample();
        ok.kernels.truncate(1);
        ok.kernels[0]
            .tests
            .retain(|t| t.status == TestStatus::Passed);
        std::fs::write(&fa, report::json(&ok)).unwrap();
        let show = ReportArgs {
            command: ReportCommand::Show {
                file: fa.clone(),
                html: None,
                junit: None,
            },
        };
        assert_eq!(run_to(show, &mut Vec::new(), false).unwrap(), EXIT_OK);

        // Errors (exit 2 in main) name the file.
        let missing = dir.path().join("missing.json");
        let e = run_to(
            merge_args(vec![fa, missing], dir.path()),
            &mut Vec::new(),
            false,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("missing.json"), "{e:#}");
        std::fs::write(&fb, "not json").unwrap();
        let e = run_to(merge_args(vec![fb], dir.path()), &mut Vec::new(), false).unwrap_err();
        assert!(
            format!("{e:#}").contains("b.json: invalid results JSON"),
            "{e:#}"
        );
    }
}
