//! `vexfs-agent`: thin main over the agent library. As PID 1 it becomes init (mounts,
//! transport modules, reaping) and runs the agent as its child.

use std::process::ExitCode;

use vexfs_agent::config::{self, Action};
use vexfs_agent::{init, probe};

fn main() -> ExitCode {
    if init::is_pid1() {
        init::run();
    }
    let level = match std::env::var("VEXFS_AGENT_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let as_init = init::is_init_child();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = match config::parse(&args, &cmdline, as_init) {
        Ok(Action::Run(c)) => c,
        Ok(Action::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("vexfs-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Action::ProbeVsock { cid, port }) => {
            return match probe::vsock(cid, port, probe::TIMEOUT) {
                Ok(verdict) => {
                    println!("{verdict}");
                    ExitCode::from(verdict.exit_code())
                }
                Err(e) => {
                    println!("unreachable: {e}");
                    ExitCode::from(4)
                }
            };
        }
        Err(e) => {
            eprintln!("vexfs-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if as_init {
        init::harden_self();
    }
    // A small runtime: the agent is mostly idle and memory is locked in the guest.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vexfs-agent: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(vexfs_agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vexfs-agent: {e}");
            ExitCode::from(1)
        }
    }
}
