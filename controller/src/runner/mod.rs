//! Runs a plan across a matrix of kernels: one guest per kernel (up to `jobs` at a
//! time), each test's steps through the agent while the supervisor watches, every
//! crash recorded and recovered from, the run checkpointed in the database (test
//! statuses) so `--resume` picks up where a killed controller stopped.
//!
//! One job per file: [`progress`] (status output), [`shard`] (the matrix slice),
//! [`session`] (one kernel), [`test_run`] (one test), [`incident`] (a test's course
//! after a crash), [`steps`] (the step interpreter), [`exec`] (running things in the
//! guest), [`cycles`] (the load generator).

mod after_restart;
mod cycles;
mod exec;
mod images;
pub mod incident;
mod notes;
mod progress;
mod session;
mod shard;
mod steps;
mod test_disks;
mod test_run;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::results::{KernelResults, RecoveryEvent, RunResults, TestStatus};
use crate::store::{self, Store};
use crate::vm::image;

pub use images::plan_dir;
pub use incident::crash_matches;

/// A duration in whole milliseconds (saturating), as results and requests carry it.
fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
pub use progress::Progress;
use progress::{KernelStatus, Reporter};
use shard::selector;
pub use shard::{parse_shard, slice};

/// Errors that stop a run as a whole (per-kernel trouble is recorded in the results).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crash database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No image for a kernel of the plan.
    #[error("kernel {kernel}: {source}")]
    Image {
        /// The selector.
        kernel: String,
        /// The cause.
        source: image::ImageError,
    },
    /// A built kernel or kernel tree could not be made ready (the cause follows in
    /// the error chain).
    #[error("kernel {kernel}")]
    Kernel {
        /// The selector.
        kernel: String,
        /// The cause.
        source: crate::build::kernel::KernelError,
    },
    /// The resumed run's saved plan is unusable.
    #[error("cannot resume run {run}: {why}")]
    Resume {
        /// The run id.
        run: i64,
        /// What is wrong.
        why: String,
    },
    /// Bad shard or option.
    #[error("{0}")]
    Invalid(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The plan.
    pub plan: Plan,
    /// Its text, saved in the database for `--resume`.
    pub plan_text: String,
    /// Kernel selectors (override the plan's when not empty).
    pub kernels: Vec<String>,
    /// Guests at a time.
    pub jobs: usize,
    /// The crash database.
    pub db: PathBuf,
    /// Run only slice I of N (1-based).
    pub shard: Option<(u32, u32)>,
    /// Resume this run id.
    pub resume: Option<i64>,
    /// Where the guest images are.
    pub images_dir: PathBuf,
    /// Progress output.
    pub progress: Progress,
    /// The plan file's folder: a plan's `[module] source`, tools and disk images are
    /// relative to it (see [`plan_dir`]).
    pub plan_dir: PathBuf,
}

/// What the database keeps to resume a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    plan_text: String,
    kernels: Vec<String>,
    shard: Option<(u32, u32)>,
}

/// Runs the plan (or resumes a run) and returns the results.
pub async fn run(mut cfg: RunConfig) -> Result<RunResults, Error> {
    let store = Store::open(&cfg.db)?;
    let run_id = match cfg.resume {
        Some(run) => {
            let (_, saved) = store.run_checkpoint(run)?;
            let saved: Saved = serde_json::from_str(&saved).map_err(|e| Error::Resume {
                run,
                why: e.to_string(),
            })?;
            cfg.plan =
                crate::plan::parse(&saved.plan_text, "saved plan").map_err(|e| Error::Resume {
                    run,
                    why: e.to_string(),
                })?;
            cfg.plan_text = saved.plan_text;
            cfg.kernels = saved.kernels;
            cfg.shard = saved.shard;
            run
        }
        None => {
            if cfg.kernels.is_empty() {
                cfg.kernels = cfg.plan.kernels.clone();
            }
            let saved = Saved {
                plan_text: cfg.plan_text.clone(),
                kernels: cfg.kernels.clone(),
                shard: cfg.shard,
            };
            let config = serde_json::json!({
                "kernels": cfg.kernels,
                "jobs": cfg.jobs,
                "shard": cfg.shard,
                "images_dir": cfg.images_dir,
                "vexctl": env!("CARGO_PKG_VERSION"),
            });
            store.begin_resumable_run(
                &cfg.plan.name,
                &config.to_string(),
                &serde_json::to_string(&saved).unwrap_or_default(),
            )?
        }
    };
    let started_at_ms = store::now_ms();
    let mut manifests = Vec::new();
    for k in &cfg.kernels {
        let (plan, k2) = (cfg.plan.clone(), k.clone());
        let (images_dir, plan_dir) = (cfg.images_dir.clone(), cfg.plan_dir.clone());
        // Builds run make, gcc and the image script (a debug kernel takes minutes):
        // off the async threads.
        let m = tokio::task::spawn_blocking(move || {
            let cache = image::cache_dir();
            // debug-6.12 or a tree: built (when missing) into an image named by its
            // release.
            let wanted =
                crate::build::kernel::prepare(&k2, &cache, &images_dir).map_err(|source| {
                    Error::Kernel {
                        kernel: k2.clone(),
                        source,
                    }
                })?;
            images::kernel_image(&plan, &wanted, &images_dir, &plan_dir, &cache).map_err(|source| {
                Error::Image {
                    kernel: k2.clone(),
                    source,
                }
            })
        })
        .await
        .map_err(|e| Error::Invalid(format!("image task: {e}")))??;
        manifests.push(m);
    }
    let releases: Vec<&str> = manifests.iter().map(|m| m.kernel()).collect();
    let owned = slice(&releases, &cfg.plan.tests, cfg.shard);
    let reporter = Reporter {
        mode: cfg.progress,
        board: Arc::new(std::sync::Mutex::new(
            manifests
                .iter()
                .zip(&owned)
                .map(|(m, t)| KernelStatus {
                    kernel: m.kernel().to_string(),
                    total: t.len(),
                    ..Default::default()
                })
                .collect(),
        )),
    };
    let jobs = Arc::new(tokio::sync::Semaphore::new(cfg.jobs.max(1)));
    let plan = Arc::new(cfg.plan.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let mut kernels: Vec<(usize, KernelResults)> = Vec::new();
    for (ki, m) in manifests.iter().enumerate() {
        if owned[ki].is_empty() {
            continue;
        }
        let (manifest, module) = match m {
            images::KernelImage::Ready { manifest, module } => (manifest.clone(), module.clone()),
            images::KernelImage::BuildFailed { kernel, message } => {
                reporter.line(&format!("[{kernel}] {message}"));
                let r = build_failed(&store, run_id, &cfg.plan, kernel, &owned[ki], message);
                reporter.update(ki, |k| k.done = owned[ki].len());
                kernels.push((ki, r));
                continue;
            }
        };
        let (jobs, plan, tests) = (jobs.clone(), plan.clone(), owned[ki].clone());
        let (db, reporter, plan_dir) = (cfg.db.clone(), reporter.clone(), cfg.plan_dir.clone());
        tasks.spawn(async move {
            let _permit = jobs.acquire_owned().await;
            let k = session::Kernel {
                manifest: &manifest,
                module,
                plan_dir: &plan_dir,
            };
            let r = session::run_kernel(&plan, &k, &tests, run_id, &db, &reporter, ki).await;
            (ki, r)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((ki, r)) => kernels.push((ki, r)),
            Err(e) => tracing::error!("kernel task: {e}"),
        }
    }
    reporter.finish();
    kernels.sort_by_key(|(ki, _)| *ki);
    let kernels: Vec<KernelResults> = kernels.into_iter().map(|(_, k)| k).collect();
    let results = collect(&store, run_id, &cfg, kernels, started_at_ms)?;
    let status = if results.all_ok() { "passed" } else { "failed" };
    store.finish_run(run_id, status)?;
    Ok(results)
}

/// A kernel whose build failed: each of its tests is a "build failed" result (in the
/// database too, so a resumed run builds and runs them again).
fn build_failed(
    store: &Store,
    run_id: i64,
    plan: &Plan,
    kernel: &str,
    tests: &[usize],
    message: &str,
) -> KernelResults {
    let mut tests_out = Vec::new();
    for &ti in tests {
        let test = &plan.tests[ti];
        if let Ok(id) = store.test_id(run_id, kernel, &test.name) {
            let _ = store.set_test_status(id, TestStatus::BuildFailed.as_str(), message);
        }
        tests_out.push(images::build_failed_result(test, message));
    }
    KernelResults {
        tests: tests_out,
        ..session::no_results(kernel)
    }
}

fn collect(
    store: &Store,
    run_id: i64,
    cfg: &RunConfig,
    kernels: Vec<KernelResults>,
    started_at_ms: i64,
) -> Result<RunResults, Error> {
    let mut timeline = Vec::new();
    for c in store.crashes(Some(run_id), i64::MAX)? {
        for a in store.attempts(c.id)? {
            if a.action == store::RECOVERY_SUMMARY {
                continue;
            }
            timeline.push(RecoveryEvent {
                kernel: c.crash.kernel.clone(),
                test: c.crash.test_name.clone(),
                crash_id: c.id,
                level: u8::try_from(a.level).unwrap_or(0),
                action: a.action,
                started_at_ms: a.started_at_ms,
                duration_ms: u64::try_from(a.duration_ms).unwrap_or(0),
                outcome: a.outcome,
            });
        }
    }
    // The steps of every test that crashed, around its recoveries: what ran before the
    // crash, and that the steps after it ran too.
    for k in &kernels {
        for t in k.tests.iter().filter(|t| !t.crashes.is_empty()) {
            for s in &t.steps {
                timeline.push(RecoveryEvent {
                    kernel: k.kernel.clone(),
                    test: t.name.clone(),
                    crash_id: t.crashes[0].id,
                    level: 0,
                    action: format!("step {}: {}", s.index + 1, s.step),
                    started_at_ms: s.started_at_ms,
                    duration_ms: s.duration_ms,
                    outcome: s.outcome.clone(),
                });
            }
        }
    }
    timeline.sort_by_key(|e| e.started_at_ms);
    let (crashes, buckets) = store.crash_counts(Some(run_id))?;
    let stats = crate::scorecard::of_results(&kernels, crashes, buckets);
    Ok(RunResults {
        run_id,
        plan: cfg.plan.name.clone(),
        shard: cfg.shard.map(|(i, n)| format!("{i}/{n}")),
        started_at_ms,
        finished_at_ms: store::now_ms(),
        kernels,
        stats,
        buckets: store.buckets()?,
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_crash_matching() {
        assert!(crash_matches("module_crash", "module_crash", "BUG: x"));
        assert!(crash_matches(
            "in vexfs_fault_null",
            "module_crash",
            "BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null"
        ));
        assert!(!crash_matches(
            "deadlock",
            "module_crash",
            "kernel BUG in vexfs_fault_bug"
        ));
    }
}
