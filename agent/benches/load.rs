//! Benchmark (not a test): one controller supervising many real agents in dev mode,
//! each agent's kernel log growing at a fixed rate; the scenario of the load test, run
//! longer, with its costs.
//!
//! Run: `cargo bench -p vexfs-agent --bench load`. Defaults: 32 agents, 10,000
//! records/s each, 30 s; `VEXFS_LOAD_AGENTS`, `VEXFS_LOAD_RATE` and `VEXFS_LOAD_SECS`
//! change them. Prints one line per figure; BENCHMARKS.md keeps the numbers.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/load.rs"]
mod load;

use std::time::Duration;

use load::Params;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let params = Params::from_env(Params {
        agents: 32,
        rate: 10_000,
        duration: Duration::from_secs(30),
    });
    let out = load::run(params).await;
    print!("{}", out.report());
}
