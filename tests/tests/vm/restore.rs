//! Level-2 recovery through the snapshot: the ladder's relaunch restores the booted
//! snapshot (the timeline says so, and the fresh state is proved by the restore
//! generation), and a corrupt snapshot makes it a cold boot that says why.

use std::path::Path;
use std::time::Duration;

use vexfs_controller::guest::{self, CrashContext, Guest, Handled};
use vexfs_controller::recovery::{Fate, Level, Outcome, Policy};
use vexfs_controller::store::{NewAttempt, Store};
use vexfs_controller::supervisor::WatchOptions;
use vexfs_controller::vm::image::Manifest;
use vexfs_controller::vm::restart::StartedFrom;
use vexfs_controller::vm::snapshot;
use vexfs_controller::vm::{VmConfig, VsockSlot, resolve_accel};

pub(crate) use super::recovery::module;
use super::{assert_no_orphans, config, manifest, rt, serial, spawn_sh};

/// A snapshot-enabled configuration (as the runner builds it) whose snapshots and run
/// folders live in `dir`.
pub(crate) fn snapshot_config(m: &Manifest, dir: &Path) -> VmConfig {
    let mut cfg = config(m);
    cfg.vsock_slot = VsockSlot::RootPort;
    cfg.cache_dir = Some(dir.join("cache"));
    cfg.run_parent = Some(dir.join("runs"));
    cfg
}

/// Writes `fault` to the vexfs trigger from a background shell (it may never return).
pub(crate) fn fire(guest: &Guest, fault: &str) {
    spawn_sh(
        guest.client().with_call_timeout(Duration::from_secs(120)),
        format!("echo {fault} > /sys/kernel/debug/vexfs/trigger"),
        Duration::from_secs(100),
    );
}

/// Fires `fault`, waits for its incident and handles it; returns the handling and the
/// attempt rows.
pub(crate) async fn crash_and_recover(
    guest: &mut Guest,
    store: &mut Store,
    ctx: &CrashContext,
    fault: &str,
) -> (Handled, Vec<NewAttempt>) {
    fire(guest, fault);
    let Some(crash) = guest
        .watch()
        .next_incident(Duration::from_secs(60), |_| {})
        .await
    else {
        panic!(
            "{fault}: no crash within 60 s; console:\n{}",
            guest.watch().console_excerpt()
        );
    };
    let h = guest::handle_crash(guest, store, &crash, ctx, Policy::default())
        .await
        .unwrap_or_else(|e| panic!("{fault}: handling failed: {e}"));
    let attempts = store.attempts(h.crash_id).unwrap();
    (h, attempts)
}

/// The detail of the attempt row of `action`.
fn detail<'a>(attempts: &'a [NewAttempt], action: &str) -> &'a str {
    attempts
        .iter()
        .find(|a| a.action == action)
        .map(|a| a.detail.as_str())
        .unwrap_or_else(|| panic!("no {action} attempt in {attempts:?}"))
}

fn context(store: &Store, m: &Manifest, test: &str) -> CrashContext {
    let run = store.begin_run("restore", "{}").unwrap();
    CrashContext {
        run_id: Some(run),
        test_id: Some(store.test_id(run, &m.kernel_release, test).unwrap()),
        test_name: test.into(),
        test_crashes: 1,
    }
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn level_two_recovery_restores_the_snapshot() {
    let _one = serial();
    let m = manifest(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = snapshot_config(&m, dir.path());
    rt().block_on(async {
        let mut g = Guest::boot(cfg, module(&m), WatchOptions::default())
            .await
            .expect("boot");
        assert!(
            matches!(
                g.started_from,
                StartedFrom::Snapshot {
                    taken_now: true,
                    ..
                }
            ),
            "first boot takes the snapshot and restores it: {:?}",
            g.started_from
        );
        assert_eq!(g.load_module().await.unwrap(), Outcome::Succeeded);
        g.take_baseline().await.unwrap();
        let old = g.health.clone();
        let old_run = g.vm().unwrap().run_dir().display().to_string();
        let mut store = Store::open(&dir.path().join("crashes.db")).unwrap();
        let ctx = context(&store, &m, "null");
        let (h, attempts) = crash_and_recover(&mut g, &mut store, &ctx, "null").await;
        for a in &attempts {
            eprintln!(
                "{} {} {} ms: {}",
                a.action, a.outcome, a.duration_ms, a.detail
            );
        }
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
        let relaunch = detail(&attempts, "relaunch_vm");
        assert!(relaunch.starts_with("restored from snapshot"), "{relaunch}");
        let verify = detail(&attempts, "verify_clean_boot");
        assert!(verify.starts_with("restore generation"), "{verify}");
        // Same boot id (the snapshot's), a new generation, a clean kernel.
        assert_eq!(g.health.boot_id, old.boot_id);
        assert_ne!(g.health.restore_generation, old.restore_generation);
        assert!(g.started_from.restored());
        assert_no_orphans(&old_run);
        assert_eq!(g.smoke_test().await, Outcome::Succeeded);
        let run = g.vm().unwrap().run_dir().display().to_string();
        drop(g);
        assert_no_orphans(&run);
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn corrupt_snapshot_during_recovery_cold_boots_and_says_so() {
    let _one = serial();
    let m = manifest(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = snapshot_config(&m, dir.path());
    rt().block_on(async {
        let accel = resolve_accel(&cfg).await;
        let mut g = Guest::boot(cfg.clone(), module(&m), WatchOptions::default())
            .await
            .expect("boot");
        assert!(g.started_from.restored(), "{:?}", g.started_from);
        assert_eq!(g.load_module().await.unwrap(), Outcome::Succeeded);
        // The snapshot goes bad while the guest runs.
        let root = snapshot::store_root(&cfg);
        let key = snapshot::snapshot_key(&cfg, accel).unwrap();
        let snap = snapshot::find(&root, &key).expect("snapshot of the first boot");
        let mut bytes = std::fs::read(snap.state()).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..].fill(0xa5);
        std::fs::write(snap.state(), &bytes).unwrap();
        let mut store = Store::open(&dir.path().join("crashes.db")).unwrap();
        let ctx = context(&store, &m, "panic");
        let (h, attempts) = crash_and_recover(&mut g, &mut store, &ctx, "panic").await;
        for a in &attempts {
            eprintln!(
                "{} {} {} ms: {}",
                a.action, a.outcome, a.duration_ms, a.detail
            );
        }
        assert!(h.succeeded(), "{:?}", h.fate);
        let relaunch = detail(&attempts, "relaunch_vm");
        assert!(
            relaunch.starts_with("cold boot, snapshot not used:"),
            "{relaunch}"
        );
        let verify = detail(&attempts, "verify_clean_boot");
        assert!(verify.starts_with("boot "), "{verify}");
        assert!(matches!(
            g.started_from,
            StartedFrom::ColdBoot { fallback: Some(_) }
        ));
        assert_eq!(g.health.restore_generation, 0);
        assert!(
            snapshot::find(&root, &key).is_none(),
            "bad snapshot removed"
        );
        assert_eq!(g.smoke_test().await, Outcome::Succeeded);
        let run = g.vm().unwrap().run_dir().display().to_string();
        drop(g);
        assert_no_orphans(&run);
    });
}
