//! Guest state before a forced reset: sysrq `w` (blocked tasks with their stacks), `l`
//! (backtraces of all CPUs) and `m` (memory), read back from the serial console.
//!
//! While the agent answers, a key goes through its Sysrq RPC (`/proc/sysrq-trigger`,
//! allowed whatever `kernel.sysrq` says) and the agent then writes a marker line to
//! `/dev/kmsg`: the console prints in order, so the marker ends the part exactly. When
//! the agent does not answer, the key goes through the QMP keyboard (needs
//! `sysrq_always_enabled` on Debian kernels) and a part ends after a quiet spell. Every
//! part is bounded in lines, bytes and time, and timed.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::client::AgentClient;
use crate::vm::Vm;
use crate::vm::console::ConsoleLine;

/// The sysrq dumps collected, in order.
pub const KEYS: [Key; 3] = [Key::BlockedTasks, Key::Backtraces, Key::Memory];

/// What the kernel prints when a sysrq key is refused on the keyboard path.
const DISABLED: &str = "sysrq: This sysrq operation is disabled";

/// One sysrq dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// `w`: tasks in uninterruptible (D) state, with their kernel stacks.
    BlockedTasks,
    /// `l`: a backtrace of every active CPU (NMI).
    Backtraces,
    /// `m`: memory usage.
    Memory,
}

impl Key {
    /// The sysrq letter.
    pub fn letter(self) -> char {
        match self {
            Key::BlockedTasks => 'w',
            Key::Backtraces => 'l',
            Key::Memory => 'm',
        }
    }

    /// The header line the kernel prints first (`sysrq: <header>`).
    pub fn header(self) -> &'static str {
        match self {
            Key::BlockedTasks => "sysrq: Show Blocked State",
            Key::Backtraces => "sysrq: Show backtrace of all active CPUs",
            Key::Memory => "sysrq: Show Memory",
        }
    }

    /// Short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Key::BlockedTasks => "blocked tasks",
            Key::Backtraces => "all-CPU backtraces",
            Key::Memory => "memory",
        }
    }
}

/// How a key reached the guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The agent's Sysrq RPC (`/proc/sysrq-trigger`).
    Agent,
    /// QMP `send-key` alt+sysrq+key.
    Keyboard,
}

/// Why a part stopped collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The agent's marker line arrived: the dump is complete.
    Marker,
    /// No new line for [`Limits::quiet`] after the dump started.
    Quiet,
    /// [`Limits::part_time`] ran out.
    TimeLimit,
    /// [`Limits::max_lines`] or [`Limits::max_bytes`] reached: the rest is dropped.
    SizeLimit,
    /// The kernel refused the key (`sysrq: This sysrq operation is disabled.`).
    Disabled,
    /// The key was sent but the kernel printed no header.
    NoOutput,
    /// Neither the agent nor the keyboard took the key.
    TriggerFailed,
    /// The console closed (QEMU exited).
    ConsoleClosed,
}

/// Bounds of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time one part may take, trigger included.
    pub part_time: Duration,
    /// Longest time the whole collection may take.
    pub total_time: Duration,
    /// Quiet spell that ends a part without a marker (keyboard path).
    pub quiet: Duration,
    /// Most lines kept per part.
    pub max_lines: usize,
    /// Most bytes kept per part.
    pub max_bytes: usize,
    /// Timeout of each agent call.
    pub agent_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            part_time: Duration::from_secs(4),
            total_time: Duration::from_secs(10),
            quiet: Duration::from_millis(400),
            max_lines: 2000,
            max_bytes: 256 * 1024,
            agent_timeout: Duration::from_secs(2),
        }
    }
}

/// One collected dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// Which dump.
    pub key: Key,
    /// How the key was sent.
    pub via: Via,
    /// Trigger to end of collection.
    pub duration: Duration,
    /// Why collection stopped.
    pub end: End,
    /// Console lines, header first.
    pub lines: Vec<String>,
    /// Lines seen after a size limit (or lost to a lagging subscriber), not kept.
    pub dropped: usize,
    /// Why the agent path was abandoned, or why the trigger failed.
    pub error: Option<String>,
}

/// Everything collected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forensics {
    /// The dumps, in [`KEYS`] order.
    pub parts: Vec<Part>,
    /// Total time.
    pub duration: Duration,
}

impl Forensics {
    /// Text for the crash database and reports: a header per part with its cost.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            out.push_str(&format!(
                "--- sysrq {}: {} (via {}, {:.2} s, {} lines, {}{}) ---\n",
                p.key.letter(),
                p.key.describe(),
                match p.via {
                    Via::Agent => "agent",
                    Via::Keyboard => "QMP keyboard",
                },
                p.duration.as_secs_f64(),
                p.lines.len(),
                end_name(p.end),
                if p.dropped > 0 {
                    format!(", {} lines dropped", p.dropped)
                } else {
                    String::new()
                }
            ));
            if let Some(e) = &p.error {
                out.push_str(&format!("({e})\n"));
            }
            for l in &p.lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "--- forensics: {} parts in {:.2} s ---\n",
            self.parts.len(),
            self.duration.as_secs_f64()
        ));
        out
    }
}

fn end_name(e: End) -> &'static str {
    match e {
        End::Marker => "complete",
        End::Quiet => "ended by quiet",
        End::TimeLimit => "time limit",
        End::SizeLimit => "size limit",
        End::Disabled => "refused by the kernel",
        End::NoOutput => "no output",
        End::TriggerFailed => "not sent",
        End::ConsoleClosed => "console closed",
    }
}

/// The marker line the agent writes to /dev/kmsg after key `key`.
pub fn marker(key: Key) -> String {
    format!("vexfs-forensics: end of sysrq {}", key.letter())
}

/// Decides, line by line, what belongs to one part (pure: the async loop only feeds it).
#[derive(Debug)]
pub struct Collector {
    key: Key,
    marker: Option<String>,
    limits: Limits,
    started: bool,
    bytes: usize,
    /// Lines kept.
    pub lines: Vec<String>,
    /// Lines seen but not kept.
    pub dropped: usize,
}

impl Collector {
    /// A collector for `key`; `marker` is the line that ends it (agent path).
    pub fn new(key: Key, marker: Option<String>, limits: Limits) -> Self {
        Self {
            key,
            marker,
            limits,
            started: false,
            bytes: 0,
            lines: Vec::new(),
            dropped: 0,
        }
    }

    /// The dump's header has been seen.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Takes one console line; `Some` when the part is over.
    pub fn push(&mut self, text: &str) -> Option<End> {
        if self.marker.as_deref().is_some_and(|m| text.contains(m)) {
            return Some(if self.started {
                End::Marker
            } else {
                End::NoOutput
            });
        }
        if !self.started {
            if text.contains(DISABLED) {
                self.lines.push(text.to_string());
                return Some(End::Disabled);
            }
            // Output of something else (a hung-task report, the workload) before ours.
            if !text.contains(self.key.header()) {
                return None;
            }
            self.started = true;
        }
        if self.lines.len() >= self.limits.max_lines
            || self.bytes + text.len() > self.limits.max_bytes
        {
            self.dropped += 1;
            // With a marker coming, keep reading (and counting) until it does.
            return self.marker.is_none().then_some(End::SizeLimit);
        }
        self.bytes += text.len() + 1;
        self.lines.push(text.to_string());
        None
    }
}

/// The guest as forensics sees it: the console and the two ways of sending a key.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// Console lines from now on.
    fn subscribe(&self) -> broadcast::Receiver<ConsoleLine>;
    /// Sends the key through the agent.
    async fn agent_sysrq(&mut self, key: char) -> Result<(), String>;
    /// Has the agent write `line` to /dev/kmsg.
    async fn agent_mark(&mut self, line: &str) -> Result<(), String>;
    /// Sends the key through the QMP keyboard.
    async fn keyboard_sysrq(&mut self, key: char) -> Result<(), String>;
}

/// A running VM and, when it may still answer, its agent.
#[derive(Debug)]
pub struct VmTarget<'a> {
    vm: &'a Vm,
    client: Option<AgentClient>,
    limits: Limits,
}

impl<'a> VmTarget<'a> {
    /// Forensics on `vm`, trying `client` first when given.
    pub fn new(vm: &'a Vm, client: Option<AgentClient>, limits: Limits) -> Self {
        let client = client.map(|c| c.with_call_timeout(limits.agent_timeout));
        Self { vm, client, limits }
    }
}

impl Target for VmTarget<'_> {
    fn subscribe(&self) -> broadcast::Receiver<ConsoleLine> {
        self.vm.console().subscribe()
    }

    async fn agent_sysrq(&mut self, key: char) -> Result<(), String> {
        let c = self.client.as_mut().ok_or("no agent connection")?;
        c.sysrq(&key.to_string()).await.map_err(|e| e.to_string())
    }

    async fn agent_mark(&mut self, line: &str) -> Result<(), String> {
        let c = self.client.as_mut().ok_or("no agent connection")?;
        let req = vexfs_proto::ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo '{line}' > /dev/kmsg"),
            ],
            timeout_ms: u64::try_from(self.limits.agent_timeout.as_millis()).unwrap_or(2000),
            ..Default::default()
        };
        match c.exec(req).await {
            Ok(r) if r.exit_code == 0 => Ok(()),
            Ok(r) => Err(format!(
                "marker exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn keyboard_sysrq(&mut self, key: char) -> Result<(), String> {
        self.vm
            .qmp()
            .sysrq(&key.to_string())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Collects [`KEYS`] from `target`: through the agent until it fails once, then the
/// keyboard, each part bounded by `limits`.
pub async fn collect<T: Target>(target: &mut T, agent_first: bool, limits: Limits) -> Forensics {
    let started = Instant::now();
    let mut agent = agent_first;
    let mut agent_error: Option<String> = None;
    let mut parts = Vec::new();
    for key in KEYS {
        let left = limits.total_time.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let part_limits = Limits {
            part_time: limits.part_time.min(left),
            ..limits
        };
        let mut part = collect_part(target, key, agent, part_limits).await;
        if part.via == Via::Agent && part.error.is_some() {
            // The agent failed (dead, hung, or the marker did not come): the
            // keyboard still reaches a live kernel.
            agent = false;
            agent_error = part.error.clone();
            if part.end == End::TriggerFailed {
                let again = Limits {
                    part_time: part_limits.part_time.saturating_sub(part.duration),
                    ..part_limits
                };
                let mut kb = collect_part(target, key, false, again).await;
                kb.duration += part.duration;
                kb.error = Some(format!("agent: {}", agent_error.as_deref().unwrap_or("")));
                part = kb;
            }
        } else if part.via == Via::Keyboard && agent_error.is_some() && part.error.is_none() {
            part.error = Some(format!(
                "agent: {}",
                agent_error.as_deref().unwrap_or_default()
            ));
        }
        parts.push(part);
    }
    Forensics {
        parts,
        duration: started.elapsed(),
    }
}

async fn collect_part<T: Target>(target: &mut T, key: Key, agent: bool, limits: Limits) -> Part {
    let t0 = Instant::now();
    let deadline = t0 + limits.part_time;
    // Subscribe before sending so no line falls in between.
    let mut rx = target.subscribe();
    let via = if agent { Via::Agent } else { Via::Keyboard };
    let sent = if agent {
        target.agent_sysrq(key.letter()).await
    } else {
        target.keyboard_sysrq(key.letter()).await
    };
    let mut error = None;
    let mut mark = None;
    match sent {
        Err(e) => {
            return Part {
                key,
                via,
                duration: t0.elapsed(),
                end: End::TriggerFailed,
                lines: Vec::new(),
                dropped: 0,
                error: Some(e),
            };
        }
        Ok(()) if agent => {
            let m = marker(key);
            match target.agent_mark(&m).await {
                Ok(()) => mark = Some(m),
                Err(e) => error = Some(e),
            }
        }
        Ok(()) => {}
    }
    let quiet_ends = mark.is_none();
    let mut c = Collector::new(key, mark, limits);
    let end = loop {
        let now = Instant::now();
        if now >= deadline {
            break End::TimeLimit;
        }
        let mut wait = deadline - now;
        if quiet_ends && c.started() {
            wait = wait.min(limits.quiet);
        }
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Ok(line)) => {
                if let Some(end) = c.push(&line.text) {
                    break end;
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                c.dropped += usize::try_from(n).unwrap_or(usize::MAX);
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => break End::ConsoleClosed,
            Err(_) if Instant::now() >= deadline => break End::TimeLimit,
            Err(_) => break End::Quiet,
        }
    };
    let end = match end {
        End::TimeLimit | End::ConsoleClosed if !c.started() => End::NoOutput,
        e => e,
    };
    Part {
        key,
        via,
        duration: t0.elapsed(),
        end,
        lines: c.lines,
        dropped: c.dropped,
        error,
    }
}

/// Collects forensics on `vm` with the default limits, the agent first when `client`
/// is given.
pub async fn collect_vm(vm: &Vm, client: Option<AgentClient>) -> Forensics {
    let limits = Limits::default();
    let agent = client.is_some();
    let mut target = VmTarget::new(vm, client, limits);
    collect(&mut target, agent, limits).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::SystemTime;

    use crate::vm::console::Source;

    fn line(text: &str) -> ConsoleLine {
        ConsoleLine {
            source: Source::Serial,
            at: SystemTime::now(),
            since_start: Duration::ZERO,
            text: text.to_string(),
        }
    }

    /// A guest whose kernel prints `dump` (per key) after a key, and whose agent
    /// answers or not.
    struct Fake {
        tx: broadcast::Sender<ConsoleLine>,
        agent_ok: bool,
        keyboard_enabled: bool,
        dump: fn(char) -> Vec<String>,
        sent: VecDeque<(Via, char)>,
    }

    impl Fake {
        fn new(agent_ok: bool, keyboard_enabled: bool) -> Self {
            Self {
                tx: broadcast::channel(4096).0,
                agent_ok,
                keyboard_enabled,
                dump: |k| {
                    let key = KEYS.iter().find(|x| x.letter() == k).unwrap();
                    vec![
                        "[ 9.1] unrelated line".into(),
                        format!("[ 9.2] {}", key.header()),
                        format!("[ 9.3] body of {k}"),
                    ]
                },
                sent: VecDeque::new(),
            }
        }

        fn print(&self, lines: &[String]) {
            for l in lines {
                self.tx.send(line(l)).unwrap();
            }
        }
    }

    impl Target for Fake {
        fn subscribe(&self) -> broadcast::Receiver<ConsoleLine> {
            self.tx.subscribe()
        }
        async fn agent_sysrq(&mut self, key: char) -> Result<(), String> {
            if !self.agent_ok {
                return Err("Sysrq: no answer within 2s".into());
            }
            self.sent.push_back((Via::Agent, key));
            self.print(&(self.dump)(key));
            Ok(())
        }
        async fn agent_mark(&mut self, l: &str) -> Result<(), String> {
            self.print(&[format!("[ 9.9] {l}")]);
            Ok(())
        }
        async fn keyboard_sysrq(&mut self, key: char) -> Result<(), String> {
            self.sent.push_back((Via::Keyboard, key));
            if self.keyboard_enabled {
                self.print(&(self.dump)(key));
            } else {
                self.print(&["[ 9.2] sysrq: This sysrq operation is disabled.".into()]);
            }
            Ok(())
        }
    }

    fn fast() -> Limits {
        Limits {
            quiet: Duration::from_millis(50),
            part_time: Duration::from_secs(2),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn agent_path_ends_each_part_at_its_marker() {
        let mut g = Fake::new(true, false);
        let f = collect(&mut g, true, fast()).await;
        assert_eq!(f.parts.len(), 3);
        for (p, key) in f.parts.iter().zip(KEYS) {
            assert_eq!((p.key, p.via, p.end), (key, Via::Agent, End::Marker));
            assert_eq!(p.lines.len(), 2, "{:?}", p.lines);
            assert!(p.lines[0].contains(key.header()));
            assert!(p.error.is_none());
        }
        assert!(g.sent.iter().all(|(v, _)| *v == Via::Agent));
        let text = f.render();
        assert!(
            text.contains("--- sysrq w: blocked tasks (via agent"),
            "{text}"
        );
        assert!(text.contains("body of m"));
    }

    #[tokio::test]
    async fn dead_agent_falls_back_to_the_keyboard_once() {
        let mut g = Fake::new(false, true);
        let f = collect(&mut g, true, fast()).await;
        let vias: Vec<_> = f.parts.iter().map(|p| (p.via, p.end)).collect();
        assert_eq!(vias, [(Via::Keyboard, End::Quiet); 3]);
        // Only the first key tried the agent; all three went through the keyboard.
        assert_eq!(
            g.sent.iter().map(|s| s.1).collect::<String>(),
            "wlm",
            "{:?}",
            g.sent
        );
        assert!(f.parts[0].error.as_deref().unwrap().contains("no answer"));
        assert_eq!(f.parts[1].lines[1], "[ 9.3] body of l");
    }

    #[tokio::test]
    async fn refused_keyboard_sysrq_is_reported_not_waited_for() {
        let mut g = Fake::new(false, false);
        let f = collect(&mut g, false, fast()).await;
        assert!(f.parts.iter().all(|p| p.end == End::Disabled));
        assert!(f.duration < Duration::from_secs(1));
        assert!(f.render().contains("refused by the kernel"));
    }

    #[tokio::test]
    async fn silent_kernel_costs_one_part_time_per_key_within_the_total() {
        let mut g = Fake::new(false, true);
        g.dump = |_| Vec::new();
        let limits = Limits {
            part_time: Duration::from_millis(100),
            total_time: Duration::from_millis(250),
            ..fast()
        };
        let f = collect(&mut g, false, limits).await;
        assert!(f.parts.iter().all(|p| p.end == End::NoOutput));
        assert!(f.parts.len() <= 3);
        assert!(f.duration < Duration::from_millis(400), "{:?}", f.duration);
    }

    #[test]
    fn collector_bounds_lines_and_bytes() {
        let limits = Limits {
            max_lines: 3,
            ..Limits::default()
        };
        let mut c = Collector::new(Key::BlockedTasks, None, limits);
        assert_eq!(c.push("noise"), None);
        assert!(!c.started());
        assert_eq!(c.push("sysrq: Show Blocked State"), None);
        assert_eq!(c.push("a"), None);
        assert_eq!(c.push("b"), None);
        assert_eq!(c.push("c"), Some(End::SizeLimit));
        assert_eq!(c.lines.len(), 3);
        assert_eq!(c.dropped, 1);
        // With a marker coming, extra lines are counted until it arrives.
        let limits = Limits {
            max_bytes: 30,
            ..Limits::default()
        };
        let m = marker(Key::Memory);
        let mut c = Collector::new(Key::Memory, Some(m.clone()), limits);
        assert_eq!(c.push("sysrq: Show Memory"), None);
        assert_eq!(c.push("0123456789"), None);
        assert_eq!(c.push("0123456789"), None);
        assert_eq!(c.push("0123456789"), None);
        assert_eq!(c.push(&m), Some(End::Marker));
        assert_eq!((c.lines.len(), c.dropped), (2, 2));
        // A marker before any header: the kernel printed nothing.
        let mut c = Collector::new(Key::Backtraces, Some("END".into()), Limits::default());
        assert_eq!(c.push("[1.0] END"), Some(End::NoOutput));
    }
}
