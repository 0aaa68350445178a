//! VM benchmark (harness = false): for each cached guest image, boot-to-healthy time,
//! Health round trip over hybrid vsock, and QEMU / vsock daemon RSS. Prints a
//! Markdown table for BENCHMARKS.md.
//!
//! `cargo bench -p vexfs-controller --bench vm` (VEXFS_BENCH_BOOTS=N boots per
//! kernel, default 3; VEXFS_ACCEL as for vexctl).

use std::time::{Duration, Instant};

use vexfs_controller::vm::image;
use vexfs_controller::vm::{Vm, VmConfig};

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn main() {
    // `cargo test --benches` passes --bench-less flags; run only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("vm bench: run with `cargo bench -p vexfs-controller --bench vm`");
        return;
    }
    let boots: usize = std::env::var("VEXFS_BENCH_BOOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let images =
        image::list_images(&image::default_images_dir()).expect("guest images (scripts/setup.sh)");
    assert!(!images.is_empty(), "no guest images: run scripts/setup.sh");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| kernel | accel | kernel format | boot to healthy (median, min-max of {boots}) | Health RTT median / p99 | QEMU RSS after boot | vsock daemon RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for m in &images {
        rt.block_on(async {
            let cfg = VmConfig::from_manifest(m);
            let mut times = Vec::new();
            let mut rtts = Vec::new();
            let mut qemu_rss = 0;
            let mut daemon_rss = 0;
            let mut accel = "";
            for i in 0..boots {
                let vm = Vm::launch(&cfg).await.expect("launch");
                let (mut client, _) = vm.wait_for_agent(Duration::from_secs(180)).await.expect("agent healthy");
                times.push(vm.started().elapsed());
                accel = vm.accel().as_str();
                if i == 0 {
                    for _ in 0..200 {
                        let t = Instant::now();
                        client.health().await.expect("health");
                        rtts.push(t.elapsed());
                    }
                    // Let the guest settle, then sample resident memory.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    qemu_rss = rss_kib(vm.qemu_pid().unwrap_or(0));
                    daemon_rss = vm.daemon_pid().map(rss_kib).unwrap_or(0);
                }
                vm.shutdown(Duration::from_secs(10)).await;
            }
            times.sort();
            rtts.sort();
            println!(
                "| {} | {accel} | {:?} | {:.2} s ({:.2}-{:.2}) | {:.2} ms / {:.2} ms | {} MiB | {} MiB |",
                m.kernel_release,
                m.kernel_format,
                percentile(&times, 0.5).as_secs_f64(),
                times[0].as_secs_f64(),
                times[times.len() - 1].as_secs_f64(),
                percentile(&rtts, 0.5).as_secs_f64() * 1e3,
                percentile(&rtts, 0.99).as_secs_f64() * 1e3,
                qemu_rss / 1024,
                daemon_rss / 1024,
            );
        });
    }
}
