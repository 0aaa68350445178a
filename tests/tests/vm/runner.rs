//! The runner end to end on a real guest: passing, failing, hanging and crashing tests
//! in one plan, recovery in between, statuses checkpointed in the database.

use std::time::Duration;

use vexfs_controller::plan;
use vexfs_controller::results::TestStatus;
use vexfs_controller::runner::{self, Progress, RunConfig};
use vexfs_controller::store::Store;
use vexfs_controller::vm::image;

use super::{rt, serial};

const PLAN: &str = r#"
name = "runner-e2e"
kernels = ["latest-6.12"]

[[test]]
name = "passes"
timeout_s = 60
steps = ["load", { mount = { target = "/mnt/a" } }, { exec = { cmd = "echo hi > /mnt/a/f; cat /mnt/a/f", stdout = "hi" } }, { unmount = "/mnt/a" }]

[[test]]
name = "fails-assertion"
timeout_s = 60
steps = [{ exec = { cmd = "echo nope", stdout = "yes" } }]

[[test]]
name = "hangs-past-timeout"
timeout_s = 4
steps = [{ exec = { cmd = "sleep 100" } }]

[[test]]
name = "expected-null"
timeout_s = 60
expect_crash = "NULL pointer dereference in vexfs_fault_null"
steps = [{ trigger = "null" }]

[[test]]
name = "unexpected-bug"
timeout_s = 60
steps = [{ exec = { cmd = "echo bug > /sys/kernel/debug/vexfs/trigger", exit = "any" } }]

[[test]]
name = "after-recovery"
timeout_s = 60
steps = [{ mount = { target = "/mnt/b" } }, { exec = { cmd = "echo ok > /mnt/b/f && cat /mnt/b/f", stdout = "ok" } }, { unmount = "/mnt/b" }]
"#;

pub(crate) fn config(plan_text: &str, db: &std::path::Path) -> RunConfig {
    RunConfig {
        plan: plan::parse(plan_text, "e2e.toml").unwrap(),
        plan_text: plan_text.into(),
        kernels: Vec::new(),
        jobs: 1,
        db: db.to_path_buf(),
        shard: None,
        resume: None,
        images_dir: image::default_images_dir(),
        progress: Progress::Lines,
    }
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn plan_with_failures_hangs_and_crashes_runs_to_the_end() {
    let _one = serial();
    rt().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crashes.db");
        let r = runner::run(config(PLAN, &db)).await.unwrap();
        assert_eq!(r.kernels.len(), 1);
        let k = &r.kernels[0];
        assert!(k.harness_error.is_none(), "{:?}", k.harness_error);
        let status: Vec<(&str, TestStatus)> = k
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.status))
            .collect();
        assert_eq!(
            status,
            [
                ("passes", TestStatus::Passed),
                ("fails-assertion", TestStatus::Failed),
                ("hangs-past-timeout", TestStatus::Failed),
                ("expected-null", TestStatus::Passed),
                ("unexpected-bug", TestStatus::Crashed),
                ("after-recovery", TestStatus::Passed),
            ]
        );
        assert!(
            k.tests[2].message.contains("timed out after 4 s"),
            "{}",
            k.tests[2].message
        );
        assert!(k.tests[2].duration_ms < 15_000);
        assert!(k.tests[3].crashes[0].expected);
        assert_eq!(k.tests[4].crashes[0].title, "kernel BUG in vexfs_fault_bug");
        assert!(!r.all_ok());
        assert_eq!(r.stats.crashes, 2);
        assert_eq!(r.stats.recovery_success_rate, 1.0);
        assert!(r.continuity() >= 0.9);
        // The checkpoint: every test has its final status in the database.
        let store = Store::open(&db).unwrap();
        let rows = store.tests(r.run_id).unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|t| t.3 != "running" && t.3 != "pending"));
        assert!(r.timeline.iter().any(|e| e.action == "relaunch_vm"));
        let _ = Duration::ZERO;
    });
}
