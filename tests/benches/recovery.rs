//! Benchmark (not a test): detection and recovery times on a real guest.
//!
//! Run: `cargo bench -p vexfs-tests --bench recovery [-- ROUNDS [DB]]` after
//! `scripts/setup.sh`; `VEXFS_BENCH_KERNEL=6.1` picks another image (default:
//! newest 6.12). Measures under the machine's accelerator: fault → crash row committed
//! (NULL dereference, reported by console and agent), crash row → recovery decision →
//! agent healthy again (relaunch), then for each fault of the harness itself (QMP stop,
//! QEMU SIGSTOP, vsock daemon killed, QEMU killed) the time to its verdict and to a
//! recovered guest. Keeps the crash database at DB (default: a temp dir) so
//! `vexctl crashes stats --db DB` shows the same run.

use std::time::{Duration, Instant};

use vexfs_controller::guest::{self, CrashContext, Guest, ModuleSpec};
use vexfs_controller::recovery::{Action, Policy};
use vexfs_controller::store::Store;
use vexfs_controller::supervisor::WatchOptions;
use vexfs_controller::vm::VmConfig;
use vexfs_controller::vm::image;

/// A fault of the harness's own world.
#[derive(Clone, Copy)]
enum Fault {
    QmpStop,
    Sigstop,
    DaemonKill,
    QemuKill,
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn stats(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    println!(
        "{name}: mean {mean:.0} ms, min {:.0} ms, max {:.0} ms ({} rounds)",
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let db = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("crashes.db"));
    let wanted = std::env::var("VEXFS_BENCH_KERNEL").ok();
    let m = image::select_image(&image::default_images_dir(), wanted.as_deref())
        .unwrap_or_else(|e| panic!("needs a guest image (scripts/setup.sh): {e}"));
    let module = ModuleSpec {
        name: m.module_name.clone(),
        path: m.module_path_in_guest.clone(),
        params: String::new(),
        fstype: Some("vexfs".into()),
        smoke_source: "none".into(),
    };
    let mut store = Store::open(&db).unwrap();
    let run = store.begin_run("bench-recovery", "{}").unwrap();
    let t0 = Instant::now();
    let mut g = Guest::boot(VmConfig::from_manifest(&m), module, WatchOptions::default())
        .await
        .expect("boot");
    println!(
        "kernel {} ({:?} to agent healthy)",
        m.kernel_release,
        t0.elapsed()
    );

    let (mut to_row, mut to_healthy, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        g.load_module().await.expect("load");
        let test = format!("null-{round}");
        let ctx = CrashContext {
            run_id: Some(run),
            test_id: Some(store.test_id(run, &m.kernel_release, &test).unwrap()),
            test_name: test,
            test_crashes: 1,
        };
        let mut client = g.client();
        let fired = Instant::now();
        tokio::spawn(async move {
            let _ = client
                .exec(vexfs_proto::ExecRequest {
                    argv: vec![
                        "sh".into(),
                        "-c".into(),
                        "echo null > /sys/kernel/debug/vexfs/trigger".into(),
                    ],
                    ..Default::default()
                })
                .await;
        });
        let inc = g
            .watch()
            .next_incident(Duration::from_secs(30), |_| {})
            .await
            .expect("no crash");
        let h = guest::handle_crash(&mut g, &mut store, &inc, &ctx, Policy::default())
            .await
            .unwrap();
        assert!(h.succeeded());
        to_row.push(inc.at - fired + h.record_latency);
        // From the restart decision (relaunch) to the agent of the new boot answering.
        let restart: Duration = h
            .steps
            .iter()
            .skip_while(|(_, a, _, _)| !matches!(a, Action::RelaunchVm | Action::SystemReset))
            .take_while(|(_, a, _, _)| !matches!(a, Action::LoadModule))
            .map(|(_, _, _, d)| *d)
            .sum();
        to_healthy.push(restart);
        total.push(h.duration);
    }
    stats("fault -> crash row committed (NULL deref)", &mut to_row);
    stats(
        "restart decision -> agent healthy (relaunch + clean boot)",
        &mut to_healthy,
    );
    stats(
        "whole recovery (forensics, relaunch, verify, reload, smoke)",
        &mut total,
    );

    // The harness's own faults: time to the verdict, to the decision (after the grace
    // for a kernel report), and to a recovered guest.
    for (name, fault) in [
        ("frozen guest (QMP stop)", Fault::QmpStop),
        ("frozen VMM (QEMU SIGSTOP)", Fault::Sigstop),
        ("vsock daemon killed", Fault::DaemonKill),
        ("QEMU killed", Fault::QemuKill),
    ] {
        let ctx = CrashContext {
            run_id: Some(run),
            test_id: Some(store.test_id(run, &m.kernel_release, name).unwrap()),
            test_name: name.into(),
            test_crashes: 1,
        };
        let vm = g.vm().unwrap();
        let at = Instant::now();
        match fault {
            Fault::QmpStop => vm.qmp().stop().await.unwrap(),
            Fault::Sigstop => signal(vm.qemu_pid().unwrap(), libc::SIGSTOP),
            Fault::DaemonKill => signal(vm.daemon_pid().unwrap(), libc::SIGKILL),
            Fault::QemuKill => signal(vm.qemu_pid().unwrap(), libc::SIGKILL),
        }
        let inc = g
            .watch()
            .next_incident(Duration::from_secs(60), |_| {})
            .await
            .expect("no verdict");
        let (verdict_after, decided) = (inc.at - at, at.elapsed());
        let h = guest::handle_crash(&mut g, &mut store, &inc, &ctx, Policy::default())
            .await
            .unwrap();
        assert!(h.succeeded(), "{name}: recovery failed");
        println!(
            "{name}: verdict {} after {:.2} s, decision after {:.2} s, recovered in {:.1} s \
             (fault to healthy guest {:.1} s)",
            inc.verdict.name(),
            verdict_after.as_secs_f64(),
            decided.as_secs_f64(),
            h.duration.as_secs_f64(),
            at.elapsed().as_secs_f64()
        );
        g.load_module().await.expect("load");
    }
    let s = store.stats(Some(run)).unwrap();
    println!(
        "run {run}: {} crashes, recovery success {:.0}%, mean {:.1} s, p95 {:.1} s; db {}",
        s.crashes,
        s.recovery_success_rate * 100.0,
        s.mean_recovery_ms / 1e3,
        s.p95_recovery_ms / 1e3,
        db.display()
    );
}
