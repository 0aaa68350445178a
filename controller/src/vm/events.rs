//! Guest state as QMP events tell it, folded in one place.

use std::time::Duration;

use crate::verdict::VmState;

/// Guest state as told by QMP events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestEvents {
    /// GUEST_PANICKED was seen.
    pub panicked: bool,
    /// SHUTDOWN was seen.
    pub shutdown: bool,
    /// STOP was seen after the last RESUME.
    pub stopped: bool,
    /// RESET events seen (guest reboots and system_reset).
    pub resets: u32,
    /// When the last RESET arrived, as time since QEMU started (comparable with
    /// [`super::ConsoleLine::since_start`]).
    pub last_reset_at: Option<Duration>,
    /// The last event's name.
    pub last: Option<String>,
    /// QEMU's run state as the events tell it: the one fold of QMP events into state
    /// (the watcher reads it from here).
    pub state: VmState,
}

impl GuestEvents {
    /// Folds one event in.
    pub fn record(&mut self, name: &str) {
        // A panicked guest stays panicked until a reset, whatever STOP or RESUME follow
        // (pvpanic's pause sends STOP after GUEST_PANICKED).
        let panicked_now = self.state == VmState::GuestPanicked;
        match name {
            "GUEST_PANICKED" => {
                self.panicked = true;
                self.state = VmState::GuestPanicked;
            }
            "SHUTDOWN" => {
                self.shutdown = true;
                self.state = VmState::Shutdown;
            }
            "STOP" => {
                self.stopped = true;
                if !panicked_now {
                    self.state = VmState::Paused;
                }
            }
            "RESUME" => {
                self.stopped = false;
                if !panicked_now {
                    self.state = VmState::Running;
                }
            }
            "RESET" => {
                self.resets += 1;
                self.state = VmState::Running;
            }
            _ => {}
        }
        self.last = Some(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_events_fold() {
        let mut g = GuestEvents::default();
        for e in ["STOP", "RESUME", "RESET", "RESET", "GUEST_PANICKED", "STOP"] {
            g.record(e);
        }
        assert!(g.panicked && g.stopped && !g.shutdown);
        assert_eq!(g.resets, 2);
        assert_eq!(g.last.as_deref(), Some("STOP"));
        assert_eq!(
            g.state,
            VmState::GuestPanicked,
            "STOP after a panic keeps it"
        );
        g.record("RESUME");
        assert_eq!(
            g.state,
            VmState::GuestPanicked,
            "RESUME does not clear a panic"
        );
        g.record("RESET");
        assert_eq!(g.state, VmState::Running, "a reset does");
        g.record("STOP");
        assert_eq!(g.state, VmState::Paused);
        g.record("SHUTDOWN");
        assert_eq!(g.state, VmState::Shutdown);
    }
}
