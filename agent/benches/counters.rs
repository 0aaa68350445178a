//! Benchmark (not a test): CPU cost of one counter sample and of one D-state scan over
//! this machine's real /proc (read only), the agent's steady work besides streaming
//! (one sample per stream per second, one scan every 1.5 s).
//!
//! Run: `cargo bench -p vexfs-agent --bench counters` (add `-- ROUNDS`, default 2000).

use std::path::Path;
use std::time::Duration;

use vexfs_agent::{counters, hung};

/// CPU time of this process (all threads) so far.
fn cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

fn main() {
    let rounds: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let proc = Path::new("/proc");
    let tasks = hung::scan(proc).len();
    let first = counters::sample(proc, &[], &[], 0);
    let before = cpu();
    for _ in 0..rounds {
        std::hint::black_box(counters::sample(proc, &[], &[], 0));
    }
    let sample = (cpu() - before) / rounds;
    let before = cpu();
    for _ in 0..rounds {
        std::hint::black_box(hung::scan(proc));
    }
    let scan = (cpu() - before) / rounds;
    println!(
        "counter sample over /proc ({tasks} tasks, {} meminfo fields, {} slab caches, unreadable {:?}): {:.1} us CPU",
        first.meminfo_kb.len(),
        first.slabs.len(),
        first.unreadable,
        sample.as_secs_f64() * 1e6
    );
    println!(
        "D-state scan alone: {:.1} us CPU ({rounds} rounds each)",
        scan.as_secs_f64() * 1e6
    );
}
