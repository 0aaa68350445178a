//! One kernel's part of a run: boot its guest, run its tests in order (each from its
//! checkpoint when resuming), and stop the kernel when recovery fails.

use super::ms;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Reporter;
use super::incident::crash_matches;
use super::test_disks::{DiskDir, relaunch_for_test};
use super::test_run::{TestRun, run_test};
use crate::guest::{CrashContext, Guest, ModuleSpec};
use crate::plan::{Plan, Test};
use crate::results::{CrashSummary, KernelResults, TestResult, TestStatus};
use crate::store::Store;
use crate::supervisor::WatchOptions;
use crate::verdict::Timeouts;
use crate::vm::VmConfig;
use crate::vm::image::Manifest;

fn say(progress: &Reporter, msg: &str) {
    progress.line(msg);
}

/// The kernel a session runs on: its image and the module to load from it.
pub(super) struct Kernel<'a> {
    /// The image.
    pub(super) manifest: &'a Manifest,
    /// Module name and in-guest path (built from source or the plan's).
    pub(super) module: (String, String),
    /// The plan's folder (disk images are relative to it).
    pub(super) plan_dir: &'a std::path::Path,
}

/// Runs one kernel's tests on one guest (rebooted as recovery requires).
pub(super) async fn run_kernel(
    plan: &Plan,
    k: &Kernel<'_>,
    tests: &[usize],
    run_id: i64,
    db: &std::path::Path,
    progress: &Reporter,
    slot: usize,
) -> KernelResults {
    let started = Instant::now();
    let m = k.manifest;
    let mut kr = no_results(&m.kernel_release);
    let tag = format!("[{}]", m.kernel_release);
    let mut store = match Store::open(db) {
        Ok(s) => s,
        Err(e) => {
            kr.harness_error = Some(e.to_string());
            return kr;
        }
    };
    let mut vm_cfg = VmConfig::from_manifest(m);
    vm_cfg.memory_mib = plan.guest.memory_mib;
    vm_cfg.cpus = plan.guest.cpus;
    vm_cfg.extra_cmdline = plan.guest.cmdline.clone();
    // The root-port layout is what a snapshot is taken and restored with; the plain
    // one means every start is a cold boot.
    if plan.guest.snapshot {
        vm_cfg.vsock_slot = crate::vm::VsockSlot::RootPort;
    }
    let module = ModuleSpec {
        name: k.module.0.clone(),
        path: k.module.1.clone(),
        params: plan.module.params.clone(),
        fstype: (!plan.module.fstype.is_empty()).then(|| plan.module.fstype.clone()),
        smoke_source: plan.module.smoke_source.clone(),
    };
    let opts = WatchOptions {
        timeouts: Timeouts {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(plan.guest.silence_s.max(2)),
        },
        counters: None,
        fd_watch: Vec::new(),
    };
    let base_cfg = vm_cfg.clone();
    let mut disks = DiskDir::new(plan, run_id, slot, k.plan_dir);
    if let (Some(d), Some(&first)) = (&mut disks, tests.first()) {
        match d.fresh(plan, &plan.tests[first].name) {
            Ok(list) => vm_cfg.disks = list,
            Err(e) => {
                for &ti in tests {
                    kr.tests.push(error_result(&plan.tests[ti], &e));
                }
                kr.harness_error = Some(e);
                return kr;
            }
        }
    }
    say(progress, &format!("{tag} booting"));
    let boot = Instant::now();
    let mut guest = match Guest::boot(vm_cfg, module, opts.clone()).await {
        Ok(g) => crate::metrics::global().guest_booted(g),
        Err(e) => {
            let msg = format!("guest did not boot: {e}");
            say(progress, &format!("{tag} {msg}"));
            for &ti in tests {
                kr.tests.push(error_result(&plan.tests[ti], &msg));
            }
            kr.harness_error = Some(msg);
            return kr;
        }
    };
    kr.boot_ms = ms(boot.elapsed());
    kr.time_boot_ms = kr.boot_ms;
    kr.accel = guest
        .vm()
        .map(|v| v.accel().as_str().to_string())
        .unwrap_or_default();
    say(
        progress,
        &format!(
            "{tag} agent healthy after {:.1} s ({})",
            boot.elapsed().as_secs_f64(),
            guest.started_from.describe()
        ),
    );
    // The module under test is loaded on every boot, as the ladder does after a
    // restart, so a resumed run starts where the killed one stood.
    match guest.load_module().await {
        Ok(crate::recovery::Outcome::Succeeded) => {}
        other => say(
            progress,
            &format!("{tag} loading {} failed: {other:?}", plan.module.name),
        ),
    }
    let kconfig = crate::build::kernel::image_config(m);
    let mut crash_counts: HashMap<String, u32> = HashMap::new();
    let mut aborted: Option<String> = None;
    let total = tests.len();
    let mut guest_used = false;
    // What a crash keeps beside its row: vmcores as the plan says, the module it ran.
    let keep = crate::guest::Keep {
        db_path: db.to_path_buf(),
        forensics: plan.forensics.clone(),
        module_ko: m.kernel.parent().and_then(|image| {
            crate::artifacts::image_module_ko(image.parent()?, &m.kernel_release, &k.module.0)
        }),
    };
    for (i, &ti) in tests.iter().enumerate() {
        let test = &plan.tests[ti];
        let test_id = match store.test_id(run_id, &m.kernel_release, &test.name) {
            Ok(id) => id,
            Err(e) => {
                kr.tests.push(error_result(test, &e.to_string()));
                continue;
            }
        };
        if let Some(prev) = finished_result(&store, run_id, test_id, test) {
            say(
                progress,
                &format!(
                    "{tag} {}/{total} {}: {:?} (from checkpoint)",
                    i + 1,
                    test.name,
                    prev.status
                ),
            );
            progress.update(slot, |k| k.done = i + 1);
            kr.tests.push(prev);
            continue;
        }
        if let Some(why) = crate::plan::unmet(&test.requires, kconfig.as_ref(), &m.kernel_release) {
            say(
                progress,
                &format!("{tag} {}/{total} {}: skipped ({why})", i + 1, test.name),
            );
            let _ = store.set_test_status(test_id, "skipped", &why);
            progress.update(slot, |k| k.done = i + 1);
            kr.tests.push(TestResult {
                status: TestStatus::Skipped,
                ..error_result(test, &why)
            });
            continue;
        }
        if let Some(why) = &aborted {
            let r = error_result(test, why);
            // Best effort: when the database is what failed, resume re-runs the test.
            let _ = store.set_test_status(test_id, "error", why);
            kr.tests.push(r);
            continue;
        }
        let ctx = CrashContext {
            run_id: Some(run_id),
            test_id: Some(test_id),
            test_name: test.name.clone(),
            test_crashes: 0,
        };
        // A database that cannot take a status cannot take crashes either: stop this
        // kernel rather than run tests whose results would be lost.
        if let Err(e) = store.set_test_status(test_id, "running", "") {
            let why = format!("{}: {e}", db.display());
            kr.tests.push(error_result(test, &why));
            kr.harness_error = Some(why.clone());
            aborted = Some(why);
            continue;
        }
        // Fresh disks need a fresh guest (QEMU fixes its disks at launch), which also
        // serves fresh_vm = "per_test"; otherwise per_test restores a fresh guest.
        if let Some(d) = disks.as_mut().filter(|d| d.needs_relaunch(&test.name)) {
            match relaunch_for_test(&mut guest, &base_cfg, &opts, d, plan, &test.name).await {
                Ok(took) => kr.time_boot_ms += ms(took),
                Err(e) => {
                    let _ = store.set_test_status(test_id, "error", &e);
                    say(progress, &format!("{tag} {}: {e}", test.name));
                    kr.tests.push(error_result(test, &e));
                    continue;
                }
            }
        } else if plan.guest.fresh_vm == crate::plan::FreshVm::PerTest && guest_used {
            let t = Instant::now();
            match guest.fresh_start().await {
                Ok(how) => say(progress, &format!("{tag} fresh guest: {how}")),
                Err(e) => {
                    let why = format!("no fresh guest for {}: {e}", test.name);
                    let _ = store.set_test_status(test_id, "error", &why);
                    kr.tests.push(error_result(test, &why));
                    kr.harness_error = Some(why.clone());
                    aborted = Some(why);
                    continue;
                }
            }
            kr.time_boot_ms += ms(t.elapsed());
        }
        let crashes = crash_counts.entry(test.name.clone()).or_default();
        let TestRun {
            result,
            recovery_ms,
            mut abort,
        } = run_test(&mut guest, &mut store, test, ctx, crashes, plan, &keep).await;
        guest_used = true;
        kr.time_recovery_ms += recovery_ms;
        kr.time_tests_ms += result.duration_ms.saturating_sub(recovery_ms);
        let status = result.status.as_str();
        if let Err(e) = store.set_test_status(test_id, status, &result.message) {
            // The test stays "running" in the database, so a resume runs it again.
            abort.get_or_insert(format!("{}: {e}", db.display()));
        }
        let crash = result
            .crashes
            .first()
            .map(|c| format!(" [{}]", c.title))
            .unwrap_or_default();
        say(
            progress,
            &format!(
                "{tag} {}/{total} {}: {status} in {:.1} s{crash}{}",
                i + 1,
                test.name,
                result.duration_ms as f64 / 1000.0,
                if result.message.is_empty() || result.status == TestStatus::Passed {
                    String::new()
                } else {
                    format!(" ({})", result.message)
                }
            ),
        );
        progress.update(slot, |k| {
            k.done = i + 1;
            k.crashes += result.crashes.len();
            k.recovered += result.crashes.iter().filter(|c| c.recovered).count();
        });
        crate::metrics::global().test_finished(&kr.kernel, result.status);
        kr.tests.push(result);
        if let Some(why) = abort {
            kr.harness_error = Some(why.clone());
            aborted = Some(why);
        }
    }
    if let Some(vm) = guest.vm() {
        let _ = vm.qmp().quit().await;
    }
    drop(guest);
    crate::metrics::global().guest_down();
    kr.duration_ms = ms(started.elapsed());
    kr
}

/// A kernel's results before anything ran on it.
pub(super) fn no_results(kernel: &str) -> KernelResults {
    KernelResults {
        kernel: kernel.to_string(),
        accel: String::new(),
        boot_ms: 0,
        duration_ms: 0,
        time_boot_ms: 0,
        time_tests_ms: 0,
        time_recovery_ms: 0,
        tests: Vec::new(),
        harness_error: None,
    }
}

pub(super) fn error_result(test: &Test, msg: &str) -> TestResult {
    TestResult {
        name: test.name.clone(),
        status: TestStatus::Error,
        duration_ms: 0,
        message: msg.to_string(),
        expected_crash: test.expect_crash.clone(),
        crashes: Vec::new(),
        attempts: 0,
        steps: Vec::new(),
        metrics: Vec::new(),
        notes: Vec::new(),
    }
}

/// A test the checkpoint says is done, rebuilt from the database.
pub(super) fn finished_result(
    store: &Store,
    run_id: i64,
    test_id: i64,
    test: &Test,
) -> Option<TestResult> {
    let rows = store.tests(run_id).ok()?;
    let (_, _, _, status, attempts) = rows.into_iter().find(|r| r.0 == test_id)?;
    // Only a test that reached a verdict is done; an error or a test still running
    // when the controller died runs again.
    let status = TestStatus::from_name(&status).filter(|s| s.reached_verdict())?;
    let crashes = store
        .crashes(Some(run_id), i64::MAX)
        .ok()?
        .into_iter()
        .filter(|c| c.crash.test_id == Some(test_id))
        .map(|c| CrashSummary {
            id: c.id,
            expected: test
                .expect_crash
                .as_deref()
                .is_some_and(|e| crash_matches(e, c.crash.category.as_str(), &c.crash.title)),
            category: c.crash.category,
            severity: c.crash.severity,
            title: c.crash.title,
            recovery_level: 0,
            fate: None,
            recovery_ms: 0,
            recovered: true,
            intact: c.intact.unwrap_or(false),
            data_loss: store
                .data_loss(c.id)
                .ok()
                .flatten()
                .map(|(detail, expected)| crate::results::DataLoss { detail, expected }),
            report: c.crash.report,
        })
        .collect();
    Some(TestResult {
        name: test.name.clone(),
        status,
        duration_ms: 0,
        message: "from checkpoint".into(),
        expected_crash: test.expect_crash.clone(),
        crashes,
        attempts: u32::try_from(attempts).unwrap_or(0),
        steps: Vec::new(),
        metrics: Vec::new(),
        notes: Vec::new(),
    })
}
