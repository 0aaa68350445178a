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
        plan_dir: std::path::PathBuf::from("."),
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
        assert!(r.stats.test_continuity >= 0.9);
        // The checkpoint: every test has its final status in the database.
        let store = Store::open(&db).unwrap();
        let rows = store.tests(r.run_id).unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|t| t.3 != "running" && t.3 != "pending"));
        assert!(r.timeline.iter().any(|e| e.action == "relaunch_vm"));
    });
}

const RESUME_PLAN: &str = r#"
name = "resume-e2e"
kernels = ["latest-6.12"]

[[test]]
name = "first"
timeout_s = 60
steps = ["load", { exec = { cmd = "true" } }]

[[test]]
name = "crash"
timeout_s = 60
expect_crash = "NULL pointer dereference in vexfs_fault_null"
steps = [{ trigger = "null" }]

[[test]]
name = "slow"
timeout_s = 60
steps = [{ exec = { cmd = "sleep 8" } }]

[[test]]
name = "last"
timeout_s = 60
steps = [{ mount = { target = "/mnt/z" } }, { unmount = "/mnt/z" }]
"#;

/// The vexctl binary next to this test's executable (built by scripts/test.sh).
pub(crate) fn vexctl() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("vexctl");
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build -p vexfs-controller --bin vexctl`",
        bin.display()
    );
    bin
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn controller_killed_mid_run_resumes_and_loses_no_crash() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crashes.db");
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, RESUME_PLAN).unwrap();
    let mut first = std::process::Command::new(vexctl())
        .args(["run", "--quiet", "--plan"])
        .arg(&plan)
        .arg("--db")
        .arg(&db)
        .spawn()
        .unwrap();
    // Wait until the crash is recorded and the slow test is running, then SIGKILL.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let crashes_before = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the slow test"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "vexctl ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(200));
        let Ok(store) = Store::open(&db) else {
            continue;
        };
        let Ok(tests) = store.tests(1) else { continue };
        if tests.iter().any(|t| t.2 == "slow" && t.3 == "running") {
            break store.crashes(Some(1), 100).unwrap();
        }
    };
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(crashes_before.len(), 1);
    let out = std::process::Command::new(vexctl())
        .args(["run", "--quiet", "--resume", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::open(&db).unwrap();
    let after = store.crashes(Some(1), 100).unwrap();
    assert!(after.iter().any(|c| c.id == crashes_before[0].id && c.crash.title == crashes_before[0].crash.title));
    let tests = store.tests(1).unwrap();
    let status: Vec<(&str, &str)> = tests.iter().map(|t| (t.2.as_str(), t.3.as_str())).collect();
    assert_eq!(
        status,
        [
            ("first", "passed"),
            ("crash", "passed"),
            ("slow", "passed"),
            ("last", "passed")
        ]
    );
    // The slow test was started twice: once before the kill, once after.
    assert_eq!(tests[2].4, 2);
}
