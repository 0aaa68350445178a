//! Benchmark (not a test): restarting a guest, cold boot against snapshot restore.
//!
//! Run: `cargo bench -p vexfs-tests --bench restart [-- RUNS]` after
//! `scripts/setup.sh`, under the VM lock (`flock /tmp/vexfs-vm.lock ...`);
//! `VEXFS_BENCH_KERNEL=6.1` picks another image (default: newest 6.12). 512 MiB guest,
//! TCG unless `$VEXFS_ACCEL` says otherwise. Cold boots and restores alternate, so
//! both see the same machine load; each is timed from the call to the agent answering
//! Health (the restore also writes and reads back its restore generation). The
//! snapshot lives in a temporary cache folder and is taken once, before the runs.
//! The last line prints both medians and their ratio.

use std::time::{Duration, Instant};

use vexfs_controller::vm::snapshot;
use vexfs_controller::vm::{AccelChoice, Vm, VmConfig, image, resolve_accel};

const TIMEOUT: Duration = Duration::from_secs(120);

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let wanted = std::env::var("VEXFS_BENCH_KERNEL").ok();
    let m = image::select_image(&image::default_images_dir(), wanted.as_deref())
        .unwrap_or_else(|e| panic!("needs a guest image (scripts/setup.sh): {e}"));
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = VmConfig::from_manifest(&m);
    cfg.memory_mib = 512;
    cfg.cache_dir = Some(cache.path().to_path_buf());
    cfg.accel = match std::env::var("VEXFS_ACCEL").ok().as_deref() {
        Some(a) => a.parse().unwrap_or(AccelChoice::Tcg),
        None => AccelChoice::Tcg,
    };
    let accel = resolve_accel(&cfg).await;
    println!(
        "kernel {}, {} MiB, {}, {runs} runs each",
        m.kernel_release,
        cfg.memory_mib,
        accel.as_str()
    );
    let root = snapshot::store_root(&cfg);
    let t = Instant::now();
    let snap = snapshot::take(&cfg, accel, &root, TIMEOUT)
        .await
        .expect("take snapshot");
    println!(
        "snapshot taken in {:.2} s ({:.1} MB state; boot to saved {:.2} s)",
        secs(t.elapsed()),
        snap.meta.state_bytes as f64 / 1e6,
        snap.meta.build_secs
    );
    let (mut cold, mut restore) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let t = Instant::now();
        let vm = Vm::launch_with(&cfg, accel).await.expect("launch");
        vm.wait_for_agent(TIMEOUT).await.expect("cold boot agent");
        let c = t.elapsed();
        vm.kill();
        let t = Instant::now();
        let r = Vm::restore(&cfg, accel, &snap, TIMEOUT)
            .await
            .expect("restore");
        let d = t.elapsed();
        assert_eq!(r.health.restore_generation, r.generation);
        let p = r.timings;
        r.vm.kill();
        println!(
            "run {run}: cold boot {:.2} s, restore {:.3} s (qemu up {:.3}, state loaded {:.3}, vsock plugged {:.3}, agent healthy {:.3}, generation {:.3})",
            secs(c),
            secs(d),
            secs(p.qemu_up),
            secs(p.loaded),
            secs(p.device),
            secs(p.healthy),
            secs(p.total)
        );
        cold.push(c);
        restore.push(d);
    }
    let (c, r) = (median(&mut cold), median(&mut restore));
    println!(
        "restart {}: cold boot median {:.3} s, restore median {:.3} s, ratio {:.1}x",
        m.kernel_release,
        secs(c),
        secs(r),
        secs(c) / secs(r)
    );
}
