//! The supervisor's eyes: watches one running guest through every signal it gives
//! (serial console, the agent's event stream, QMP state and events, QEMU's exit) and
//! turns them into observations: classified crashes, hung-task notices, counter
//! samples and liveness verdicts. Deciding and acting is `recovery` and `guest`.
//!
//! Crashes are classified from both the console (which survives the agent: panics,
//! hangs) and the kmsg stream (caller ids, no console loglevel filter), and
//! deduplicated per boot by signature, so one bug gives one crash.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use vexfs_proto::{Counters, HungTask, StreamRequest, event};

use crate::classify::{Classifier, CrashReport};
use crate::client::AgentClient;
use crate::incident::Incident;
use crate::transport::Address;
use crate::verdict::{self, Link, Signals, Timeouts, Verdict, VmState};
use crate::vm::Vm;
use crate::vm::console::{PANIC_LINE, Source};

mod state;
mod tasks;

use state::{Shared, State, lock};
use tasks::*;

/// How long a classifier may hold an open report with no new input before the watcher
/// looks at it anyway: after a panic or hang the console goes quiet mid-report.
const IDLE_FLUSH: Duration = Duration::from_millis(400);
/// How often verdicts are re-judged.
const JUDGE_EVERY: Duration = Duration::from_millis(200);
/// Console lines kept for crash excerpts.
const EXCERPT_LINES: usize = 200;
/// After a hang verdict, how long a kernel report may still arrive to explain it (a
/// soft lockup prints ~13 s into the freeze, after the 10 s silence).
const HANG_EXPLAIN_GRACE: Duration = Duration::from_secs(8);
/// After other failure verdicts (panic, QEMU exit), how long a report may still
/// complete (the classifiers flush open reports after IDLE_FLUSH).
const EXPLAIN_GRACE: Duration = Duration::from_millis(2500);
/// How long QMP may take to answer query-status before QEMU counts as frozen; QMP
/// answers from QEMU's main loop, in milliseconds even while the guest is busy.
const QMP_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a crash report was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashSource {
    /// The serial console.
    Console,
    /// The agent's kmsg stream.
    Kmsg,
}

/// Something the watcher saw.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A classified crash, first sighting of its signature in this boot.
    Crash {
        /// The report.
        report: Box<CrashReport>,
        /// Where it was read.
        source: CrashSource,
        /// Boot id of the guest at the time.
        boot_id: String,
        /// When it was seen.
        at: Instant,
    },
    /// A task stuck in D state (agent scan) or the kernel's hung-task notice.
    Hung(HungTask),
    /// A counter sample.
    Counters(Box<Counters>),
    /// Kernel log records lost before the agent could read them.
    Gap {
        /// First lost seq.
        from: u64,
        /// Last lost seq.
        to: u64,
    },
    /// The liveness verdict changed to this one.
    Verdict(Verdict),
}

/// What the agent stream delivered, for integrity checks. The kernel log must arrive
/// whole and in order: each record follows the previous one or a gap the agent
/// reported (records the ring overwrote); anything else is a delivery fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Kmsg records received.
    pub records: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Records the agent reported lost (the sum of its gaps).
    pub lost: u64,
    /// Records or gaps that did not start where the previous one ended: a seq jump
    /// no gap explains, a repeat, or a step back.
    pub out_of_order: u64,
    /// Longest wait for a heartbeat (from the watch start or the previous one).
    pub max_heartbeat_gap: Duration,
}

/// Watch settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Verdict timeouts.
    pub timeouts: Timeouts,
    /// Counter sample period (None: no counters).
    pub counters: Option<Duration>,
    /// Process names whose fd counts the agent samples.
    pub fd_watch: Vec<String>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            counters: Some(Duration::from_secs(1)),
            fd_watch: Vec::new(),
        }
    }
}

/// A running watch over one guest. Dropping it stops its tasks.
#[derive(Debug)]
pub struct Watch {
    state: Shared,
    rx: mpsc::Receiver<Observation>,
    tasks: JoinSet<()>,
    timeouts: Timeouts,
}

impl Watch {
    /// Starts watching `vm`, whose agent answered Health with `boot_id` and `agent_pid`.
    pub fn start(vm: &Vm, boot_id: &str, agent_pid: u32, opts: WatchOptions) -> Watch {
        let (mut watch, tx) = Watch::empty(boot_id, agent_pid, opts.timeouts);
        let state = watch.state.clone();
        watch
            .tasks
            .spawn(console_task(vm, state.clone(), tx.clone()));
        if let Some(addr) = vm.agent_address().cloned() {
            watch
                .tasks
                .spawn(agent_task(addr, state.clone(), tx.clone(), opts.clone()));
        }
        watch.tasks.spawn(qmp_task(vm, state.clone()));
        watch
            .tasks
            .spawn(exit_task(vm.exit_watch(), state.clone(), |s, status| {
                s.qemu_exited = Some(status.code());
            }));
        watch
            .tasks
            .spawn(exit_task(vm.daemon_exit_watch(), state.clone(), |s, _| {
                s.backend_exited = true;
            }));
        watch
            .tasks
            .spawn(qmp_probe_task(vm, state.clone(), opts.timeouts));
        watch.tasks.spawn(judge_task(state, tx, opts.timeouts));
        watch
    }

    /// Starts watching a guest through its agent alone (no console, QMP or QEMU
    /// process: an agent in dev mode, or a guest something else runs). The agent and
    /// the verdicts are watched exactly as by [`Watch::start`]; silence is judged
    /// without a console, so it always reads as a hung guest.
    pub fn start_agent(addr: Address, boot_id: &str, agent_pid: u32, opts: WatchOptions) -> Watch {
        let (mut watch, tx) = Watch::empty(boot_id, agent_pid, opts.timeouts);
        let state = watch.state.clone();
        watch
            .tasks
            .spawn(agent_task(addr, state.clone(), tx.clone(), opts.clone()));
        watch.tasks.spawn(judge_task(state, tx, opts.timeouts));
        watch
    }

    /// A watch with fresh state and no tasks yet, and the sender its tasks report to.
    fn empty(
        boot_id: &str,
        agent_pid: u32,
        timeouts: Timeouts,
    ) -> (Watch, mpsc::Sender<Observation>) {
        let now = Instant::now();
        let state: Shared = Arc::new(Mutex::new(State {
            last_alive: Some(now),
            last_beat: Some(now),
            last_console: None,
            panic_seen: false,
            vm_state: VmState::Running,
            qemu_exited: None,
            boot_id: boot_id.to_string(),
            current_boot_id: boot_id.to_string(),
            link: Link::Up,
            agent_pid,
            agent_restarted: false,
            backend_exited: false,
            last_seq: None,
            next_seq: 0,
            stream: StreamStats::default(),
            stuck_pid: None,
            seen: HashSet::new(),
            excerpt: std::collections::VecDeque::with_capacity(EXCERPT_LINES),
        }));
        let (tx, rx) = mpsc::channel(4096);
        let watch = Watch {
            state,
            rx,
            tasks: JoinSet::new(),
            timeouts,
        };
        (watch, tx)
    }

    /// The next observation (None when every task ended).
    pub async fn recv(&mut self) -> Option<Observation> {
        self.rx.recv().await
    }

    /// The next observation within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Observation> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The signals as of now.
    pub fn signals(&self) -> Signals {
        lock(&self.state).signals(Instant::now())
    }

    /// The verdict as of now.
    pub fn verdict(&self) -> Verdict {
        verdict::judge(&self.signals(), &self.timeouts)
    }

    /// Last kmsg seq the watcher has read.
    pub fn last_seq(&self) -> Option<u64> {
        lock(&self.state).last_seq
    }

    /// How the agent stream delivered so far: records, heartbeats, losses.
    pub fn stream_stats(&self) -> StreamStats {
        lock(&self.state).stream
    }

    /// The last console lines, for crash excerpts.
    pub fn console_excerpt(&self) -> String {
        let s = lock(&self.state);
        s.excerpt
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last task reported stuck in this boot.
    pub fn stuck_pid(&self) -> Option<u32> {
        lock(&self.state).stuck_pid
    }

    /// Waits for the next crash or failure verdict. A failure verdict waits a little
    /// for a kernel report that explains it, so one hang or panic gives one incident
    /// with the kernel's own diagnosis. Other observations are passed to `other`.
    pub async fn next_incident(
        &mut self,
        within: Duration,
        mut other: impl FnMut(Observation),
    ) -> Option<Incident> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await? {
                Observation::Crash {
                    report, source, at, ..
                } => {
                    return Some(Incident::from_report(&report, source, self.verdict(), at));
                }
                Observation::Verdict(mut v) if v.is_failure() => {
                    let at = Instant::now();
                    // A silent agent with a console still printing is most often a
                    // kernel stall in the middle of reporting itself.
                    let grace = if matches!(v, Verdict::GuestHung | Verdict::AgentDead) {
                        HANG_EXPLAIN_GRACE
                    } else {
                        EXPLAIN_GRACE
                    };
                    let until = at + grace;
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        match self.recv_timeout(left).await {
                            Some(Observation::Crash { report, source, .. }) => {
                                return Some(Incident::from_report(&report, source, v, at));
                            }
                            // A sharper verdict may follow the first: silence, then
                            // QMP found not answering (a frozen VMM) or QEMU gone.
                            Some(Observation::Verdict(later)) if later.is_failure() => {
                                v = later;
                            }
                            Some(Observation::Verdict(_)) => {}
                            Some(o) => other(o),
                            None => return Some(Incident::from_verdict(v, at)),
                        }
                    }
                }
                o => other(o),
            }
        }
    }

    /// Accepts the current state as the new normal after a recovery that kept the
    /// guest (an agent restart, a reconnect), so the verdict is judged afresh.
    pub fn acknowledge(&self) {
        let mut s = lock(&self.state);
        s.agent_restarted = false;
        s.link = Link::Up;
        s.stuck_pid = None;
        s.boot_id = s.current_boot_id.clone();
    }

    /// Stops the tasks now.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_accounting_flags_holes_repeats_and_reordering() {
        let (watch, _tx) = Watch::empty("b", 1, Timeouts::default());
        {
            let mut s = lock(&watch.state);
            // The ring overwrote 0..=2 before the first read: a gap, then in order.
            s.gap(0, 2);
            for seq in 3..6 {
                s.record(seq);
            }
            s.gap(6, 7);
            s.record(8);
        }
        let clean = watch.stream_stats();
        assert_eq!((clean.records, clean.lost, clean.out_of_order), (4, 5, 0));
        assert_eq!(lock(&watch.state).next_seq, 9);
        {
            let mut s = lock(&watch.state);
            s.record(10); // 9 vanished without a gap
            s.record(10); // delivered twice
            s.record(7); // backwards
            s.gap(5, 6); // a gap that does not start where delivery stands
        }
        let st = watch.stream_stats();
        assert_eq!(st.out_of_order, 4);
        assert_eq!(st.records, 7);
        assert_eq!(watch.last_seq(), Some(7));
    }

    #[tokio::test]
    async fn records_keep_a_busy_agent_alive_and_silence_is_still_judged() {
        use crate::test_agent::{FakeAgent, serve};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let (agent, feed) = FakeAgent::with_feed();
        serve(&path, agent);
        let opts = WatchOptions {
            timeouts: Timeouts {
                heartbeat: Duration::from_millis(100),
                silence: Duration::from_millis(600),
            },
            counters: None,
            fd_watch: Vec::new(),
        };
        let mut watch = Watch::start_agent(Address::Unix(path), "b1", 1, opts);
        // Records for three times the silence limit, and never a heartbeat: what a
        // heartbeat stuck behind a backlog of records looks like.
        for seq in 0..36 {
            let rec = vexfs_proto::KmsgRecord {
                seq,
                text: format!("line {seq}"),
                ..Default::default()
            };
            let ev = vexfs_proto::Event {
                kind: Some(event::Kind::Kmsg(rec)),
            };
            feed.send(Ok(ev)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut seen = Vec::new();
        while let Some(o) = watch.recv_timeout(Duration::from_millis(1)).await {
            seen.push(o);
        }
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(watch.verdict(), Verdict::Healthy);
        let st = watch.stream_stats();
        assert_eq!((st.records, st.heartbeats, st.out_of_order), (36, 0, 0));
        // The stream stays open but nothing comes: silence, judged as before.
        let v = loop {
            match watch.recv_timeout(Duration::from_secs(5)).await {
                Some(Observation::Verdict(v)) if v.is_failure() => break v,
                Some(_) => {}
                None => panic!("no verdict after the agent fell silent"),
            }
        };
        assert_eq!(v, Verdict::GuestHung);
        drop(feed);
    }

    #[test]
    fn idle_peek_agrees_with_the_whole_log() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guest-image/fixtures/6.12.117+deb12-amd64/null.log"
        );
        let log = std::fs::read_to_string(path).expect("fixture");
        let mut c = LiveClassifier::new();
        let mut seen: Vec<String> = Vec::new();
        for l in log.lines() {
            seen.extend(c.feed(l).into_iter().map(|r| r.signature));
        }
        // The console went quiet: what the peek adds completes the picture.
        seen.extend(c.idle().into_iter().map(|r| r.signature));
        seen.dedup();
        let whole: Vec<String> = crate::classify::classify(log.as_bytes())
            .into_iter()
            .map(|r| r.signature)
            .collect();
        assert!(!whole.is_empty());
        assert_eq!(seen, whole);
    }
}
