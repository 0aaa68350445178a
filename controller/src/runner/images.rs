//! The guest image of each kernel of a run: the default image, or the plan's own
//! (module built from source, tools, kernel modules, disks) built when missing or
//! stale. A kernel whose build fails is not a reason to stop the run: its tests become
//! "build failed" results carrying the compiler's first errors.

use std::path::{Path, PathBuf};

use crate::build::BuildError;
use crate::build::image::{ImageRequest, ensure_plan_image, needs_plan_image, resolve_release};
use crate::plan::{Plan, Test};
use crate::results::{TestResult, TestStatus};
use crate::vm::image::{self, Manifest};

/// One kernel of the run, ready or not.
#[derive(Debug, Clone)]
pub(super) enum KernelImage {
    /// The image to boot and the module to load from it.
    Ready {
        /// The image.
        manifest: Manifest,
        /// Module name (as in /proc/modules) and in-guest path.
        module: (String, String),
    },
    /// The plan's image could not be built for this kernel.
    BuildFailed {
        /// The release (or the selector when it did not resolve).
        kernel: String,
        /// What failed, with the compiler's first errors.
        message: String,
    },
}

impl KernelImage {
    /// The kernel release this column shows.
    pub(super) fn kernel(&self) -> &str {
        match self {
            KernelImage::Ready { manifest, .. } => &manifest.kernel_release,
            KernelImage::BuildFailed { kernel, .. } => kernel,
        }
    }
}

/// The message a build failure gives its tests: the error (which names what failed)
/// with the compiler's first error lines when there are any (pure, for tests).
pub(super) fn failure_message(e: &BuildError) -> String {
    match e.first_errors() {
        Some(errs) if !errs.is_empty() => format!("build failed: {e}"),
        _ => format!("build failed: {e} (no compiler output)"),
    }
}

/// The image of one kernel selector: a plan that needs its own image gets it built
/// (blocking: make, gcc, the image script); others use the cached default image.
pub(super) fn kernel_image(
    plan: &Plan,
    selector: &str,
    images_dir: &Path,
    plan_dir: &Path,
    cache: &Path,
) -> Result<KernelImage, image::ImageError> {
    if !needs_plan_image(plan) {
        let manifest = image::select_image(images_dir, Some(super::selector(selector)))?;
        let module = (plan.module.name.clone(), plan.module.path.clone());
        return Ok(KernelImage::Ready { manifest, module });
    }
    let release = match resolve_release(selector, images_dir) {
        Ok(r) => r,
        Err(e) => {
            return Ok(KernelImage::BuildFailed {
                kernel: selector.to_string(),
                message: failure_message(&e),
            });
        }
    };
    let req = ImageRequest {
        plan_dir: plan_dir.to_path_buf(),
        release: release.clone(),
        cache: cache.to_path_buf(),
        out: None,
        agent: None,
        force: false,
    };
    Ok(match ensure_plan_image(plan, &req) {
        Ok(img) => KernelImage::Ready {
            module: img.module_name_and_path(plan),
            manifest: img.manifest,
        },
        Err(e) => {
            tracing::warn!("{release}: {e}");
            KernelImage::BuildFailed {
                kernel: release,
                message: failure_message(&e),
            }
        }
    })
}

/// The plan file's folder (relative paths of the plan are resolved from it); the
/// current folder for the built-in plan.
pub fn plan_dir(plan_file: Option<&Path>) -> PathBuf {
    plan_file
        .and_then(|f| f.canonicalize().ok())
        .and_then(|f| f.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A test that did not run because its kernel's build failed.
pub(super) fn build_failed_result(test: &Test, message: &str) -> TestResult {
    TestResult {
        status: TestStatus::BuildFailed,
        ..super::session::error_result(test, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_build_is_a_result_with_the_first_errors() {
        let e = BuildError::Failed {
            what: "module vexfs".into(),
            release: "6.1.0-1-amd64".into(),
            errors: vec!["/t/a.c:3:1: error: unknown type name 'foo'".into()],
            log: "/c/build.log".into(),
        };
        let m = failure_message(&e);
        assert!(m.starts_with("build failed: module vexfs failed to build for 6.1.0-1-amd64"));
        assert!(m.contains("error: unknown type name 'foo'"), "{m}");
        let plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "d").unwrap();
        let r = build_failed_result(&plan.tests[0], &m);
        assert_eq!(r.status, TestStatus::BuildFailed);
        assert!(!r.status.ok() && !r.status.reached_verdict());
        assert_eq!(r.message, m);
        let missing = BuildError::SourceMissing {
            path: "/p/none".into(),
        };
        assert!(failure_message(&missing).contains("/p/none does not exist"));
    }

    #[test]
    fn a_missing_source_tree_fails_the_kernel_not_the_run() {
        let d = tempfile::tempdir().unwrap();
        let mut plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "d").unwrap();
        plan.module.source = Some("no-such-tree".into());
        let k = kernel_image(&plan, "6.1.0-99-amd64", d.path(), d.path(), d.path()).unwrap();
        match k {
            KernelImage::BuildFailed { kernel, message } => {
                assert_eq!(kernel, "6.1.0-99-amd64");
                assert!(message.contains("no-such-tree does not exist"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn build_failed_shows_in_every_report() {
        let plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "d").unwrap();
        let msg = "build failed: module vexfs failed to build for 6.1.0-1-amd64:\n/t/a.c:3:1: error: unknown type name 'foo'";
        let k = crate::results::KernelResults {
            tests: vec![build_failed_result(&plan.tests[0], msg)],
            ..super::super::session::no_results("6.1.0-1-amd64")
        };
        let r = crate::results::RunResults {
            run_id: 1,
            plan: "p".into(),
            shard: None,
            started_at_ms: 0,
            finished_at_ms: 0,
            kernels: vec![k],
            stats: Default::default(),
            buckets: Vec::new(),
            timeline: Vec::new(),
        };
        assert!(!r.all_ok());
        let summary = crate::report::summary(&r, false);
        assert!(summary.contains("BUILD FAILED"), "{summary}");
        assert!(summary.contains("unknown type name 'foo'"), "{summary}");
        let junit = crate::report::junit(&r);
        assert!(junit.contains("type=\"build\""), "{junit}");
        assert!(junit.contains("errors=\"1\""), "{junit}");
        let html = crate::report::html(&r);
        assert!(html.contains("BUILD FAILED"));
        let json = crate::report::json(&r);
        assert!(json.contains("\"build_failed\""), "{json}");
    }
}
