//! What the watcher knows, shared between its tasks.

use super::*;

/// What the watcher knows, shared between its tasks.
#[derive(Debug)]
pub(super) struct State {
    /// Last event of any kind from the agent: the silence clock.
    pub(super) last_alive: Option<Instant>,
    /// Last heartbeat.
    pub(super) last_beat: Option<Instant>,
    pub(super) last_console: Option<Instant>,
    pub(super) panic_seen: bool,
    pub(super) vm_state: VmState,
    pub(super) qemu_exited: Option<Option<i32>>,
    pub(super) boot_id: String,
    pub(super) current_boot_id: String,
    pub(super) link: Link,
    pub(super) agent_pid: u32,
    pub(super) agent_restarted: bool,
    pub(super) backend_exited: bool,
    pub(super) last_seq: Option<u64>,
    /// Seq the next kmsg record or gap should start at.
    pub(super) next_seq: u64,
    /// Delivery accounting of the agent stream.
    pub(super) stream: StreamStats,
    /// The last task reported stuck (D-state scan or kernel notice).
    pub(super) stuck_pid: Option<u32>,
    /// (boot id, signature) already reported.
    pub(super) seen: HashSet<(String, String)>,
    pub(super) excerpt: std::collections::VecDeque<String>,
}

impl State {
    /// Accounts a kmsg record.
    pub(super) fn record(&mut self, seq: u64) {
        if seq != self.next_seq {
            self.stream.out_of_order += 1;
            tracing::warn!(
                expected = self.next_seq,
                got = seq,
                "kmsg record out of order"
            );
        }
        self.stream.records += 1;
        self.next_seq = seq + 1;
        self.last_seq = Some(seq);
    }

    /// Accounts a gap the agent reported (records `from..=to` lost).
    pub(super) fn gap(&mut self, from: u64, to: u64) {
        if from != self.next_seq {
            self.stream.out_of_order += 1;
            tracing::warn!(expected = self.next_seq, from, "kmsg gap out of order");
        }
        self.stream.lost += to.saturating_sub(from) + 1;
        self.next_seq = to + 1;
    }

    pub(super) fn signals(&self, now: Instant) -> Signals {
        let age = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        Signals {
            qemu_exited: self.qemu_exited,
            vm_state: self.vm_state,
            panic_seen: self.panic_seen,
            since_heartbeat: age(self.last_alive),
            since_console: age(self.last_console),
            boot_id: self.boot_id.clone(),
            current_boot_id: self.current_boot_id.clone(),
            link: self.link,
            agent_restarted: self.agent_restarted,
            backend_exited: self.backend_exited,
        }
    }
}

pub(super) type Shared = Arc<Mutex<State>>;

pub(super) fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A panicked task cannot leave the state half-written in a way that matters here.
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
