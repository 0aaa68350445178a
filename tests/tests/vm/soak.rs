//! Soak: many consecutive crash-and-recover cycles on one guest (oopses, panics and
//! hangs of the vexfs test module), each recovered by the ladder through a snapshot
//! restore. Checks every crash is recorded and every recovery succeeds, the
//! controller's RSS and open fds stay flat (first against last 20 cycles), no QEMU or
//! vsock daemon outlives its VM, and the last guest's vsock daemon still serves.
//!
//! `VEXFS_SOAK_CYCLES` sets the count (default 200); figures go to stderr.

use std::path::Path;
use std::time::{Duration, Instant};

use vexfs_controller::guest::{CrashContext, Guest};
use vexfs_controller::recovery::Outcome;
use vexfs_controller::store::Store;
use vexfs_controller::supervisor::WatchOptions;
use vexfs_controller::vm::process::pids_with_cmdline_containing;

use super::restore::{crash_and_recover, module, snapshot_config};
use super::{manifest, rt, serial};

/// The faults, in turn: two oopses, a panic, a hung task, another panic.
const FAULTS: [&str; 5] = ["null", "panic", "bug", "deadlock", "panic"];
/// Cycles compared at each end for flatness.
const WINDOW: usize = 20;

/// This process's resident set (kB) and open file descriptors.
fn rss_and_fds() -> (u64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    (rss, fds)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn p95(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get((s.len() * 95).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0.0)
}

#[test]
#[ignore = "VM soak (20-40 min): run with --ignored soak"]
fn soak_crash_and_recover_cycles_on_one_guest() {
    let _one = serial();
    let cycles: usize = std::env::var("VEXFS_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let m = manifest(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = snapshot_config(&m, dir.path());
    let runs = dir.path().join("runs").display().to_string();
    rt().block_on(async {
        let t0 = Instant::now();
        let mut g = Guest::boot(cfg, module(&m), WatchOptions::default())
            .await
            .expect("boot");
        assert_eq!(g.load_module().await.unwrap(), Outcome::Succeeded);
        let mut store = Store::open(&dir.path().join("crashes.db")).unwrap();
        let run = store.begin_run("soak", "{}").unwrap();
        let mut samples = Vec::new();
        let mut times: Vec<(&str, f64)> = Vec::new();
        let mut restored = 0;
        for i in 0..cycles {
            let fault = FAULTS[i % FAULTS.len()];
            // One test per cycle: isolation counts crashes per test.
            let name = format!("soak-{i}-{fault}");
            let ctx = CrashContext {
                run_id: Some(run),
                test_id: Some(store.test_id(run, &m.kernel_release, &name).unwrap()),
                test_name: name,
                test_crashes: 1,
            };
            let old_run = g.vm().unwrap().run_dir().display().to_string();
            let (h, attempts) = crash_and_recover(&mut g, &mut store, &ctx, fault).await;
            assert!(
                h.succeeded(),
                "cycle {i} ({fault}): recovery failed: {attempts:?}"
            );
            assert!(h.intact, "cycle {i}: crash row not intact");
            restored += usize::from(g.started_from.restored());
            // Nothing of the crashed VM is left; only the current VM runs.
            let live = g.vm().unwrap().run_dir().display().to_string();
            if old_run != live {
                let left = pids_with_cmdline_containing(&old_run);
                assert!(left.is_empty(), "cycle {i}: orphans of {old_run}: {left:?}");
            }
            let all = pids_with_cmdline_containing(&runs);
            let ours = pids_with_cmdline_containing(&live);
            assert_eq!(all.len(), ours.len(), "cycle {i}: processes of other VMs: {all:?}");
            samples.push(rss_and_fds());
            times.push((fault, h.duration.as_secs_f64()));
            eprintln!(
                "cycle {i} {fault}: {:?} {:?} in {:.2} s ({}), rss {} kB, fds {}",
                h.level,
                h.fate,
                h.duration.as_secs_f64(),
                g.started_from.describe(),
                samples[i].0,
                samples[i].1
            );
        }
        let stats = store.stats(Some(run)).unwrap();
        assert_eq!(stats.crashes, cycles as i64, "every crash recorded");
        assert_eq!(
            (stats.recoveries, stats.recovered),
            (cycles as i64, cycles as i64)
        );
        // The last guest's vsock daemon still serves: the agent answers through it.
        let vm = g.vm().unwrap();
        let (daemon, live) = (vm.daemon_pid(), vm.run_dir().display().to_string());
        assert!(
            daemon.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()),
            "vsock daemon {daemon:?} gone"
        );
        let mut client = g.client().with_call_timeout(Duration::from_secs(10));
        let h = client.health().await.expect("agent answers at the end");
        assert_eq!(h.restore_generation, g.health.restore_generation);
        assert_eq!(g.smoke_test().await, Outcome::Succeeded);
        let n = samples.len().min(WINDOW);
        let first = &samples[..n];
        let last = &samples[samples.len() - n..];
        let avg = |s: &[(u64, usize)], f: fn(&(u64, usize)) -> f64| {
            s.iter().map(f).sum::<f64>() / s.len() as f64
        };
        let (rss0, rss1) = (avg(first, |s| s.0 as f64), avg(last, |s| s.0 as f64));
        let (fd0, fd1) = (avg(first, |s| s.1 as f64), avg(last, |s| s.1 as f64));
        for fault in ["null", "bug", "panic", "deadlock"] {
            let t: Vec<f64> = times
                .iter()
                .filter(|(f, _)| *f == fault)
                .map(|(_, d)| *d)
                .collect();
            eprintln!(
                "soak {fault}: {} recoveries, mean {:.2} s, p95 {:.2} s",
                t.len(),
                mean(&t),
                p95(&t)
            );
        }
        let all: Vec<f64> = times.iter().map(|(_, d)| *d).collect();
        eprintln!(
            "soak: {cycles} cycles in {:.0} s, {} crashes recorded, {} recovered, {restored} restored from the snapshot; recovery mean {:.2} s, p95 {:.2} s; rss first/last {WINDOW} {rss0:.0}/{rss1:.0} kB ({:+.1}%), fds {fd0:.1}/{fd1:.1} ({:+.1}%); daemon {daemon:?} serving",
            t0.elapsed().as_secs_f64(),
            stats.crashes,
            stats.recovered,
            mean(&all),
            p95(&all),
            (rss1 / rss0 - 1.0) * 100.0,
            (fd1 / fd0 - 1.0) * 100.0,
        );
        assert!(
            restored * 2 > cycles,
            "most recoveries should restore: {restored}/{cycles}"
        );
        assert!((rss1 - rss0).abs() <= rss0 * 0.10, "RSS {rss0} -> {rss1} kB");
        assert!((fd1 - fd0).abs() <= fd0 * 0.10, "fds {fd0} -> {fd1}");
        drop(g);
        super::assert_no_orphans(&live);
        super::assert_no_orphans(&runs);
    });
}
