//! Liveness verdicts: from every signal a running guest gives, tell apart what other
//! harnesses lump together as "lost connection". Pure: the caller passes the signals
//! with their ages; no clocks are read here.
//!
//! The order of the rules matters. Hard facts first (QEMU exited, a panic seen, a new
//! boot id), then silence. Silence is judged against the console too: a guest whose
//! agent is silent but whose kernel still prints is not hung, and the kernel's own
//! detectors (hung task, soft lockup, RCU stall), which the guest image sets to short
//! windows, print before `silence` runs out, so one hang gives one crash with the
//! kernel's own diagnosis.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// QEMU's run state as QMP reports it (query-status and events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Running.
    #[default]
    Running,
    /// Paused by `stop` (or a debugger).
    Paused,
    /// GUEST_PANICKED (pvpanic with `-action panic=pause`).
    GuestPanicked,
    /// SHUTDOWN seen or status shutdown.
    Shutdown,
    /// QMP did not answer.
    Unknown,
}

/// The state of the agent connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Stream open.
    Up,
    /// The connection was reset or closed; reconnecting.
    Reset,
    /// A reconnect after a reset succeeded with the same boot id.
    Reconnected,
}

/// Everything observed, with ages (time since) rather than timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// QEMU's exit status, once it exited (code, or None when killed by a signal).
    pub qemu_exited: Option<Option<i32>>,
    /// QMP state.
    pub vm_state: VmState,
    /// The console or kmsg showed `Kernel panic - not syncing`.
    pub panic_seen: bool,
    /// Time since the agent last sent anything: a heartbeat, or any other event, which
    /// shows it alive as well (None: nothing yet).
    pub since_heartbeat: Option<Duration>,
    /// Time since the last console output.
    pub since_console: Option<Duration>,
    /// Boot id at the start of the watch.
    pub boot_id: String,
    /// Boot id the agent reports now (after a reconnect).
    pub current_boot_id: String,
    /// Agent connection state.
    pub link: Link,
    /// The agent restarted (its pid changed) under the same boot id.
    pub agent_restarted: bool,
    /// The vsock backend daemon (vhost-device-vsock) exited: the agent is unreachable.
    pub backend_exited: bool,
}

/// Verdict timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Expected heartbeat period.
    pub heartbeat: Duration,
    /// Heartbeat silence after which the guest is judged (hung, agent dead, ...).
    pub silence: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(10),
        }
    }
}

/// What the supervisor concludes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// All signals fresh.
    Healthy,
    /// Heartbeats are late but not yet silent: keep watching.
    Late,
    /// The guest kernel panicked (console, pvpanic).
    GuestPanicked,
    /// No heartbeat and no console output while the VM runs, or the VM is paused.
    GuestHung,
    /// The agent is gone but the kernel is alive (console moving, or the agent came
    /// back under the same boot id).
    AgentDead,
    /// QEMU exited.
    VmmDead {
        /// Its exit code, None when it was killed by a signal.
        code: Option<i32>,
    },
    /// The guest rebooted behind our back (new boot id).
    Rebooted,
    /// The connection broke but the guest is fine (reconnected, same boot id).
    TransportLost,
    /// Silence, and QEMU itself no longer answers QMP (stopped, wedged): the VMM is
    /// frozen, not (necessarily) the guest.
    VmmHung,
    /// The vsock backend daemon died: the guest may run, but nothing can reach it.
    BackendDead,
}

impl Verdict {
    /// Short name for the database and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Late => "late",
            Verdict::GuestPanicked => "guest_panicked",
            Verdict::GuestHung => "guest_hung",
            Verdict::AgentDead => "agent_dead",
            Verdict::VmmDead { .. } => "vmm_dead",
            Verdict::Rebooted => "rebooted",
            Verdict::TransportLost => "transport_lost",
            Verdict::VmmHung => "vmm_hung",
            Verdict::BackendDead => "vsock_backend_dead",
        }
    }

    /// True for verdicts that call for recovery.
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            Verdict::Healthy | Verdict::Late | Verdict::TransportLost
        )
    }
}

/// Judges the signals.
pub fn judge(s: &Signals, t: &Timeouts) -> Verdict {
    if let Some(code) = s.qemu_exited {
        // With `-action panic=exit-failure` a guest panic ends QEMU with status 1.
        return if s.panic_seen {
            Verdict::GuestPanicked
        } else {
            Verdict::VmmDead { code }
        };
    }
    if s.panic_seen || s.vm_state == VmState::GuestPanicked {
        return Verdict::GuestPanicked;
    }
    if !s.current_boot_id.is_empty() && !s.boot_id.is_empty() && s.current_boot_id != s.boot_id {
        return Verdict::Rebooted;
    }
    if s.agent_restarted {
        return Verdict::AgentDead;
    }
    if s.vm_state == VmState::Shutdown {
        return Verdict::VmmDead { code: None };
    }
    // Without its daemon the agent is unreachable for good: waiting for silence would
    // only delay the relaunch.
    if s.backend_exited {
        return Verdict::BackendDead;
    }
    let silent = |age: Option<Duration>| age.is_none_or(|a| a >= t.silence);
    let hb_silent = silent(s.since_heartbeat);
    if !hb_silent {
        if s.link == Link::Reconnected {
            return Verdict::TransportLost;
        }
        let late = s.since_heartbeat.is_some_and(|a| a >= t.heartbeat * 3);
        return if late {
            Verdict::Late
        } else {
            Verdict::Healthy
        };
    }
    if s.vm_state == VmState::Paused {
        return Verdict::GuestHung;
    }
    if s.vm_state == VmState::Unknown {
        return Verdict::VmmHung;
    }
    // The console is older than the last heartbeat, or silent too: the whole guest
    // stopped. A console that kept moving after the agent fell silent means the kernel
    // lives and only the agent is gone.
    let console_moving = match (s.since_console, s.since_heartbeat) {
        (Some(c), Some(h)) => c < h && c < t.silence,
        (Some(c), None) => c < t.silence,
        _ => false,
    };
    if console_moving {
        Verdict::AgentDead
    } else {
        Verdict::GuestHung
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Signals {
        Signals {
            qemu_exited: None,
            vm_state: VmState::Running,
            panic_seen: false,
            since_heartbeat: Some(Duration::from_millis(300)),
            since_console: Some(Duration::from_secs(30)),
            boot_id: "a".into(),
            current_boot_id: "a".into(),
            link: Link::Up,
            agent_restarted: false,
            backend_exited: false,
        }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn tells_the_failures_apart() {
        let t = Timeouts::default();
        assert_eq!(judge(&healthy(), &t), Verdict::Healthy);

        let mut s = healthy();
        s.since_heartbeat = secs(4);
        assert_eq!(judge(&s, &t), Verdict::Late);

        let mut s = healthy();
        s.qemu_exited = Some(None);
        assert_eq!(judge(&s, &t), Verdict::VmmDead { code: None });
        s.panic_seen = true;
        assert_eq!(judge(&s, &t), Verdict::GuestPanicked);

        let mut s = healthy();
        s.vm_state = VmState::GuestPanicked;
        assert_eq!(judge(&s, &t), Verdict::GuestPanicked);

        // Silent agent, silent console, VM running: hung.
        let mut s = healthy();
        s.since_heartbeat = secs(11);
        s.since_console = secs(12);
        assert_eq!(judge(&s, &t), Verdict::GuestHung);
        // Same but paused by QMP stop: hung (frozen).
        s.vm_state = VmState::Paused;
        s.since_console = secs(1);
        assert_eq!(judge(&s, &t), Verdict::GuestHung);

        // Silent agent, console still printing after it went quiet: agent died.
        let mut s = healthy();
        s.since_heartbeat = secs(11);
        s.since_console = secs(2);
        assert_eq!(judge(&s, &t), Verdict::AgentDead);

        let mut s = healthy();
        s.agent_restarted = true;
        assert_eq!(judge(&s, &t), Verdict::AgentDead);

        let mut s = healthy();
        s.current_boot_id = "b".into();
        assert_eq!(judge(&s, &t), Verdict::Rebooted);

        let mut s = healthy();
        s.link = Link::Reconnected;
        assert_eq!(judge(&s, &t), Verdict::TransportLost);
        assert!(!Verdict::TransportLost.is_failure());
        assert!(Verdict::GuestHung.is_failure());
    }

    #[test]
    fn frozen_vmm_and_dead_backend_are_their_own_verdicts() {
        let t = Timeouts::default();
        // QMP does not answer: fine while heartbeats come (a slow QMP), frozen VMM once
        // the agent is silent too.
        let mut s = healthy();
        s.vm_state = VmState::Unknown;
        assert_eq!(judge(&s, &t), Verdict::Healthy);
        s.since_heartbeat = secs(11);
        assert_eq!(judge(&s, &t), Verdict::VmmHung);
        assert!(Verdict::VmmHung.is_failure());
        // The daemon died: no need to wait for silence.
        let mut s = healthy();
        s.backend_exited = true;
        assert_eq!(judge(&s, &t), Verdict::BackendDead);
        // QEMU dying with it is the bigger fact.
        s.qemu_exited = Some(Some(1));
        assert_eq!(judge(&s, &t), Verdict::VmmDead { code: Some(1) });
    }

    #[test]
    fn no_heartbeat_ever_is_silence() {
        let mut s = healthy();
        s.since_heartbeat = None;
        s.since_console = None;
        assert_eq!(judge(&s, &Timeouts::default()), Verdict::GuestHung);
    }
}
