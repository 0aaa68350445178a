//! Bring your own module through `vexctl run` itself (runner::run): the plan's images
//! built per kernel, disks fresh per test and kept across a restart inside a test,
//! `after_restart` checks after a panic (synced data intact; a torn superblock caught
//! as the expected data loss), and a kernel whose build fails shown as "build failed"
//! while the other kernel's tests pass.

use std::path::{Path, PathBuf};

use vexfs_controller::plan;
use vexfs_controller::results::TestStatus;
use vexfs_controller::runner::{self, RunConfig};

use super::{rt, serial};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_config(plan_file: &Path, kernels: &[&str], db: &Path) -> RunConfig {
    let text = std::fs::read_to_string(plan_file).unwrap();
    let mut cfg = super::runner::config(&text, db);
    cfg.plan = plan::parse(&text, &plan_file.display().to_string()).unwrap();
    cfg.kernels = kernels.iter().map(|k| k.to_string()).collect();
    cfg.plan_dir = runner::plan_dir(Some(plan_file));
    cfg
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn minix_plan_runs_with_disks_and_crash_consistency_checks() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let plan_file = repo().join("examples/minix/minix.toml");
    let cfg = run_config(&plan_file, &["6.12"], &dir.path().join("crashes.db"));
    let r = rt().block_on(runner::run(cfg)).unwrap();
    let k = &r.kernels[0];
    assert!(k.harness_error.is_none(), "{:?}", k.harness_error);
    for t in &k.tests {
        assert_eq!(t.status, TestStatus::Passed, "{}: {}", t.name, t.message);
    }
    let synced = k
        .tests
        .iter()
        .find(|t| t.name == "synced-data-survives-a-panic")
        .unwrap();
    let c = &synced.crashes[0];
    assert!(c.expected && c.recovered && c.intact, "{c:?}");
    assert_eq!(c.recovery_level, 2);
    assert_eq!(c.data_loss, None);
    // The after_restart checks ran (in the timeline, after the restart).
    assert!(
        synced
            .steps
            .iter()
            .any(|s| s.step.starts_with("after_restart: exec: cat") && s.outcome == "passed"),
        "{:?}",
        synced.steps
    );
    let torn = k
        .tests
        .iter()
        .find(|t| t.name == "a-torn-superblock-is-caught-after-a-panic")
        .unwrap();
    let loss = torn.crashes[0].data_loss.as_ref().expect("fsck caught it");
    assert!(loss.expected, "{loss:?}");
    assert!(torn.crashes[0].intact);
    assert_eq!(r.stats.data_integrity, 1.0);
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn a_build_failing_on_one_kernel_is_a_result_and_the_other_runs() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let plan_file = repo().join("tests/fixtures/byo-new-kernels-only/plan.toml");
    let cfg = run_config(&plan_file, &["6.1", "6.12"], &dir.path().join("crashes.db"));
    let r = rt().block_on(runner::run(cfg)).unwrap();
    assert_eq!(r.kernels.len(), 2);
    let (k61, k612) = (&r.kernels[0], &r.kernels[1]);
    assert!(k61.kernel.starts_with("6.1."), "{}", k61.kernel);
    assert_eq!(k61.tests[0].status, TestStatus::BuildFailed);
    assert!(
        k61.tests[0]
            .message
            .contains("newonly needs Linux 6.12 or newer"),
        "{}",
        k61.tests[0].message
    );
    assert!(k61.harness_error.is_none());
    assert_eq!(
        k612.tests[0].status,
        TestStatus::Passed,
        "{}",
        k612.tests[0].message
    );
    assert!(!r.all_ok());
    let summary = vexfs_controller::report::summary(&r, false);
    assert!(summary.contains("BUILD FAILED"), "{summary}");
}
