//! One end-to-end test per crash type: trigger the fault in the vexfs module of a real
//! guest, let the supervisor see it, run the recovery ladder, and check the verdict,
//! category, title, recovery level, its success and the database rows.

use std::time::{Duration, Instant};

use vexfs_controller::guest::{self, CrashContext, Guest, Handled, ModuleSpec};
use vexfs_controller::recovery::{Fate, Level, Policy};
use vexfs_controller::store::{NewCrash, Store};
use vexfs_controller::supervisor::{Observation, WatchOptions};
use vexfs_controller::vm::image::Manifest;

use super::{config, manifest, rt, serial};

/// A booted 6.12 guest with vexfs loaded, a fresh database and a run.
struct Bench {
    guest: Guest,
    store: Store,
    ctx: CrashContext,
    _dir: tempfile::TempDir,
}

fn module(m: &Manifest) -> ModuleSpec {
    ModuleSpec {
        name: m.module_name.clone(),
        path: m.module_path_in_guest.clone(),
        params: String::new(),
        fstype: Some("vexfs".into()),
    }
}

async fn bench(test: &str, opts: WatchOptions) -> Bench {
    let m = manifest(None);
    let guest = Guest::boot(config(&m), module(&m), opts)
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let mut b = {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("crashes.db")).unwrap();
        let run = store.begin_run("e2e", "{}").unwrap();
        let test_id = store.test_id(run, &m.kernel_release, test).unwrap();
        Bench {
            guest,
            store,
            ctx: CrashContext {
                run_id: Some(run),
                test_id: Some(test_id),
                test_name: test.into(),
                test_crashes: 1,
            },
            _dir: dir,
        }
    };
    assert_eq!(
        b.guest.load_module().await.unwrap(),
        vexfs_controller::recovery::Outcome::Succeeded
    );
    b
}

/// Fires a fault from a child shell in the background (the writer may never return).
fn fire(b: &Bench, fault: &str) {
    let mut client = b.guest.client().with_call_timeout(Duration::from_secs(120));
    let cmd = format!("echo {fault} > /sys/kernel/debug/vexfs/trigger");
    tokio::spawn(async move {
        let _ = client
            .exec(vexfs_proto::ExecRequest {
                argv: vec!["sh".into(), "-c".into(), cmd],
                timeout_ms: 100_000,
                ..Default::default()
            })
            .await;
    });
}

/// Waits for the first crash observation (remembering stuck pids on the way).
async fn first_crash(b: &mut Bench, within: Duration) -> (NewCrash, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match b.guest.watch().recv_timeout(left).await {
            Some(Observation::Crash { report, at, .. }) => {
                let row =
                    guest::crash_row(&report, &b.guest.health.kernel_release, "crash", &b.ctx);
                return (row, at);
            }
            Some(Observation::Hung(h)) => b.guest.stuck_pid = Some(h.pid),
            Some(Observation::Verdict(v)) if v.is_failure() => {
                let row = guest::verdict_row(&v, &b.guest.health.kernel_release, &b.ctx);
                return (row, Instant::now());
            }
            Some(_) => {}
            None => panic!(
                "no crash within {within:?}; console:\n{}",
                b.guest.watch().console_excerpt()
            ),
        }
    }
}

/// Handles the crash and checks what every recovery must leave behind.
async fn recover(b: &mut Bench, crash: NewCrash, at: Instant) -> Handled {
    let h = guest::handle_crash(
        &mut b.guest,
        &mut b.store,
        crash.clone(),
        at,
        &b.ctx,
        Policy::default(),
    )
    .await
    .unwrap();
    for (level, action, outcome, took) in &h.steps {
        eprintln!("recovery: {level:?} {} -> {outcome:?} in {took:?}", action.name());
    }
    eprintln!("recovery: {:?} {:?} in {:?}", h.level, h.fate, h.duration);
    let row = b.store.crash(h.crash_id).unwrap();
    assert_eq!(row.crash.title, crash.title);
    assert_eq!(row.crash.run_id, b.ctx.run_id);
    let attempts = b.store.attempts(h.crash_id).unwrap();
    assert_eq!(
        attempts.len(),
        h.steps.len() + 1,
        "one row per step plus the summary"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.started_at_ms >= row.crash.detected_at_ms)
    );
    let stats = b.store.stats(b.ctx.run_id).unwrap();
    assert_eq!((stats.crashes, stats.recoveries), (1, 1));
    assert_eq!(stats.recovered, i64::from(h.succeeded()));
    // After any successful recovery the module works again.
    if h.succeeded() {
        assert_eq!(
            b.guest.smoke_test().await,
            vexfs_controller::recovery::Outcome::Succeeded
        );
    }
    h
}

fn actions(h: &Handled) -> Vec<&'static str> {
    h.steps.iter().map(|(_, a, _, _)| a.name()).collect()
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn module_crash_null_deref_resets_the_guest() {
    let _one = serial();
    rt().block_on(async {
        let t0 = Instant::now();
        let mut b = bench("null", WatchOptions::default()).await;
        eprintln!("booted in {:?}", t0.elapsed());
        let old_boot = b.guest.health.boot_id.clone();
        fire(&b, "null");
        let (crash, at) = first_crash(&mut b, Duration::from_secs(30)).await;
        eprintln!("crash seen after {:?}: {}", t0.elapsed(), crash.title);
        assert_eq!(crash.category, "module_crash");
        assert_eq!(
            crash.title,
            "BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null"
        );
        assert_eq!(crash.module, "vexfs");
        let h = recover(&mut b, crash, at).await;
        // Never unload after an oops: straight to a system reset.
        assert!(!actions(&h).contains(&"unload_module"), "{:?}", actions(&h));
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
        assert_ne!(b.guest.health.boot_id, old_boot);
        assert!(h.record_latency < Duration::from_secs(1));
    });
}
