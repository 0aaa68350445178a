//! `vexctl vm boot`: boots a guest image, waits until the agent answers Health and
//! prints the boot time; shuts the guest down unless `--keep`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{EXIT_HARNESS, EXIT_OK};
use crate::vm::image::{self, Manifest};
use crate::vm::{AccelChoice, PanicAction, Vm, VmConfig, process};

/// Guest VM operations.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// The operation.
    #[command(subcommand)]
    pub command: VmCommand,
}

/// VM subcommands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a guest and wait until its agent is healthy.
    Boot(BootArgs),
}

/// `vm boot` options.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Kernel release (or prefix, e.g. 6.1) of a cached image; default: newest 6.12.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Images directory (default: <cache>/images).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Boot this kernel file instead of a cached image (with --initramfs, --cmdline).
    #[arg(long, requires = "initramfs")]
    pub kernel_file: Option<PathBuf>,
    /// Initramfs for --kernel-file.
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line for --kernel-file (console and agent port are added).
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    pub cmdline: String,
    /// Wait for this console text instead of the agent's Health (guests without agent).
    #[arg(long)]
    pub wait_console: Option<String>,
    /// Keep the guest running (until Ctrl-C or until it exits) and print its address.
    #[arg(long)]
    pub keep: bool,
    /// Echo the serial console to stderr.
    #[arg(long)]
    pub console: bool,
    /// Accelerator: tcg, kvm or auto (probe KVM, cached).
    #[arg(long, env = "VEXFS_ACCEL", default_value = "auto")]
    pub accel: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// What a guest panic does: pause, exit-failure, shutdown, none.
    #[arg(long, default_value = "pause")]
    pub panic_action: String,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Keep the run directory (console.log, qemu.log) after exit.
    #[arg(long)]
    pub keep_run_dir: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `vexctl vm`.
pub fn run(args: VmArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(async move {
        match args.command {
            VmCommand::Boot(b) => {
                tokio::select! {
                    r = boot(b) => r,
                    _ = tokio::signal::ctrl_c() => {
                        eprintln!("vexctl: interrupted; killing the guest");
                        Ok(EXIT_HARNESS)
                    }
                }
            }
        }
    });
    // The select dropped the Vm (group kill); this catches anything still registered.
    process::kill_all();
    result
}

fn parse_panic_action(s: &str) -> anyhow::Result<PanicAction> {
    Ok(match s {
        "pause" => PanicAction::Pause,
        "exit-failure" => PanicAction::ExitFailure,
        "shutdown" => PanicAction::Shutdown,
        "none" => PanicAction::None,
        other => {
            anyhow::bail!("invalid --panic-action {other:?} (pause, exit-failure, shutdown, none)")
        }
    })
}

fn config(args: &BootArgs) -> anyhow::Result<(VmConfig, String)> {
    let (mut cfg, release) = match &args.kernel_file {
        Some(kernel) => {
            let mut cfg = VmConfig::new(kernel, args.cmdline.clone());
            cfg.initramfs = args.initramfs.clone();
            cfg.agent_port = Some(5000);
            (cfg, kernel.display().to_string())
        }
        None => {
            let dir = args
                .image_dir
                .clone()
                .unwrap_or_else(image::default_images_dir);
            let m: Manifest = image::select_image(&dir, args.kernel.as_deref())?;
            (VmConfig::from_manifest(&m), m.kernel_release)
        }
    };
    cfg.accel = args.accel.parse::<AccelChoice>()?;
    cfg.memory_mib = args.memory;
    cfg.cpus = args.cpus;
    cfg.panic_action = parse_panic_action(&args.panic_action)?;
    cfg.keep_run_dir = args.keep_run_dir;
    Ok((cfg, release))
}

async fn boot(args: BootArgs) -> anyhow::Result<u8> {
    let (cfg, release) = config(&args)?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.0));
    let t0 = Instant::now();
    let vm = Vm::launch(&cfg).await?;
    let launched = t0.elapsed();
    if args.console {
        let mut rx = vm.console().subscribe();
        for line in vm.console().history() {
            eprintln!("{}", line.text);
        }
        tokio::spawn(async move {
            while let Ok(line) = rx.recv().await {
                eprintln!("{}", line.text);
            }
        });
    }
    let mut health = None;
    match &args.wait_console {
        Some(marker) => {
            vm.wait_for_console(timeout, |l| l.text.contains(marker.as_str()))
                .await?
                .with_context(|| format!("no console line with {marker:?} within {timeout:?}"))?;
        }
        None => {
            let (_client, h) = vm.wait_for_agent(timeout).await?;
            health = Some(h);
        }
    }
    let booted = vm.started().elapsed();
    let addr = vm
        .agent_address()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
            "kernel": release, "accel": vm.accel().as_str(),
            "boot_ms": booted.as_millis() as u64, "launch_ms": launched.as_millis() as u64,
            "agent_address": addr, "run_dir": vm.run_dir(),
            "health": health.as_ref().map(super::agent::health_json),
        });
        writeln!(out, "{v}")?;
    } else {
        let what = if health.is_some() {
            "agent healthy"
        } else {
            "console marker seen"
        };
        writeln!(
            out,
            "booted {release} ({}) in {:.2} s: {what}",
            vm.accel().as_str(),
            booted.as_secs_f64()
        )?;
        if let Some(h) = &health {
            writeln!(
                out,
                "guest kernel {}, agent {}, boot id {}",
                h.kernel_release, h.agent_version, h.boot_id
            )?;
        }
    }
    out.flush()?;
    drop(out);
    if args.keep {
        eprintln!("agent address: {addr}");
        eprintln!("run dir: {}", vm.run_dir().display());
        eprintln!("try: vexctl agent --connect {addr} health   (Ctrl-C here stops the guest)");
        let mut exit = vm.exit_watch();
        let status = exit.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        eprintln!("vexctl: qemu exited: {status:?}");
        return Ok(EXIT_OK);
    }
    let status = vm.shutdown(Duration::from_secs(5)).await;
    tracing::debug!(?status, "qemu stopped");
    Ok(EXIT_OK)
}
