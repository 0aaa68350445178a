//! The load scenario of the load test and the load benchmark: many real agents in dev
//! mode, each fed kernel log records at a fixed rate, and one controller (this process)
//! supervising all of them through the controller library's own watch path
//! ([`Watch::start_agent`]: the agent stream, heartbeats and verdicts a guest gets).
#![allow(dead_code, missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vexfs_controller::client::AgentClient;
use vexfs_controller::supervisor::{Observation, StreamStats, Watch, WatchOptions};
use vexfs_controller::transport::Address;
use vexfs_controller::verdict::{Timeouts, Verdict};

use crate::common::{AgentProcess, Fixture, cpu_time, status_field};

/// How often the writer appends a batch to every agent's log.
const TICK: Duration = Duration::from_millis(10);
/// How far ahead of the schedule the writer writes: a writer preempted for less than
/// this (2 cores shared with every agent) still keeps the rate.
const LEAD: Duration = Duration::from_millis(50);
/// How long the controller may take, after the writers stop, to have every record.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The scenario's size.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Agent processes.
    pub agents: usize,
    /// Records per second written to each agent's log.
    pub rate: u64,
    /// How long the writers write.
    pub duration: Duration,
}

impl Params {
    /// `VEXFS_LOAD_AGENTS`, `VEXFS_LOAD_RATE` and `VEXFS_LOAD_SECS`, else the defaults.
    pub fn from_env(default: Params) -> Params {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Params {
            agents: var("VEXFS_LOAD_AGENTS").map_or(default.agents, |n| n as usize),
            rate: var("VEXFS_LOAD_RATE").unwrap_or(default.rate),
            duration: var("VEXFS_LOAD_SECS").map_or(default.duration, Duration::from_secs),
        }
    }

    /// Records each agent gets over the run.
    pub fn records(&self) -> u64 {
        self.rate * self.duration.as_millis() as u64 / 1000
    }
}

/// What one agent's supervision saw.
#[derive(Debug)]
pub struct AgentResult {
    /// Records written to its log.
    pub written: u64,
    /// The watch's delivery accounting.
    pub stats: StreamStats,
    /// Last kmsg seq the watch read.
    pub last_seq: Option<u64>,
    /// Every verdict change the watch reported.
    pub verdicts: Vec<Verdict>,
    /// The verdict at the end.
    pub final_verdict: Verdict,
    /// Most records written but not yet received at any moment.
    pub max_backlog: u64,
    /// When its last record arrived, from the start of writing (None: never).
    pub done_after: Option<Duration>,
    /// CPU time (user + system) of the agent process over the run.
    pub cpu: Duration,
    /// Peak resident set of the agent process, KiB.
    pub hwm_kib: u64,
}

/// The whole run.
#[derive(Debug)]
pub struct Outcome {
    /// The parameters.
    pub params: Params,
    /// Per agent, in start order.
    pub agents: Vec<AgentResult>,
    /// Time from the first write to the end of the last one.
    pub write_elapsed: Duration,
    /// Time from the first write until every record was received.
    pub wall: Duration,
    /// CPU time of this process over `wall`, less the writer thread's: the controller's.
    pub controller_cpu: Duration,
    /// CPU time of the writer thread.
    pub writer_cpu: Duration,
    /// Peak resident set of this process, KiB.
    pub controller_hwm_kib: u64,
}

impl Outcome {
    /// Slowest writer's rate, records per second.
    pub fn min_write_rate(&self) -> f64 {
        let least = self.agents.iter().map(|a| a.written).min().unwrap_or(0);
        least as f64 / self.write_elapsed.as_secs_f64()
    }

    /// Records received per second, all agents together, over the whole run.
    pub fn received_rate(&self) -> f64 {
        let all: u64 = self.agents.iter().map(|a| a.stats.records).sum();
        all as f64 / self.wall.as_secs_f64()
    }

    /// The figures, one line each.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let mut text = String::new();
        let a = &self.agents;
        let written: u64 = a.iter().map(|a| a.written).sum();
        let received: u64 = a.iter().map(|a| a.stats.records).sum();
        let lost: u64 = a
            .iter()
            .map(|a| a.written.saturating_sub(a.stats.records))
            .sum();
        let reported_lost: u64 = a.iter().map(|a| a.stats.lost).sum();
        let out_of_order: u64 = a.iter().map(|a| a.stats.out_of_order).sum();
        let false_failures: usize = a
            .iter()
            .map(|a| a.verdicts.iter().filter(|v| v.is_failure()).count())
            .sum();
        let late: usize = a
            .iter()
            .map(|a| a.verdicts.iter().filter(|v| v.name() == "late").count())
            .sum();
        let hb_wait = a
            .iter()
            .map(|a| a.stats.max_heartbeat_gap)
            .max()
            .unwrap_or_default();
        let cpu = spread(a.iter().map(|a| pct(a.cpu, self.wall)));
        let hwm = spread(a.iter().map(|a| a.hwm_kib as f64));
        let backlog = a.iter().map(|a| a.max_backlog).max().unwrap_or(0);
        let last = a.iter().filter_map(|a| a.done_after).max();

        let _ = writeln!(
            text,
            "load: {} agents x {} records/s for {:?} ({} build, 2 tokio workers in the controller)",
            self.params.agents,
            self.params.rate,
            self.params.duration,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        let _ = writeln!(
            text,
            "offered: {written} records, slowest writer {:.0} records/s over {:.2} s (writer thread {:.0}% of a core)",
            self.min_write_rate(),
            self.write_elapsed.as_secs_f64(),
            pct(self.writer_cpu, self.wall)
        );
        let _ = writeln!(
            text,
            "received by the controller: {received} records, {:.0} records/s total; last record in after {:.2} s (run {:.2} s); worst backlog {backlog} records ({:.2} s of one agent's log)",
            self.received_rate(),
            last.map_or(f64::NAN, |d| d.as_secs_f64()),
            self.write_elapsed.as_secs_f64(),
            backlog as f64 / self.params.rate as f64
        );
        let _ = writeln!(
            text,
            "records lost: {lost} (agent-reported gaps {reported_lost}, out of order {out_of_order})"
        );
        let _ = writeln!(
            text,
            "verdicts: {false_failures} false failure (silent/dead), {late} late; longest heartbeat wait {:.2} s (silence limit 10 s)",
            hb_wait.as_secs_f64()
        );
        let _ = writeln!(
            text,
            "controller: CPU {:.0}% of a core (user+sys, writer excluded), peak RSS (VmHWM) {} KiB",
            self.controller_cpu_pct(),
            self.controller_hwm_kib
        );
        let _ = writeln!(
            text,
            "per agent: CPU {:.1}% / {:.1}% / {:.1}% of a core (min/mean/max), peak RSS {:.0} / {:.0} / {:.0} KiB",
            cpu.0, cpu.1, cpu.2, hwm.0, hwm.1, hwm.2
        );
        text
    }

    /// Controller CPU as a percentage of one core.
    pub fn controller_cpu_pct(&self) -> f64 {
        pct(self.controller_cpu, self.wall)
    }
}

/// Min, mean and max of some figures.
fn spread(v: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let v: Vec<f64> = v.collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, v.iter().sum::<f64>() / v.len().max(1) as f64, max)
}

/// `cpu` as a percentage of one core over `wall`.
pub fn pct(cpu: Duration, wall: Duration) -> f64 {
    100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
}

/// A kernel-like record line in /dev/kmsg format.
fn record(out: &mut Vec<u8>, agent: usize, seq: u64) {
    writeln!(
        out,
        "6,{seq},{},-,caller=T{};vexfs: vexfs_write: agent {agent} ino {} off {} len 4096 ok",
        seq * 100,
        100 + seq % 97,
        seq % 1000,
        seq * 4096
    )
    .expect("write to a Vec");
}

/// Appends records to every agent's log on a schedule of `rate` per second each, one
/// batch per tick, until `per_agent` records each. Returns when it started, the time
/// it took and its own CPU time.
fn write_logs(
    logs: Vec<std::path::PathBuf>,
    rate: u64,
    per_agent: u64,
    written: Arc<Vec<AtomicU64>>,
) -> (Instant, Duration, Duration) {
    let mut files: Vec<_> = logs
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .expect("open kmsg file")
        })
        .collect();
    let mut buf = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    let mut next = start;
    loop {
        // The schedule runs LEAD ahead, so a writer that keeps up finishes early and
        // never below the rate.
        let due = (start.elapsed() + LEAD).as_micros() as u64 * rate / 1_000_000;
        let due = due.min(per_agent);
        for (i, f) in files.iter_mut().enumerate() {
            let from = written[i].load(Ordering::Relaxed);
            buf.clear();
            for seq in from..due {
                record(&mut buf, i, seq);
            }
            f.write_all(&buf).expect("append to kmsg file");
            written[i].store(due, Ordering::Relaxed);
        }
        if due == per_agent {
            break;
        }
        next += TICK;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let elapsed = start.elapsed();
    let cpu = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default();
    (start, elapsed, cpu)
}

/// What a watch's drain task hands back.
struct Drained {
    watch: Watch,
    verdicts: Vec<Verdict>,
    max_backlog: u64,
    done_at: Option<Instant>,
}

/// Reads a watch's observations (as the runner does while a test runs) until the
/// watch has every record the writer wrote, or `stop`.
async fn drain(
    mut watch: Watch,
    agent: usize,
    written: Arc<Vec<AtomicU64>>,
    writing_done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Drained {
    let mut verdicts = Vec::new();
    let mut max_backlog = 0;
    loop {
        if let Some(Observation::Verdict(v)) = watch.recv_timeout(Duration::from_millis(50)).await {
            verdicts.push(v);
        }
        // Read the writer's count first: the watch cannot have more than was written.
        let done = writing_done.load(Ordering::Acquire);
        let w = written[agent].load(Ordering::Relaxed);
        let got = watch.stream_stats().records;
        max_backlog = max_backlog.max(w.saturating_sub(got));
        if done && got >= w {
            return Drained {
                watch,
                verdicts,
                max_backlog,
                done_at: Some(Instant::now()),
            };
        }
        if stop.load(Ordering::Relaxed) {
            return Drained {
                watch,
                verdicts,
                max_backlog,
                done_at: None,
            };
        }
    }
}

/// The watch settings of a real run (`vexctl run` with the default plan).
pub fn run_watch_options() -> WatchOptions {
    WatchOptions {
        timeouts: Timeouts {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(10),
        },
        counters: None,
        fd_watch: Vec::new(),
    }
}

/// Runs the scenario. Panics on set-up failures; the caller judges the outcome.
pub async fn run(params: Params) -> Outcome {
    let fixtures: Vec<Fixture> = (0..params.agents).map(|_| Fixture::new()).collect();
    let agents: Vec<AgentProcess> = fixtures.iter().map(|fx| fx.spawn(&[])).collect();
    let written: Arc<Vec<AtomicU64>> =
        Arc::new((0..params.agents).map(|_| AtomicU64::new(0)).collect());
    let writing_done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    let mut watches = Vec::new();
    for agent in &agents {
        let addr = Address::Unix(agent.socket.clone());
        let (_, health) = AgentClient::connect_healthy(&addr, Duration::from_secs(30))
            .await
            .expect("agent healthy");
        assert_eq!(health.agent_pid, agent.pid());
        watches.push(Watch::start_agent(
            addr,
            &health.boot_id,
            health.agent_pid,
            run_watch_options(),
        ));
    }
    // Every stream is open once its first heartbeat came.
    let deadline = Instant::now() + Duration::from_secs(30);
    while watches.iter().any(|w| w.stream_stats().heartbeats == 0) {
        assert!(Instant::now() < deadline, "agent streams never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pids: Vec<String> = agents.iter().map(|a| a.pid().to_string()).collect();
    let agent_cpu0: Vec<Duration> = pids.iter().map(cpu_time).collect();
    let self_cpu0 = cpu_time("self");

    let drains: Vec<_> = watches
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            tokio::spawn(drain(
                w,
                i,
                written.clone(),
                writing_done.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let logs = fixtures.iter().map(Fixture::kmsg).collect();
    let per_agent = params.records();
    let (rate, w) = (params.rate, written.clone());
    let writer = std::thread::spawn(move || write_logs(logs, rate, per_agent, w));
    let (start, write_elapsed, writer_cpu) =
        tokio::task::spawn_blocking(move || writer.join().expect("writer thread"))
            .await
            .expect("join writer");
    writing_done.store(true, Ordering::Release);

    // Wait for every drain task; past the limit, stop them and report what came.
    let limit = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(DRAIN_LIMIT).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    let mut drained = Vec::new();
    for d in drains {
        drained.push(d.await.expect("drain task"));
    }
    limit.abort();
    let end = drained
        .iter()
        .filter_map(|d| d.done_at)
        .max()
        .unwrap_or_else(Instant::now);
    let wall = end.saturating_duration_since(start);
    let self_cpu = cpu_time("self").saturating_sub(self_cpu0);

    let results = drained
        .into_iter()
        .enumerate()
        .map(|(i, d)| AgentResult {
            written: written[i].load(Ordering::Relaxed),
            stats: d.watch.stream_stats(),
            last_seq: d.watch.last_seq(),
            verdicts: d.verdicts,
            final_verdict: d.watch.verdict(),
            max_backlog: d.max_backlog,
            done_after: d.done_at.map(|t| t.saturating_duration_since(start)),
            cpu: cpu_time(&pids[i]).saturating_sub(agent_cpu0[i]),
            hwm_kib: status_field(&pids[i], "VmHWM:"),
        })
        .collect();
    Outcome {
        params,
        agents: results,
        write_elapsed,
        wall,
        controller_cpu: self_cpu.saturating_sub(writer_cpu),
        writer_cpu,
        controller_hwm_kib: status_field("self", "VmHWM:"),
    }
}
