//! Throughput of the crash classifier, side by side with `grep -c -F -f` over the
//! same file and the same crash header strings.
//!
//! Two logs: a large clean one (hours of ordinary console output, the common case)
//! and a crash-dense one (the real guest logs repeated). Our scanner streams the file
//! in 1 MiB chunks through `Classifier::feed`, as the controller does on live
//! streams; grep reads the same file. Best of 3 runs each, MB/s = 10^6 bytes/s.
//!
//! Run: `cargo bench -p vexfs-controller --bench classify` (`CLASSIFY_BENCH_MB` sets
//! the clean log size, default 256).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vexfs_controller::classify::{self, Classifier};

const NOISE: &[&str] = &[
    "audit: type=1400 audit(1700000000.123:42): avc:  denied  { read } for  pid=1234 comm=\"syz-executor\" name=\"vexfs\" dev=\"sda1\" ino=1234",
    "vexfs: mounted filesystem with ordered data mode. Opts: (null)",
    "EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro",
    "random: crng init done",
    "virtio_net virtio0 eth0: renamed from eth1",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "vexfs: loop0: writing 4096 bytes at offset 1048576 (inode 17)",
    "systemd[1]: Started Journal Service.",
    "FEAS: trigger none uptime=12.34",
    "device lo entered promiscuous mode",
    "sd 0:0:0:0: [sda] 2097152 512-byte logical blocks: (1.07 GB/1.00 GiB)",
    "vexfs: vexfs_write: ino 42 pos 8192 len 512 flags 0x8000",
];

fn main() {
    let mb: usize = std::env::var("CLASSIFY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = std::env::temp_dir().join(format!("vexfs-classify-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let patterns = dir.join("headers.txt");
    std::fs::write(&patterns, classify::crash_headers().join("\n") + "\n").expect("patterns");

    let clean = dir.join("clean.log");
    write_clean(&clean, mb << 20);
    let dense = dir.join("dense.log");
    write_dense(&dense, 32 << 20);

    println!("classifier throughput vs `grep -c -F -f headers` (best of 3, MB = 10^6 bytes)");
    for (name, path) in [("clean", &clean), ("crash-dense", &dense)] {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64;
        let (ours, crashes) = best_of(3, || scan(path));
        let (grep, hits) = best_of(3, || grep_count(&patterns, path));
        println!(
            "{name:>12}: {:>7.1} MB  classifier {:>8.1} MB/s ({crashes} crashes)  grep {:>8.1} MB/s ({hits} matching lines)  ratio {:.2}x",
            size / 1e6,
            size / 1e6 / ours.as_secs_f64(),
            size / 1e6 / grep.as_secs_f64(),
            grep.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("at least one run"))
}

fn scan(path: &Path) -> usize {
    let mut f = std::fs::File::open(path).expect("open log");
    let mut buf = vec![0u8; 1 << 20];
    let mut c = Classifier::new();
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).expect("read log");
        if k == 0 {
            break;
        }
        n += c.feed(&buf[..k]).len();
    }
    n + c.finish().len()
}

fn grep_count(patterns: &Path, path: &Path) -> String {
    let out = Command::new("grep")
        .arg("-c")
        .arg("-F")
        .arg("-f")
        .arg(patterns)
        .arg(path)
        .output()
        .expect("run grep");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Ordinary console output with kernel timestamps and caller ids, no crash.
fn write_clean(path: &PathBuf, size: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let (mut written, mut i, mut rng) = (0usize, 0u64, 0x9e37_79b9_7f4a_7c15u64);
    while written < size {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let msg = NOISE[(rng % NOISE.len() as u64) as usize];
        let line = format!(
            "[{:>5}.{:06}][ T{}] {msg}\n",
            i / 1000,
            (i * 997) % 1_000_000,
            rng % 4000
        );
        w.write_all(line.as_bytes()).expect("write");
        written += line.len();
        i += 1;
    }
}

/// The project's real guest logs (most with a crash) repeated.
fn write_dense(path: &PathBuf, size: usize) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guest-logs");
    let mut logs: Vec<Vec<u8>> = std::fs::read_dir(&fixtures)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if logs.is_empty() {
        logs.push(b"[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n[    1.000001] RIP: 0010:vexfs_mount+0x1/0x2 [vexfs]\n[    1.000002] Call Trace:\n[    1.000003]  mount_fs+0x1/0x2\n".to_vec());
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut written = 0;
    'outer: loop {
        for l in &logs {
            w.write_all(l).expect("write");
            written += l.len();
            if written >= size {
                break 'outer;
            }
        }
    }
}
