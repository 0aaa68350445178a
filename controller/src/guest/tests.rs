//! `handle_crash` against a scripted guest and an in-memory database: one case per
//! crash type, the warning, and each harness verdict, with the actions taken, the
//! test's fate and the rows left behind.

use std::time::Instant;

use super::fake::FakeGuest;
use super::*;
use crate::classify::{self, Category};
use crate::incident::Incident;
use crate::recovery::{Fate, Level, Policy};
use crate::store::Store;
use crate::supervisor::CrashSource;
use crate::trend::Trend;
use crate::verdict::Verdict;

/// Taint bit 7: the kernel oopsed.
const DIED: u64 = 1 << 7;
/// Out-of-tree and unsigned module taints only.
const CLEAN: u64 = (1 << 12) | (1 << 13);

/// The first crash the classifier finds in a real guest log of ours.
pub(crate) fn from_log(name: &str) -> Incident {
    let path = format!(
        "{}/tests/fixtures/guest-logs/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let log = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let r = classify::classify(&log)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{name}: no crash"));
    Incident::from_report(&r, CrashSource::Console, Verdict::Healthy, Instant::now())
}

fn run(guest: &mut FakeGuest, incident: &Incident, crashes: u32) -> (Handled, Store) {
    let mut store = Store::open_in_memory().unwrap();
    let ctx = CrashContext {
        test_name: "t".into(),
        test_crashes: crashes,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let h = rt
        .block_on(handle_crash(
            guest,
            &mut store,
            incident,
            &ctx,
            Policy::default(),
        ))
        .unwrap();
    (h, store)
}

/// The rows every handled crash leaves: the crash, checked intact, one attempt per
/// step plus the summary, all of it after the detection.
fn check_rows(h: &Handled, store: &Store, incident: &Incident) {
    let row = store.crash(h.crash_id).unwrap();
    assert_eq!(row.crash.category, incident.category);
    assert_eq!(row.crash.title, incident.title);
    assert_eq!(row.intact, Some(true));
    assert!(h.intact);
    let attempts = store.attempts(h.crash_id).unwrap();
    assert_eq!(attempts.len(), h.steps.len() + 1);
    assert!(
        attempts
            .iter()
            .all(|a| a.started_at_ms >= row.crash.detected_at_ms)
    );
    let summary = attempts.last().unwrap();
    assert_eq!(summary.fate, h.fate.as_str());
    assert_eq!(store.stats(None).unwrap().recoveries, 1);
}

const RESTART: [&str; 5] = [
    "collect_forensics",
    "relaunch_vm",
    "verify_clean_boot",
    "load_module",
    "smoke_test",
];

#[test]
fn module_crash_after_an_oops_restarts_without_unloading() {
    let i = from_log("crash-612-null.log");
    assert_eq!(i.category, Category::ModuleCrash);
    let mut g = FakeGuest::live(DIED | CLEAN);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART);
    assert_eq!(
        (h.level, h.fate),
        (Level::SystemReset, Fate::RestartRequired)
    );
    check_rows(&h, &store, &i);
    // Forensics went into the crash row, and it still reads back whole.
    assert!(
        store
            .crash(h.crash_id)
            .unwrap()
            .crash
            .forensics
            .contains("sysrq w")
    );
}

#[test]
fn module_crash_without_an_oops_is_reloaded_gracefully() {
    // The taint says the kernel did not die: level 1 may unload.
    let i = from_log("crash-612-null.log");
    let mut g = FakeGuest::live(CLEAN);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(
        g.performed,
        ["unload_module", "check_leaks", "load_module", "smoke_test"]
    );
    assert_eq!((h.level, h.fate), (Level::Graceful, Fate::Continue));
    assert!(g.acknowledged);
    check_rows(&h, &store, &i);
}

#[test]
fn kernel_panic_restarts() {
    let i = from_log("crash-612-panic.log");
    assert_eq!(i.category, Category::KernelPanic);
    let mut g = FakeGuest::live(CLEAN);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
    check_rows(&h, &store, &i);
}

#[test]
fn deadlock_kills_the_stuck_task_and_checks_the_module() {
    let i = from_log("crash-612-deadlock.log");
    assert_eq!(i.category, Category::Deadlock);
    let mut g = FakeGuest::live(CLEAN);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, ["kill_workload", "smoke_test"]);
    assert_eq!(h.fate, Fate::Continue);
    check_rows(&h, &store, &i);
}

#[test]
fn unkillable_deadlock_resets() {
    let i = from_log("crash-612-deadlock.log");
    let mut g = FakeGuest::live(CLEAN).on("kill_workload", &[Outcome::Hung]);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed[0], "kill_workload");
    assert_eq!(g.performed[1..], RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
    check_rows(&h, &store, &i);
}

#[test]
fn memory_corruption_restarts() {
    let i = from_log("crash-612-kfence_uaf.log");
    assert_eq!(i.category, Category::MemoryCorruption);
    let mut g = FakeGuest::live(CLEAN);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
    check_rows(&h, &store, &i);
}

fn leak() -> Incident {
    let t = Trend {
        name: "SUnreclaim".into(),
        unit: "kB".into(),
        slope: 40.0,
        lower: 38.0,
        upper: 42.0,
        n: 12,
        growth_lower: 418.0,
        leaking: true,
    };
    Incident::leak(&[t], "vexfs", "mount", Instant::now())
}

#[test]
fn resource_leak_that_the_unload_gives_back_continues() {
    let i = leak();
    let mut g = FakeGuest::live(CLEAN);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(
        g.performed,
        ["unload_module", "check_leaks", "load_module", "smoke_test"]
    );
    assert_eq!(h.fate, Fate::Continue);
    check_rows(&h, &store, &i);
}

#[test]
fn resource_leak_that_outlives_the_unload_restarts() {
    let i = leak();
    let mut g = FakeGuest::live(CLEAN).on("check_leaks", &[Outcome::Failed]);
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed[..2], ["unload_module", "check_leaks"]);
    assert_eq!(g.performed[2..], RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
    let attempts = store.attempts(h.crash_id).unwrap();
    assert_eq!(
        (attempts[1].action.as_str(), attempts[1].outcome.as_str()),
        ("check_leaks", "failed")
    );
    check_rows(&h, &store, &i);
}

#[test]
fn warning_only_checks_the_module() {
    let i = from_log("crash-612-warn.log");
    assert_eq!(i.category, Category::Warning);
    let mut g = FakeGuest::live(CLEAN | (1 << 9));
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, ["smoke_test"]);
    assert_eq!(h.fate, Fate::Continue);
    check_rows(&h, &store, &i);
}

#[test]
fn system_hang_with_qmp_frozen_relaunches_without_forensics() {
    let i = Incident::from_verdict(Verdict::VmmHung, Instant::now());
    let mut g = FakeGuest::live(CLEAN);
    g.assessment.qmp_responsive = false;
    g.assessment.taint_mask = None;
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART[1..]);
    assert_eq!(h.fate, Fate::RestartRequired);
    check_rows(&h, &store, &i);
}

#[test]
fn silent_guest_is_a_system_hang_and_restarts() {
    let i = Incident::from_verdict(Verdict::GuestHung, Instant::now());
    assert_eq!(i.category, Category::SystemHang);
    let mut g = FakeGuest::live(CLEAN);
    g.assessment.taint_mask = None;
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
    check_rows(&h, &store, &i);
}

#[test]
fn dead_vmm_is_relaunched_and_a_failing_relaunch_aborts() {
    let i = Incident::from_verdict(Verdict::VmmDead { code: None }, Instant::now());
    let mut g = FakeGuest::live(CLEAN);
    g.assessment = Assessment {
        vm_alive: false,
        qmp_responsive: false,
        reset_keeps_transport: false,
        taint_mask: None,
    };
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART[1..]);
    assert_eq!(h.fate, Fate::RestartRequired);
    check_rows(&h, &store, &i);

    let mut g = FakeGuest::live(CLEAN).on("relaunch_vm", &[Outcome::Failed; 3]);
    g.assessment.vm_alive = false;
    let (h, store) = run(&mut g, &i, 1);
    assert_eq!(g.performed, ["relaunch_vm", "relaunch_vm", "relaunch_vm"]);
    assert_eq!(h.fate, Fate::Abort);
    assert!(!h.succeeded());
    assert_eq!(store.stats(None).unwrap().recovered, 0);
}

#[test]
fn dead_vsock_backend_restarts() {
    let i = Incident::from_verdict(Verdict::BackendDead, Instant::now());
    let mut g = FakeGuest::live(CLEAN);
    g.assessment.taint_mask = None;
    let (h, _) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
}

#[test]
fn dead_agent_in_a_live_guest_is_checked_then_restarted_if_broken() {
    let i = Incident::from_verdict(Verdict::AgentDead, Instant::now());
    let mut g = FakeGuest::live(CLEAN);
    let (h, _) = run(&mut g, &i, 1);
    assert_eq!(g.performed, ["smoke_test"]);
    assert_eq!(h.fate, Fate::Continue);

    // The restarted agent cannot use the module: reload three times, then reset.
    let mut g = FakeGuest::live(CLEAN).on("smoke_test", &[Outcome::Failed; 4]);
    let (h, _) = run(&mut g, &i, 1);
    assert_eq!(
        g.performed[..3],
        ["smoke_test", "unload_module", "check_leaks"]
    );
    assert_eq!(h.fate, Fate::RestartRequired);
}

#[test]
fn unexpected_reboot_restarts() {
    let i = Incident::from_verdict(Verdict::Rebooted, Instant::now());
    assert_eq!(i.category, Category::KernelPanic);
    let mut g = FakeGuest::live(CLEAN);
    let (h, _) = run(&mut g, &i, 1);
    assert_eq!(g.performed, RESTART);
    assert_eq!(h.fate, Fate::RestartRequired);
}

#[test]
fn a_guest_that_comes_back_unclean_is_relaunched_again() {
    let i = from_log("crash-612-panic.log");
    let mut g = FakeGuest::live(CLEAN).on("verify_clean_boot", &[Outcome::Failed]);
    let (h, _) = run(&mut g, &i, 1);
    let relaunches = g.performed.iter().filter(|a| **a == "relaunch_vm").count();
    assert_eq!(relaunches, 2);
    assert_eq!(h.fate, Fate::RestartRequired);
}

#[test]
fn a_module_that_will_not_load_after_a_restart_aborts() {
    let i = from_log("crash-612-panic.log");
    let mut g = FakeGuest::live(CLEAN).on("load_module", &[Outcome::Failed]);
    let (h, _) = run(&mut g, &i, 1);
    assert_eq!(g.performed.last(), Some(&"load_module"));
    assert_eq!(h.fate, Fate::Abort);
}

#[test]
fn a_repeat_offender_is_isolated_once_recovered() {
    let i = from_log("crash-612-panic.log");
    let mut g = FakeGuest::live(CLEAN);
    let (h, _) = run(&mut g, &i, 2);
    assert_eq!(g.performed, RESTART);
    assert_eq!((h.level, h.fate), (Level::Isolation, Fate::SkipCurrent));
}

#[test]
fn kernel_died_reads_the_taint_and_falls_back_on_the_category() {
    let oops = from_log("crash-612-null.log");
    assert!(kernel_died(&oops, Some(DIED)));
    assert!(!kernel_died(&oops, Some(CLEAN)));
    assert!(kernel_died(&oops, None));
    let warn = from_log("crash-612-warn.log");
    assert!(!kernel_died(&warn, None));
    let panic = from_log("crash-612-panic.log");
    assert!(kernel_died(&panic, Some(CLEAN)));
}

/// `handle_crash_keeping` with a database file in `dir`, the fake guest and `cfg`.
fn run_keeping(
    guest: &mut FakeGuest,
    incident: &Incident,
    dir: &std::path::Path,
    cfg: crate::plan::ForensicsConfig,
) -> (Handled, Store) {
    let db = dir.join("crashes.db");
    let mut store = Store::open(&db).unwrap();
    let ctx = CrashContext {
        test_name: "t".into(),
        test_crashes: 1,
        ..Default::default()
    };
    let keep = Keep {
        db_path: db,
        forensics: cfg,
        module_ko: Some(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/symbolize/6.12.117+deb12-amd64/vexfs.ko"
            )
            .into(),
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let h = rt
        .block_on(handle_crash_keeping(
            guest,
            &mut store,
            incident,
            &ctx,
            Policy::default(),
            Some(&keep),
        ))
        .unwrap();
    (h, store)
}

fn actions(store: &Store, crash_id: i64) -> Vec<(String, String)> {
    store
        .attempts(crash_id)
        .unwrap()
        .into_iter()
        .map(|a| (a.action, a.outcome))
        .collect()
}

#[test]
fn a_panic_is_dumped_before_the_relaunch_and_its_folder_written() {
    let i = from_log("crash-612-panic.log");
    let tmp = tempfile::tempdir().unwrap();
    let mut g = FakeGuest::live(CLEAN);
    let (h, store) = run_keeping(&mut g, &i, tmp.path(), Default::default());
    assert_eq!(
        g.performed,
        [
            "collect_forensics",
            DUMP_STEP,
            "relaunch_vm",
            "verify_clean_boot",
            "load_module",
            "smoke_test"
        ]
    );
    assert_eq!(h.fate, Fate::RestartRequired);
    let d = h.dump.clone().expect("dump step");
    assert_eq!(
        (d.level, d.outcome),
        (Level::SystemReset, Outcome::Succeeded)
    );
    // Its own timed step in the timeline, before the relaunch; the folder after all.
    let names: Vec<String> = actions(&store, h.crash_id)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        names,
        [
            "collect_forensics",
            DUMP_STEP,
            "relaunch_vm",
            "verify_clean_boot",
            "load_module",
            "smoke_test",
            ARTIFACTS_STEP,
            crate::store::RECOVERY_SUMMARY
        ]
    );
    let kinds: Vec<crate::artifacts::Kind> = h.artifacts.iter().map(|a| a.kind).collect();
    use crate::artifacts::Kind;
    for k in [
        Kind::Console,
        Kind::Report,
        Kind::Forensics,
        Kind::Vmcore,
        Kind::Module,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing: {kinds:?}");
    }
    let listed = crate::artifacts::list(&tmp.path().join("crashes.db"), h.crash_id).unwrap();
    assert_eq!(listed, h.artifacts);
}

#[test]
fn a_failed_dump_is_recorded_and_recovery_goes_on() {
    let i = from_log("crash-612-panic.log");
    let tmp = tempfile::tempdir().unwrap();
    let mut g = FakeGuest::live(CLEAN);
    g.dump_fails = Some("dump: failed to save memory: No space left on device".into());
    let (h, store) = run_keeping(&mut g, &i, tmp.path(), Default::default());
    assert_eq!(h.fate, Fate::RestartRequired);
    assert_eq!(&g.performed[1..3], [DUMP_STEP, "relaunch_vm"]);
    let d = h.dump.expect("dump step");
    assert_eq!(d.outcome, Outcome::Failed);
    assert!(d.detail.contains("No space left"), "{}", d.detail);
    let rows = store.attempts(h.crash_id).unwrap();
    let row = rows.iter().find(|a| a.action == DUMP_STEP).unwrap();
    assert_eq!(row.outcome, "failed");
    assert!(row.detail.contains("No space left"), "{}", row.detail);
    assert!(
        !h.artifacts
            .iter()
            .any(|a| a.kind == crate::artifacts::Kind::Vmcore)
    );
    assert!(
        h.artifacts
            .iter()
            .any(|a| a.kind == crate::artifacts::Kind::Report)
    );
}

#[test]
fn a_gone_qemu_is_not_asked_for_a_dump_but_the_step_says_why() {
    let i = from_log("crash-612-panic.log");
    let tmp = tempfile::tempdir().unwrap();
    let mut g = FakeGuest::live(CLEAN);
    g.assessment.vm_alive = false;
    g.assessment.qmp_responsive = false;
    let (h, _) = run_keeping(&mut g, &i, tmp.path(), Default::default());
    assert!(!g.performed.contains(&DUMP_STEP));
    let d = h.dump.expect("dump step");
    assert_eq!(d.outcome, Outcome::Failed);
    assert!(d.detail.contains("QEMU is gone"), "{}", d.detail);
}

#[test]
fn only_the_plans_number_of_vmcores_is_kept() {
    let i = from_log("crash-612-panic.log");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = crate::plan::ForensicsConfig {
        keep_vmcores: 1,
        ..Default::default()
    };
    let (first, _) = run_keeping(&mut FakeGuest::live(CLEAN), &i, tmp.path(), cfg.clone());
    let (second, _) = run_keeping(&mut FakeGuest::live(CLEAN), &i, tmp.path(), cfg);
    assert!(
        second
            .dump
            .unwrap()
            .detail
            .contains("1 older vmcore(s) deleted")
    );
    let db = tmp.path().join("crashes.db");
    let has_core = |id| {
        crate::artifacts::list(&db, id)
            .unwrap()
            .iter()
            .any(|a| a.kind == crate::artifacts::Kind::Vmcore)
    };
    assert!(!has_core(first.crash_id));
    assert!(has_core(second.crash_id));
}

#[test]
fn an_oops_is_dumped_first_only_when_the_plan_asks() {
    let i = from_log("crash-612-null.log");
    let tmp = tempfile::tempdir().unwrap();
    let mut g = FakeGuest::live(DIED | CLEAN);
    let (h, _) = run_keeping(&mut g, &i, tmp.path(), Default::default());
    assert!(h.dump.is_none());
    assert_eq!(g.performed, RESTART);
    let cfg = crate::plan::ForensicsConfig {
        vmcore_on: vec![crate::plan::DumpOn::Oops],
        ..Default::default()
    };
    let mut g = FakeGuest::live(DIED | CLEAN);
    let (h, _) = run_keeping(&mut g, &i, tmp.path(), cfg);
    assert_eq!(g.performed[0], DUMP_STEP);
    assert_eq!(&g.performed[1..], RESTART);
    assert_eq!(h.dump.unwrap().outcome, Outcome::Succeeded);
}

#[test]
fn a_hang_is_dumped_after_forensics_before_the_reset_when_asked() {
    let cfg = crate::plan::ForensicsConfig {
        vmcore_on: vec![crate::plan::DumpOn::Hang],
        ..Default::default()
    };
    assert_eq!(
        dump_point(Category::Deadlock, &cfg),
        Some(DumpPoint::BeforeReset)
    );
    assert_eq!(dump_point(Category::KernelPanic, &cfg), None);
    assert_eq!(dump_point(Category::Warning, &cfg), None);
    let i = Incident::from_verdict(Verdict::GuestHung, Instant::now());
    let tmp = tempfile::tempdir().unwrap();
    let mut g = FakeGuest::live(CLEAN);
    let (_, _) = run_keeping(&mut g, &i, tmp.path(), cfg);
    let dump_at = g.performed.iter().position(|a| *a == DUMP_STEP).unwrap();
    assert!(
        g.performed[..dump_at].contains(&"collect_forensics"),
        "{:?}",
        g.performed
    );
    assert!(
        ["relaunch_vm", "system_reset"].contains(&g.performed[dump_at + 1]),
        "{:?}",
        g.performed
    );
}
