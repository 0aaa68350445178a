//! `vexctl image build --plan P [--kernel K]...`: build the guest images a plan needs
//! (its module from source per kernel, its tools, kernel modules and disk driver), the
//! same images `vexctl run` uses. Exit 1 when the module or a tool does not compile,
//! 2 for any other trouble.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::build::BuildError;
use crate::build::image::{ImageRequest, PlanImage, ensure_plan_image, resolve_release};
use crate::plan;
use crate::vm::image::{cache_dir, default_images_dir};

use super::{EXIT_FAILURES, EXIT_HARNESS, EXIT_OK};

/// Arguments of `vexctl image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// `vexctl image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (when missing or stale) a plan's guest image for each kernel.
    Build {
        /// The plan file.
        #[arg(long)]
        plan: PathBuf,
        /// Kernel (`latest-6.12`, a release, or a prefix of a cached image's release);
        /// repeatable; default: the plan's kernels.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Rebuild the image even when it is up to date.
        #[arg(long)]
        force: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn describe(img: &PlanImage) -> serde_json::Value {
    serde_json::json!({
        "kernel": img.manifest.kernel_release,
        "manifest_initramfs": img.manifest.initramfs,
        "module": img.module.as_ref().map(|m| serde_json::json!({
            "name": m.name, "ko": m.ko, "vermagic": m.vermagic,
            "cached": m.cached, "build_s": m.took.as_secs_f64(),
        })),
        "image_s": img.image_took.as_secs_f64(),
    })
}

/// Runs `vexctl image`.
pub fn run(args: ImageArgs) -> anyhow::Result<u8> {
    let ImageCommand::Build {
        plan: file,
        kernels,
        force,
        json,
    } = args.command;
    let p = plan::load(&file)?;
    let plan_dir = file
        .canonicalize()
        .ok()
        .and_then(|f| f.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let kernels = if kernels.is_empty() {
        p.kernels.clone()
    } else {
        kernels
    };
    let mut code = EXIT_OK;
    let mut out = Vec::new();
    for k in &kernels {
        let result = resolve_release(k, &default_images_dir()).and_then(|release| {
            ensure_plan_image(
                &p,
                &ImageRequest {
                    plan_dir: plan_dir.clone(),
                    release,
                    cache: cache_dir(),
                    out: None,
                    agent: None,
                    force,
                },
            )
        });
        match result {
            Ok(img) => {
                if !json {
                    let module = img.module.as_ref().map_or(String::new(), |m| {
                        let how = if m.cached { "cached" } else { "built" };
                        format!(", module {} {how} in {:.1} s", m.name, m.took.as_secs_f64())
                    });
                    println!(
                        "{}: image ready: {}{module}",
                        img.manifest.kernel_release,
                        img.manifest.initramfs.display()
                    );
                }
                out.push(describe(&img));
            }
            Err(e) => {
                let this = if matches!(e, BuildError::Failed { .. }) {
                    EXIT_FAILURES
                } else {
                    EXIT_HARNESS
                };
                code = code.max(this);
                if !json {
                    eprintln!("vexctl: {k}: {e}");
                }
                out.push(serde_json::json!({ "kernel": k, "error": e.to_string(),
                    "first_errors": e.first_errors() }));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code)
}
