//! `vexctl run`: run a test plan across kernels and report.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::plan;
use crate::report;
use crate::runner::{self, Progress, RunConfig};
use crate::vm::image;

use super::{EXIT_FAILURES, EXIT_HARNESS, EXIT_OK};

/// Arguments of `vexctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Test plan (TOML); default: the built-in crash scenario suite (plans/default.toml).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Kernel to run on (release, prefix such as 6.1, or latest-6.12; debug-6.12 or
    /// debug-6.1 for a KASAN/lockdep kernel built from Debian's source; or the path of
    /// a built kernel tree); repeat for a matrix. Default: the plan's kernels.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Guests at a time (default: one per two cores, at least one).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Crash database (default: $VEXFS_DB, else ~/.local/share/vexfs/crashes.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write the JSON results here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Run only slice I of N of the (kernel, test) matrix, for CI runners.
    #[arg(long)]
    pub shard: Option<String>,
    /// Resume the run with this id (after an interruption).
    #[arg(long)]
    pub resume: Option<i64>,
    /// Guest images directory (default: <cache>/images).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics during the run (a loopback
    /// address only, e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs `vexctl run`.
pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let (plan, plan_text) = match &args.plan {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading plan {}", p.display()))?;
            (plan::parse(&text, &p.display().to_string())?, text)
        }
        None => (
            plan::parse(plan::DEFAULT_PLAN, "plans/default.toml")?,
            plan::DEFAULT_PLAN.to_string(),
        ),
    };
    let shard = args.shard.as_deref().map(runner::parse_shard).transpose()?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cfg = RunConfig {
        plan,
        plan_text,
        kernels: args.kernels,
        jobs: args.jobs.unwrap_or((cores / 2).max(1)),
        db: super::crashes::db_path(args.db),
        shard,
        resume: args.resume,
        images_dir: args.image_dir.unwrap_or_else(image::default_images_dir),
        plan_dir: runner::plan_dir(args.plan.as_deref()),
        progress: if args.quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars
        } else {
            Progress::Lines
        },
    };
    let db = cfg.db.clone();
    // Refused before anything starts: a non-loopback address is a usage error.
    if let Some(addr) = args.metrics {
        crate::metrics::check_loopback(addr)?;
    }
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let results = rt.block_on(async {
        if let Some(addr) = args.metrics {
            let bound = crate::metrics::serve(crate::metrics::global().clone(), addr).await?;
            eprintln!("metrics: http://{bound}/metrics");
        }
        anyhow::Ok(runner::run(cfg).await?)
    })?;
    report::write_all_with(
        &results,
        args.junit.as_deref(),
        args.json.as_deref(),
        args.html.as_deref(),
        Some(&db),
    )?;
    let color = report::summary::stdout_color();
    print!("{}", report::summary(&results, color));
    println!(
        "run {} recorded in {} (vexctl crashes stats --db {} --run {})",
        results.run_id,
        db.display(),
        db.display(),
        results.run_id
    );
    // A kernel the harness could not test (a guest that never booted, a database it
    // could not write) makes the results incomplete: that is the harness's failure.
    Ok(
        if results.kernels.iter().any(|k| k.harness_error.is_some()) {
            EXIT_HARNESS
        } else if results.all_ok() {
            EXIT_OK
        } else {
            EXIT_FAILURES
        },
    )
}
