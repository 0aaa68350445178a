//! One end-to-end test per crash type: trigger the fault in the vexfs module of a real
//! guest, let the supervisor see it, run the recovery ladder, and check the verdict,
//! category, title, recovery level, its success and the database rows.

use std::time::{Duration, Instant};

use vexfs_controller::classify::Category;
use vexfs_controller::guest::{self, CrashContext, Guest, Handled, ModuleSpec};
use vexfs_controller::incident::Incident;
use vexfs_controller::recovery::{Fate, Level, Outcome, Policy};
use vexfs_controller::store::Store;
use vexfs_controller::supervisor::WatchOptions;
use vexfs_controller::trend;
use vexfs_controller::verdict::Timeouts;
use vexfs_controller::vm::image::Manifest;

use super::{config, manifest, rt, serial, spawn_sh};

/// A booted 6.12 guest with vexfs loaded, a fresh database and a run.
pub(crate) struct Bench {
    pub(crate) guest: Guest,
    pub(crate) store: Store,
    pub(crate) ctx: CrashContext,
    _dir: tempfile::TempDir,
}

pub(crate) fn module(m: &Manifest) -> ModuleSpec {
    ModuleSpec {
        name: m.module_name.clone(),
        path: m.module_path_in_guest.clone(),
        params: String::new(),
        fstype: Some("vexfs".into()),
        smoke_source: "none".into(),
    }
}

pub(crate) async fn bench(test: &str, opts: WatchOptions) -> Bench {
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
    // What check_leaks compares with, as the runner takes it before each test.
    b.guest.take_baseline().await.unwrap();
    b
}

/// Fires a fault from a child shell in the background (the writer may never return).
pub(crate) fn fire(b: &Bench, fault: &str) {
    fire_cmd(
        b,
        &format!("echo {fault} > /sys/kernel/debug/vexfs/trigger"),
    );
}

/// Runs a shell command in the guest in the background.
pub(crate) fn fire_cmd(b: &Bench, cmd: &str) {
    spawn_sh(
        b.guest.client().with_call_timeout(Duration::from_secs(120)),
        cmd.to_string(),
        Duration::from_secs(100),
    );
}

/// Waits for the first incident.
pub(crate) async fn first_crash(b: &mut Bench, within: Duration) -> Incident {
    match b.guest.watch().next_incident(within, |_| {}).await {
        Some(i) => i,
        None => panic!(
            "no crash within {within:?}; console:\n{}",
            b.guest.watch().console_excerpt()
        ),
    }
}

/// Handles the crash and checks what every recovery must leave behind.
pub(crate) async fn recover(b: &mut Bench, crash: Incident) -> Handled {
    let old_run_dir = b.guest.vm().map(|vm| vm.run_dir().display().to_string());
    let h = guest::handle_crash(
        &mut b.guest,
        &mut b.store,
        &crash,
        &b.ctx,
        Policy::default(),
    )
    .await
    .unwrap();
    for (level, action, outcome, took) in &h.steps {
        eprintln!(
            "recovery: {level:?} {} -> {outcome:?} in {took:?}",
            action.name()
        );
    }
    eprintln!("recovery: {:?} {:?} in {:?}", h.level, h.fate, h.duration);
    // A relaunch leaves nothing of the old VM running (QEMU, its vsock daemon).
    let new_run_dir = b.guest.vm().map(|vm| vm.run_dir().display().to_string());
    if let Some(old) = old_run_dir.filter(|old| Some(old) != new_run_dir.as_ref()) {
        super::assert_no_orphans(&old);
    }
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

pub(crate) fn actions(h: &Handled) -> Vec<&'static str> {
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
        let crash = first_crash(&mut b, Duration::from_secs(30)).await;
        eprintln!("crash seen after {:?}: {}", t0.elapsed(), crash.title);
        assert_eq!(crash.category, Category::ModuleCrash);
        assert_eq!(
            crash.title,
            "BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null"
        );
        assert_eq!(crash.module.as_deref(), Some("vexfs"));
        let h = recover(&mut b, crash).await;
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

/// Fires `fault`, expects one crash of `category` titled `title`, recovers, and returns
/// what the recovery did.
async fn fault_case(
    b: &mut Bench,
    fault: &str,
    within: Duration,
    category: &str,
    title: &str,
) -> Handled {
    let t0 = Instant::now();
    fire(b, fault);
    let crash = first_crash(b, within).await;
    eprintln!("{fault}: crash after {:?}: {}", t0.elapsed(), crash.title);
    assert_eq!(crash.category.as_str(), category, "{}", crash.report);
    assert_eq!(crash.title, title);
    recover(b, crash).await
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn kernel_panic_restarts_the_guest() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("panic", WatchOptions::default()).await;
        let old_boot = b.guest.health.boot_id.clone();
        let h = fault_case(
            &mut b,
            "panic",
            Duration::from_secs(30),
            "kernel_panic",
            "kernel panic: vexfs: injected panic from vexfs_fault_panic",
        )
        .await;
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
        assert_ne!(b.guest.health.boot_id, old_boot);
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn deadlock_found_as_hung_task_and_reset_when_unkillable() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("deadlock", WatchOptions::default()).await;
        // Fired by an Exec with a short timeout: the writer cannot be killed, and the
        // agent answers anyway, saying where in the kernel it sleeps.
        let writer = spawn_sh(
            b.guest.client().with_call_timeout(Duration::from_secs(30)),
            "echo deadlock > /sys/kernel/debug/vexfs/trigger".into(),
            Duration::from_secs(2),
        );
        let crash = first_crash(&mut b, Duration::from_secs(40)).await;
        assert_eq!(crash.category, Category::Deadlock, "{}", crash.report);
        assert_eq!(crash.title, "INFO: task hung in vexfs_fault_deadlock");
        // The reply comes before the recovery resets the guest.
        let reply = writer
            .await
            .unwrap()
            .expect("exec answers past its timeout");
        assert!(reply.timed_out);
        assert_eq!((reply.exit_code, reply.signal), (-1, 0));
        let stuck = reply.unkillable.expect("the writer is reported unkillable");
        assert_eq!(stuck.pid, reply.pid);
        assert!(
            stuck
                .stack
                .iter()
                .any(|f| f.contains("vexfs_fault_deadlock")),
            "{:?}",
            stuck.stack
        );
        let said = vexfs_controller::client::unkillable_summary(&stuck);
        eprintln!("exec: {said}");
        assert!(said.contains("vexfs_fault_deadlock"), "{said}");
        let h = recover(&mut b, crash).await;
        // The agent's D-state scan named the stuck task before the kernel did; a task
        // in D state cannot be killed, so termination fails and the guest is reset.
        assert_eq!(actions(&h)[0], "kill_workload");
        assert_eq!(h.steps[0].2, Outcome::Hung);
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn soft_lockup_reported_by_the_kernel_then_reset() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("softlockup", WatchOptions::default()).await;
        let h = fault_case(
            &mut b,
            "softlockup",
            Duration::from_secs(60),
            "deadlock",
            "BUG: soft lockup in vexfs_fault_softlockup",
        )
        .await;
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn kfence_use_after_free_is_memory_corruption() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("uaf", WatchOptions::default()).await;
        let h = fault_case(
            &mut b,
            "uaf",
            Duration::from_secs(30),
            "memory_corruption",
            "KFENCE: use-after-free read in vexfs_fault_uaf",
        )
        .await;
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn leak_found_by_trend_outlives_the_unload_and_is_cleaned_up_by_a_restart() {
    let _one = serial();
    rt().block_on(async {
        let opts = WatchOptions {
            counters: None,
            ..Default::default()
        };
        let mut b = bench("leak", opts).await;
        let set = "echo 64 > /sys/module/vexfs/parameters/leak_per_mount_kb";
        let r = b.guest.exec(&["sh", "-c", set], Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        let mut sunreclaim = Vec::new();
        let mut client = b.guest.client();
        // 32 mounts leak 2 MiB: twice the leak check's default bound, so the check
        // after the unload is not a coin toss against slab noise.
        for _ in 0..32 {
            let cycle = "mkdir -p /mnt/l && mount -t vexfs none /mnt/l && echo x > /mnt/l/f && umount /mnt/l";
            let r = b.guest.exec(&["sh", "-c", cycle], Duration::from_secs(10)).await.unwrap();
            assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
            let c = client.sample_counters(Default::default()).await.unwrap();
            sunreclaim.push(c.meminfo_kb["SUnreclaim"] as f64);
        }
        let series = trend::Series {
            name: "SUnreclaim".into(),
            unit: "kB".into(),
            min_growth: 256.0,
            values: sunreclaim,
        };
        let leaks = trend::leaks(&[series], &trend::Config::default());
        assert_eq!(leaks.len(), 1, "no leak found");
        assert!(leaks[0].slope > 32.0 && leaks[0].slope < 128.0, "{:?}", leaks[0]);
        let crash = Incident::leak(&leaks, "vexfs", "mount", Instant::now());
        assert_eq!(crash.title, "resource leak in vexfs: SUnreclaim per mount");
        let h = recover(&mut b, crash).await;
        // Unloading the module does not give kmalloc'd memory back: check_leaks finds
        // the slab still grown past the bound, and only a restart frees it.
        assert_eq!(actions(&h)[..2], ["unload_module", "check_leaks"]);
        let check = &b.store.attempts(h.crash_id).unwrap()[1];
        assert_eq!(check.outcome, "failed", "{check:?}");
        assert!(
            check.detail.contains("unreclaimable slab stays"),
            "{}",
            check.detail
        );
        assert!(actions(&h).contains(&"relaunch_vm"), "{:?}", actions(&h));
        assert_eq!((h.level, h.fate), (Level::SystemReset, Fate::RestartRequired));
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn frozen_guest_is_a_system_hang() {
    let _one = serial();
    rt().block_on(async {
        let opts = WatchOptions {
            timeouts: Timeouts {
                heartbeat: Duration::from_secs(1),
                silence: Duration::from_secs(4),
            },
            ..Default::default()
        };
        let mut b = bench("hang", opts).await;
        b.guest.vm().unwrap().qmp().stop().await.unwrap();
        let crash = first_crash(&mut b, Duration::from_secs(20)).await;
        assert_eq!(crash.verdict_name(), "guest_hung");
        assert_eq!(crash.category, Category::SystemHang);
        let h = recover(&mut b, crash).await;
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn agent_killed_in_a_live_guest_comes_back() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("agent-kill", WatchOptions::default()).await;
        let old = b.guest.health.clone();
        fire_cmd(&b, "kill -KILL $PPID");
        let crash = first_crash(&mut b, Duration::from_secs(20)).await;
        assert_eq!(crash.verdict_name(), "agent_dead");
        let h = recover(&mut b, crash).await;
        // Init restarted the agent in the same boot: nothing to reset.
        assert_eq!((h.level, h.fate), (Level::Graceful, Fate::Continue));
        let now = b.guest.client().health().await.unwrap();
        assert_eq!(now.boot_id, old.boot_id);
        assert_ne!(now.agent_pid, old.agent_pid);
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn qemu_killed_is_vmm_death_and_relaunched() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("qemu-kill", WatchOptions::default()).await;
        let pid = b.guest.vm().unwrap().qemu_pid().unwrap();
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let crash = first_crash(&mut b, Duration::from_secs(10)).await;
        assert!(
            crash.at - killed < Duration::from_secs(1),
            "{:?}",
            crash.at - killed
        );
        assert_eq!(crash.verdict_name(), "vmm_dead");
        let h = recover(&mut b, crash).await;
        assert_eq!(actions(&h)[0], "relaunch_vm");
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
    });
}
