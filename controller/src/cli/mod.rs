//! Command-line interface of `vexctl`: argument parsing and dispatch to one module per
//! subcommand. Exit codes: 0 success, 1 test failures or crashes found, 2 harness or
//! usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
pub mod classify;
pub mod crashes;
pub mod image;
pub mod plan;
pub mod report;
pub mod run;
pub mod vm;

/// Exit code: everything as expected.
pub const EXIT_OK: u8 = 0;
/// Exit code: test failures, unexpected crashes (or, for `classify`, a crash found).
pub const EXIT_FAILURES: u8 = 1;
/// Exit code: harness or usage error.
pub const EXIT_HARNESS: u8 = 2;

/// Crash-testing harness for Linux kernel modules.
#[derive(Debug, Parser)]
#[command(name = "vexctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Log verbosity (error, warn, info, debug, trace); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn", env = "VEXCTL_LOG")]
    pub log: String,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify the crashes in a kernel log.
    Classify(classify::ClassifyArgs),
    /// Boot guest VMs.
    Vm(vm::VmArgs),
    /// Drive a running guest agent.
    Agent(agent::AgentArgs),
    /// Read the crash database: list, show, stats.
    Crashes(crashes::CrashesArgs),
    /// Merge shard results and render reports (summary, JUnit, JSON, HTML).
    Report(report::ReportArgs),
    /// Run a test plan (default: the crash scenario suite) across kernels.
    Run(run::RunArgs),
    /// Check test plans.
    Plan(plan::PlanArgs),
    /// Build the guest images a plan needs.
    Image(image::ImageArgs),
}

/// Parses arguments, runs the subcommand and maps its result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result: anyhow::Result<u8> = match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Vm(args) => vm::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Crashes(args) => crashes::run(args),
        Command::Report(args) => report::run(args),
        Command::Run(args) => run::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Image(args) => image::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("vexctl: error: {err:#}");
            ExitCode::from(EXIT_HARNESS)
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .try_init();
}
