//! The guest image a plan needs on one kernel: its module built from source (or the
//! default test module), its tools, its kernel modules and, with disks, virtio_blk.
//! Built with guest-image/build-image.sh into `<cache>/plan-images/<plan>/<release>`;
//! the script's stamp makes an up-to-date image cost only hashing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::module::{BuiltModule, ModuleBuild};
use super::tools::{self, GuestTool};
use super::{BuildError, guest_image_dir};
use crate::plan::Plan;
use crate::vm::image::{Manifest, read_manifest};

/// What [`ensure_plan_image`] needs besides the plan.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The plan's folder (relative paths in it are resolved from here).
    pub plan_dir: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
    /// The vexfs cache root.
    pub cache: PathBuf,
    /// Output folder (default `<cache>/plan-images/<plan name>/<release>`).
    pub out: Option<PathBuf>,
    /// Static agent for /init (default: the script's choice).
    pub agent: Option<PathBuf>,
    /// Rebuild even when up to date.
    pub force: bool,
}

/// A plan's image on one kernel.
#[derive(Debug, Clone)]
pub struct PlanImage {
    /// Its manifest (use with `VmConfig::from_manifest`).
    pub manifest: Manifest,
    /// The module built from `[module] source`, when the plan has one.
    pub module: Option<BuiltModule>,
    /// Time spent in the image script (hashing only when up to date).
    pub image_took: Duration,
}

impl PlanImage {
    /// The module name and in-guest path the runner loads (`[module] name`/`path`
    /// unless the module was built from source: then the .ko's modinfo name, unless
    /// `name` is set to something other than the default).
    pub fn module_name_and_path(&self, plan: &Plan) -> (String, String) {
        match &self.module {
            Some(b) => {
                let name = if plan.module.name != crate::plan::ModuleConfig::default().name {
                    plan.module.name.clone()
                } else {
                    b.name.clone()
                };
                (name, super::module::guest_path(&b.name))
            }
            None => (plan.module.name.clone(), plan.module.path.clone()),
        }
    }
}

/// Whether the plan needs its own image (else the default images serve it).
pub fn needs_plan_image(plan: &Plan) -> bool {
    plan.module.source.is_some()
        || !plan.guest.tools.is_empty()
        || !plan.guest.kernel_modules.is_empty()
        || !plan.guest.disks.is_empty()
}

/// Kernel modules the image must carry: the plan's, plus virtio_blk for disks.
pub fn kernel_modules(plan: &Plan) -> Vec<String> {
    let mut mods = plan.guest.kernel_modules.clone();
    if !plan.guest.disks.is_empty() && !mods.iter().any(|m| m == "virtio_blk") {
        mods.push("virtio_blk".into());
    }
    mods
}

/// The script arguments for the extra contents (pure, for tests).
pub fn script_args(
    module: Option<&Path>,
    kernel_modules: &[String],
    tools: &[GuestTool],
) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(ko) = module {
        a.push("--module".into());
        a.push(ko.display().to_string());
    }
    for m in kernel_modules {
        a.push("--kernel-module".into());
        a.push(m.clone());
    }
    for t in tools {
        a.push("--tool".into());
        a.push(format!("{}:{}", t.host.display(), t.guest));
    }
    a
}

/// The kernel series of a release: "6.12.117+deb12-amd64" -> "6.12".
pub fn series(release: &str) -> String {
    release
        .split(['.', '-', '+'])
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// `[module] source` for one kernel: `{series}` becomes the kernel series (`6.1`, for
/// trees kept per kernel, like a kernel's own fs/minix) and `{cache}` the vexfs cache;
/// then relative to the plan's folder.
pub fn source_for(src: &str, release: &str, plan_dir: &Path, cache: &Path) -> PathBuf {
    let s = src
        .replace("{series}", &series(release))
        .replace("{cache}", &cache.display().to_string());
    tools::resolve(plan_dir, &s)
}

/// Builds the module for `release` when the plan has a source tree.
pub fn build_module(plan: &Plan, req: &ImageRequest) -> Result<Option<BuiltModule>, BuildError> {
    let Some(src) = &plan.module.source else {
        return Ok(None);
    };
    let default_name = crate::plan::ModuleConfig::default().name;
    ModuleBuild {
        source: source_for(src, &req.release, &req.plan_dir, &req.cache),
        release: req.release.clone(),
        make_args: plan.module.make_args.clone(),
        name: (plan.module.name != default_name).then(|| plan.module.name.clone()),
        cache: req.cache.clone(),
    }
    .build()
    .map(Some)
}

/// Builds (when missing or stale) the plan's image for one kernel.
pub fn ensure_plan_image(plan: &Plan, req: &ImageRequest) -> Result<PlanImage, BuildError> {
    let module = build_module(plan, req)?;
    let tools = tools::prepare(&plan.guest.tools, &req.plan_dir, &req.cache)?;
    let out = req.out.clone().unwrap_or_else(|| {
        let safe: String = plan
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        req.cache.join("plan-images").join(safe).join(&req.release)
    });
    let started = Instant::now();
    let mut cmd = Command::new(guest_image_dir().join("build-image.sh"));
    cmd.arg("-q").arg("--out").arg(&out);
    if let Some(agent) = &req.agent {
        cmd.arg("--agent").arg(agent);
    }
    if req.force {
        cmd.arg("--force");
    }
    cmd.args(script_args(
        module.as_ref().map(|m| m.ko.as_path()),
        &kernel_modules(plan),
        &tools,
    ));
    cmd.arg(&req.release).env("VEXFS_CACHE", &req.cache);
    let done = cmd.output().map_err(|source| BuildError::Tool {
        tool: "guest-image/build-image.sh".into(),
        source,
    })?;
    if !done.status.success() {
        return Err(BuildError::Image {
            release: req.release.clone(),
            message: super::stderr_tail(&done.stderr),
        });
    }
    let manifest = read_manifest(&out.join("manifest.json")).map_err(|e| BuildError::Image {
        release: req.release.clone(),
        message: e.to_string(),
    })?;
    Ok(PlanImage {
        manifest,
        module,
        image_took: started.elapsed(),
    })
}

/// The release for a kernel selector: `latest-6.12` asks apt (fetch-kernel.sh), a
/// prefix that matches a cached image is that image's release, anything else is
/// taken as a release.
pub fn resolve_release(selector: &str, images_dir: &Path) -> Result<String, BuildError> {
    if let Some(series) = selector.strip_prefix("latest-") {
        let out = Command::new(guest_image_dir().join("fetch-kernel.sh"))
            .args(["latest", series])
            .output()
            .map_err(|source| BuildError::Tool {
                tool: "guest-image/fetch-kernel.sh".into(),
                source,
            })?;
        let rel = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || rel.is_empty() {
            return Err(BuildError::Headers {
                release: selector.into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        return Ok(rel);
    }
    if let Ok(m) = crate::vm::image::select_image(images_dir, Some(selector)) {
        return Ok(m.kernel_release);
    }
    Ok(selector.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_placeholders() {
        assert_eq!(series("6.12.117+deb12-amd64"), "6.12");
        assert_eq!(series("6.1.0-57-amd64"), "6.1");
        assert_eq!(
            source_for(
                "{cache}/sources/linux-source-{series}/fs/minix",
                "6.1.0-57-amd64",
                Path::new("/p"),
                Path::new("/c")
            ),
            Path::new("/c/sources/linux-source-6.1/fs/minix")
        );
        assert_eq!(
            source_for("src", "6.1.0-57-amd64", Path::new("/p"), Path::new("/c")),
            Path::new("/p/src")
        );
    }

    #[test]
    fn disks_bring_virtio_blk_and_args_are_in_order() {
        let mut p = crate::plan::parse(crate::plan::DEFAULT_PLAN, "d").unwrap();
        assert!(kernel_modules(&p).is_empty());
        assert!(!needs_plan_image(&p));
        p.guest.kernel_modules = vec!["loop".into()];
        p.guest.disks.push(crate::plan::DiskSpec {
            name: "d".into(),
            size_mib: 1,
            image: None,
        });
        assert_eq!(kernel_modules(&p), ["loop", "virtio_blk"]);
        assert!(needs_plan_image(&p));
        let t = GuestTool {
            host: "/sbin/mkfs.minix".into(),
            guest: "/sbin/mkfs.minix".into(),
            needs_libs: true,
        };
        assert_eq!(
            script_args(Some(Path::new("/c/m.ko")), &kernel_modules(&p), &[t]),
            [
                "--module",
                "/c/m.ko",
                "--kernel-module",
                "loop",
                "--kernel-module",
                "virtio_blk",
                "--tool",
                "/sbin/mkfs.minix:/sbin/mkfs.minix"
            ]
        );
    }
}
