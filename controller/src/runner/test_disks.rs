//! Disks per test (`[[guest.disks]]`): each test gets fresh disk files, and since QEMU
//! fixes its disks at launch, a fresh guest to see them. Within the test a level-2
//! restart relaunches the same configuration, so the restarted guest finds the disks
//! as the crash left them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::guest::Guest;
use crate::plan::Plan;
use crate::supervisor::WatchOptions;
use crate::vm::VmConfig;
use crate::vm::disks::{self, Disk};

/// Where one kernel session keeps its tests' disk files (removed when it ends).
#[derive(Debug)]
pub(super) struct DiskDir {
    dir: PathBuf,
    plan_dir: PathBuf,
    /// The test whose disks the running guest has.
    pub(super) attached_for: Option<String>,
}

impl DiskDir {
    /// A folder for this session's disks, or None when the plan has no disks.
    pub(super) fn new(plan: &Plan, run_id: i64, slot: usize, plan_dir: &Path) -> Option<Self> {
        if plan.guest.disks.is_empty() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "vexfs-disks-{}-{run_id}-{slot}",
            std::process::id()
        ));
        Some(Self {
            dir,
            plan_dir: plan_dir.to_path_buf(),
            attached_for: None,
        })
    }

    /// Fresh disk files for `test`.
    pub(super) fn fresh(&mut self, plan: &Plan, test: &str) -> Result<Vec<Disk>, String> {
        let d = disks::fresh_for_test(&self.dir, test, &plan.guest.disks, &self.plan_dir)
            .map_err(|e| e.to_string())?;
        self.attached_for = Some(test.to_string());
        Ok(d)
    }

    /// Whether the running guest must be replaced before `test` runs.
    pub(super) fn needs_relaunch(&self, test: &str) -> bool {
        self.attached_for.as_deref() != Some(test)
    }
}

impl Drop for DiskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces `guest` with a fresh one whose disks are new files for `test`, and loads
/// the module in it; the boot time on success.
pub(super) async fn relaunch_for_test(
    guest: &mut Guest,
    base: &VmConfig,
    opts: &WatchOptions,
    dir: &mut DiskDir,
    plan: &Plan,
    test: &str,
) -> Result<Duration, String> {
    if let Some(vm) = guest.vm() {
        let _ = vm.qmp().quit().await;
    }
    let mut cfg = base.clone();
    cfg.disks = dir.fresh(plan, test)?;
    let started = Instant::now();
    let mut fresh = Guest::boot(cfg, guest.module.clone(), opts.clone())
        .await
        .map_err(|e| format!("guest with fresh disks did not boot: {e}"))?;
    let took = started.elapsed();
    match fresh.load_module().await {
        Ok(crate::recovery::Outcome::Succeeded) => {}
        other => return Err(format!("loading {} failed: {other:?}", fresh.module.name)),
    }
    *guest = fresh;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_follow_the_test_and_go_with_the_session() {
        let mut plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "d").unwrap();
        let d = tempfile::tempdir().unwrap();
        assert!(DiskDir::new(&plan, 1, 0, d.path()).is_none());
        plan.guest.disks.push(crate::plan::DiskSpec {
            name: "data".into(),
            size_mib: 1,
            image: None,
        });
        let mut dd = DiskDir::new(&plan, 1, 0, d.path()).unwrap();
        assert!(dd.needs_relaunch("a"));
        let disks = dd.fresh(&plan, "a").unwrap();
        assert!(!dd.needs_relaunch("a"));
        assert!(dd.needs_relaunch("b"));
        let path = disks[0].path.clone();
        assert!(path.is_file());
        drop(dd);
        assert!(!path.exists());
    }
}
