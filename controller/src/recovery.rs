//! The recovery ladder as a pure state machine: given what happened, it says the next
//! action; the supervisor performs it and reports the result; at the end it states the
//! test's fate. No sockets, no clocks: durations are data.
//!
//! Level 1 (graceful): unload with a deadline, check leaks, reload, smoke test, retry
//! with backoff. Level 2 (system reset): forensics, reset or relaunch the VM, verify a
//! clean boot, reload the module, smoke test; the runner then resumes the test from its
//! checkpoint (the step after the crash). Level 3 (isolation): a test that crashed
//! `isolate_after` times is marked failing and skipped for the rest of the run, once the
//! system is healthy again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::Recovery;

/// Ladder levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Unload, cleanup, reload, verify, retry.
    Graceful = 1,
    /// Restart the VM and resume from the checkpoint.
    SystemReset = 2,
    /// Mark the test failing and skip it.
    Isolation = 3,
}

/// What the supervisor should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Kill the process group of the stuck workload (deadlock recovery).
    KillWorkload,
    /// Unload the module under test, waiting at most `deadline`.
    UnloadModule {
        /// Deadline for delete_module.
        deadline: Duration,
    },
    /// Compare resource counters (slab, open fds) with the baseline taken before the
    /// test: fails when they stay grown past the bound after the unload.
    CheckLeaks {
        /// How far unreclaimable slab may stay above the baseline, kB.
        bound_kb: u64,
    },
    /// Load the module under test again.
    LoadModule,
    /// Run the smoke workload (mount, write, read, unmount).
    SmokeTest,
    /// Wait before retrying.
    Backoff {
        /// How long.
        delay: Duration,
    },
    /// Capture sysrq w/t/l/m output and the console tail (guest still running).
    CollectForensics,
    /// Reset the guest through QMP system_reset.
    SystemReset,
    /// Kill QEMU and launch a fresh VM (QEMU dead or unresponsive).
    RelaunchVm,
    /// Wait for the agent: healthy, new boot id, no taint.
    VerifyCleanBoot,
}

impl Action {
    /// Short name for the database and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Action::KillWorkload => "kill_workload",
            Action::UnloadModule { .. } => "unload_module",
            Action::CheckLeaks { .. } => "check_leaks",
            Action::LoadModule => "load_module",
            Action::SmokeTest => "smoke_test",
            Action::Backoff { .. } => "backoff",
            Action::CollectForensics => "collect_forensics",
            Action::SystemReset => "system_reset",
            Action::RelaunchVm => "relaunch_vm",
            Action::VerifyCleanBoot => "verify_clean_boot",
        }
    }
}

/// How an action went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Succeeded,
    /// It failed (refused, verification failed); retrying may help.
    Failed,
    /// It did not finish in time (a hung unload, a process that will not die).
    Hung,
}

impl Outcome {
    /// The snake_case name (database, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Hung => "hung",
        }
    }
}

/// What becomes of the test that crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// The system is healthy as it was: go on with the run (retry or next step).
    Continue,
    /// The test is isolated: mark it failing, skip it for the rest of the run.
    #[serde(rename = "skip")]
    SkipCurrent,
    /// The VM was restarted: the runner resumes the test from its checkpoint.
    RestartRequired,
    /// Recovery failed: stop the run on this kernel.
    Abort,
}

impl Fate {
    /// The snake_case name (database, reports; `skip` for an isolated test).
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Continue => "continue",
            Fate::SkipCurrent => "skip",
            Fate::RestartRequired => "restart_required",
            Fate::Abort => "abort",
        }
    }
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the supervisor knows when recovery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Situation {
    /// The recovery the crash type calls for.
    pub needs: Recovery,
    /// QEMU is still running.
    pub vm_alive: bool,
    /// QMP answers (so a system_reset can be asked for).
    pub qmp_responsive: bool,
    /// The guest kernel oopsed (taint D) or panicked: the module must not be unloaded.
    pub kernel_died: bool,
    /// A QMP system_reset reliably brings the agent back (kernel vhost-vsock). With
    /// the vhost-user vsock daemon a connection made too early after a reset hangs it
    /// for good (measured), so there a relaunch, which costs the same boot, is the reset.
    pub reset_keeps_transport: bool,
    /// How many times this test has crashed in this run, this crash included.
    pub test_crashes: u32,
}

/// Tunables of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Graceful attempts before escalating to a reset.
    pub graceful_attempts: u32,
    /// Resets (system_reset, then relaunches) before giving up.
    pub reset_attempts: u32,
    /// First backoff delay; doubles per retry.
    pub backoff: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Deadline for unloading the module.
    pub unload_deadline: Duration,
    /// A test crashing this many times in a run is isolated.
    pub isolate_after: u32,
    /// How much unreclaimable slab may stay grown over the test's baseline after the
    /// module is unloaded before `check_leaks` fails, kB.
    pub leak_bound_kb: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            graceful_attempts: 3,
            reset_attempts: 3,
            backoff: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
            unload_deadline: Duration::from_secs(5),
            isolate_after: 2,
            leak_bound_kb: 1024,
        }
    }
}

/// The next step: do an action at a level, or stop with a fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Perform this action, then call [`Ladder::next`] with its outcome.
    Do {
        /// Ladder level of the action.
        level: Level,
        /// The action.
        action: Action,
    },
    /// Recovery is over.
    Done {
        /// The highest level used.
        level: Level,
        /// What becomes of the test.
        fate: Fate,
    },
}

/// Where the ladder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Kill,
    Unload,
    Leaks,
    Load,
    Smoke,
    GracefulBackoff,
    Forensics,
    Reset,
    Relaunch,
    Verify,
    ResetLoad,
    ResetSmoke,
    Finished,
}

/// The recovery ladder for one crash.
#[derive(Debug, Clone)]
pub struct Ladder {
    policy: Policy,
    situation: Situation,
    phase: Phase,
    graceful_tries: u32,
    resets: u32,
    level: Level,
    /// Relaunch rather than reset from now on (QEMU dead or reset did not help).
    relaunch: bool,
}

impl Ladder {
    /// A ladder for one crash.
    pub fn new(situation: Situation, policy: Policy) -> Self {
        Self {
            policy,
            situation,
            phase: Phase::Start,
            graceful_tries: 0,
            resets: 0,
            level: Level::Graceful,
            relaunch: !situation.vm_alive
                || !situation.qmp_responsive
                || !situation.reset_keeps_transport,
        }
    }

    fn isolated(&self) -> bool {
        self.situation.test_crashes >= self.policy.isolate_after
    }

    fn go(&mut self, phase: Phase, level: Level, action: Action) -> Step {
        self.phase = phase;
        self.level = self.level.max(level);
        Step::Do { level, action }
    }

    fn done(&mut self, fate: Fate) -> Step {
        self.phase = Phase::Finished;
        let isolate = self.isolated() && fate != Fate::Abort;
        let (level, fate) = if isolate {
            (Level::Isolation, Fate::SkipCurrent)
        } else {
            (self.level, fate)
        };
        Step::Done { level, fate }
    }

    fn backoff(&self, tries: u32) -> Duration {
        let factor = 1u32 << tries.saturating_sub(1).min(16);
        (self.policy.backoff * factor).min(self.policy.backoff_max)
    }

    /// Escalates to level 2.
    fn reset(&mut self) -> Step {
        if self.resets >= self.policy.reset_attempts {
            return self.done(Fate::Abort);
        }
        self.resets += 1;
        if self.resets == 1 && self.situation.vm_alive && self.situation.qmp_responsive {
            return self.go(
                Phase::Forensics,
                Level::SystemReset,
                Action::CollectForensics,
            );
        }
        self.reset_action()
    }

    fn reset_action(&mut self) -> Step {
        if self.relaunch {
            self.go(Phase::Relaunch, Level::SystemReset, Action::RelaunchVm)
        } else {
            self.go(Phase::Reset, Level::SystemReset, Action::SystemReset)
        }
    }

    /// Starts level 1 from the unload.
    fn graceful(&mut self) -> Step {
        self.graceful_tries += 1;
        let deadline = self.policy.unload_deadline;
        self.go(
            Phase::Unload,
            Level::Graceful,
            Action::UnloadModule { deadline },
        )
    }

    /// A level-1 step failed: back off and retry, or escalate.
    fn graceful_failed(&mut self) -> Step {
        if self.graceful_tries >= self.policy.graceful_attempts {
            return self.reset();
        }
        let delay = self.backoff(self.graceful_tries);
        self.go(
            Phase::GracefulBackoff,
            Level::Graceful,
            Action::Backoff { delay },
        )
    }

    /// The next step, given how the previous action went (None for the first call).
    pub fn next(&mut self, last: Option<Outcome>) -> Step {
        use Outcome::*;
        let ok = last == Some(Succeeded);
        match self.phase {
            Phase::Start => {
                let s = self.situation;
                if !s.vm_alive || s.kernel_died || s.needs == Recovery::VmRestart {
                    self.reset()
                } else if s.needs == Recovery::ProcessTermination {
                    self.go(Phase::Kill, Level::Graceful, Action::KillWorkload)
                } else if s.needs == Recovery::None {
                    // A warning leaves the module loaded: only check it still works.
                    self.go(Phase::Smoke, Level::Graceful, Action::SmokeTest)
                } else {
                    self.graceful()
                }
            }
            // The stuck task is gone: check the module is still usable.
            Phase::Kill if ok => self.go(Phase::Smoke, Level::Graceful, Action::SmokeTest),
            // A task stuck in D state cannot be killed: only a reset frees it.
            Phase::Kill => self.reset(),
            Phase::Unload if ok => {
                let bound_kb = self.policy.leak_bound_kb;
                self.go(
                    Phase::Leaks,
                    Level::Graceful,
                    Action::CheckLeaks { bound_kb },
                )
            }
            // What stays allocated once the module is gone is lost until a reboot.
            Phase::Leaks if !ok => self.reset(),
            // A hung unload will never finish: the module is wedged in the kernel.
            Phase::Unload if last == Some(Hung) => self.reset(),
            Phase::Unload => self.graceful_failed(),
            Phase::Leaks => self.go(Phase::Load, Level::Graceful, Action::LoadModule),
            Phase::Load if ok => self.go(Phase::Smoke, Level::Graceful, Action::SmokeTest),
            Phase::Load => self.graceful_failed(),
            Phase::Smoke if ok => self.done(Fate::Continue),
            Phase::Smoke if self.graceful_tries == 0 => self.graceful(),
            Phase::Smoke => self.graceful_failed(),
            Phase::GracefulBackoff => self.graceful(),
            Phase::Forensics => self.reset_action(),
            Phase::Reset | Phase::Relaunch if ok => {
                self.go(Phase::Verify, Level::SystemReset, Action::VerifyCleanBoot)
            }
            Phase::Reset | Phase::Relaunch => {
                self.relaunch = true;
                self.reset()
            }
            Phase::Verify if ok => {
                self.go(Phase::ResetLoad, Level::SystemReset, Action::LoadModule)
            }
            Phase::Verify => {
                // The guest did not come back clean from a reset: start from scratch.
                self.relaunch = true;
                self.reset()
            }
            Phase::ResetLoad if ok => {
                self.go(Phase::ResetSmoke, Level::SystemReset, Action::SmokeTest)
            }
            Phase::ResetSmoke if ok => self.done(Fate::RestartRequired),
            // A fresh guest where the module will not load or work: nothing more to try.
            Phase::ResetLoad | Phase::ResetSmoke => self.done(Fate::Abort),
            Phase::Finished => Step::Done {
                level: self.level,
                fate: Fate::Abort,
            },
        }
    }
}

/// Runs a ladder against a function that performs actions; returns every step taken
/// and the final one. Handy for tests and for dry runs.
pub fn drive(
    ladder: &mut Ladder,
    mut perform: impl FnMut(&Action) -> Outcome,
    max_steps: usize,
) -> (Vec<(Level, Action, Outcome)>, Step) {
    let mut taken = Vec::new();
    let mut last = None;
    for _ in 0..max_steps {
        match ladder.next(last) {
            Step::Do { level, action } => {
                let o = perform(&action);
                taken.push((level, action, o));
                last = Some(o);
            }
            done @ Step::Done { .. } => return (taken, done),
        }
    }
    (
        taken,
        Step::Done {
            level: Level::SystemReset,
            fate: Fate::Abort,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn situation(needs: Recovery) -> Situation {
        Situation {
            needs,
            vm_alive: true,
            qmp_responsive: true,
            kernel_died: false,
            reset_keeps_transport: true,
            test_crashes: 1,
        }
    }

    fn names(taken: &[(Level, Action, Outcome)]) -> Vec<&'static str> {
        taken.iter().map(|(_, a, _)| a.name()).collect()
    }

    #[test]
    fn leak_recovers_gracefully() {
        let mut l = Ladder::new(situation(Recovery::ResourceCleanup), Policy::default());
        let (taken, done) = drive(&mut l, |_| Outcome::Succeeded, 50);
        assert_eq!(
            names(&taken),
            ["unload_module", "check_leaks", "load_module", "smoke_test"]
        );
        assert_eq!(
            done,
            Step::Done {
                level: Level::Graceful,
                fate: Fate::Continue
            }
        );
    }

    #[test]
    fn leak_that_outlives_the_unload_escalates_to_a_restart() {
        let mut l = Ladder::new(situation(Recovery::ResourceCleanup), Policy::default());
        let (taken, done) = drive(
            &mut l,
            |a| match a {
                Action::CheckLeaks { .. } => Outcome::Failed,
                _ => Outcome::Succeeded,
            },
            50,
        );
        assert_eq!(
            names(&taken)[..3],
            ["unload_module", "check_leaks", "collect_forensics"]
        );
        assert!(matches!(
            done,
            Step::Done {
                level: Level::SystemReset,
                fate: Fate::RestartRequired
            }
        ));
    }

    #[test]
    fn never_unloads_after_an_oops() {
        let mut s = situation(Recovery::ModuleReload);
        s.kernel_died = true;
        let mut l = Ladder::new(s, Policy::default());
        let (taken, done) = drive(&mut l, |_| Outcome::Succeeded, 50);
        assert!(!names(&taken).contains(&"unload_module"));
        assert_eq!(
            names(&taken),
            [
                "collect_forensics",
                "system_reset",
                "verify_clean_boot",
                "load_module",
                "smoke_test",
            ]
        );
        assert_eq!(
            done,
            Step::Done {
                level: Level::SystemReset,
                fate: Fate::RestartRequired
            }
        );
    }

    #[test]
    fn hung_unload_escalates_to_reset() {
        let mut l = Ladder::new(situation(Recovery::ModuleReload), Policy::default());
        let (taken, done) = drive(
            &mut l,
            |a| match a {
                Action::UnloadModule { .. } => Outcome::Hung,
                _ => Outcome::Succeeded,
            },
            50,
        );
        assert_eq!(names(&taken)[..2], ["unload_module", "collect_forensics"]);
        assert!(matches!(
            done,
            Step::Done {
                fate: Fate::RestartRequired,
                ..
            }
        ));
    }

    #[test]
    fn busy_unload_retries_with_growing_backoff_then_resets() {
        let mut l = Ladder::new(situation(Recovery::ModuleReload), Policy::default());
        let (taken, done) = drive(
            &mut l,
            |a| match a {
                Action::UnloadModule { .. } => Outcome::Failed,
                _ => Outcome::Succeeded,
            },
            50,
        );
        let delays: Vec<Duration> = taken
            .iter()
            .filter_map(|(_, a, _)| match a {
                Action::Backoff { delay } => Some(*delay),
                _ => None,
            })
            .collect();
        assert_eq!(
            delays,
            [Duration::from_millis(250), Duration::from_millis(500)]
        );
        assert_eq!(
            taken
                .iter()
                .filter(|(_, a, _)| a.name() == "unload_module")
                .count(),
            3
        );
        assert!(matches!(
            done,
            Step::Done {
                level: Level::SystemReset,
                ..
            }
        ));
    }

    #[test]
    fn dead_vmm_is_relaunched_and_failed_resets_abort() {
        let mut s = situation(Recovery::VmRestart);
        s.vm_alive = false;
        let mut l = Ladder::new(s, Policy::default());
        let (taken, done) = drive(
            &mut l,
            |a| match a {
                Action::RelaunchVm => Outcome::Failed,
                _ => Outcome::Succeeded,
            },
            50,
        );
        assert_eq!(names(&taken), ["relaunch_vm", "relaunch_vm", "relaunch_vm"]);
        assert!(matches!(
            done,
            Step::Done {
                fate: Fate::Abort,
                ..
            }
        ));
    }

    #[test]
    fn unkillable_deadlock_resets_and_repeat_offender_is_isolated() {
        let mut s = situation(Recovery::ProcessTermination);
        s.test_crashes = 2;
        let mut l = Ladder::new(s, Policy::default());
        let (taken, done) = drive(
            &mut l,
            |a| match a {
                Action::KillWorkload => Outcome::Hung,
                _ => Outcome::Succeeded,
            },
            50,
        );
        assert_eq!(
            names(&taken)[..3],
            ["kill_workload", "collect_forensics", "system_reset"]
        );
        assert_eq!(
            done,
            Step::Done {
                level: Level::Isolation,
                fate: Fate::SkipCurrent
            }
        );
    }

    #[test]
    fn warning_only_checks_the_module() {
        let mut l = Ladder::new(situation(Recovery::None), Policy::default());
        let (taken, done) = drive(&mut l, |_| Outcome::Succeeded, 50);
        assert_eq!(names(&taken), ["smoke_test"]);
        assert!(matches!(
            done,
            Step::Done {
                fate: Fate::Continue,
                ..
            }
        ));
    }

    fn any_needs() -> impl Strategy<Value = Recovery> {
        prop_oneof![
            Just(Recovery::None),
            Just(Recovery::ModuleReload),
            Just(Recovery::ResourceCleanup),
            Just(Recovery::ProcessTermination),
            Just(Recovery::VmRestart),
        ]
    }

    proptest! {
        /// Whatever the actions return, the ladder ends, never unloads after the kernel
        /// died, and only ends in Continue at level 1 without a reset.
        #[test]
        fn always_terminates_and_respects_rules(
            needs in any_needs(),
            vm_alive: bool, qmp: bool, died: bool, keeps: bool,
            crashes in 1u32..4,
            outcomes in proptest::collection::vec(0u8..3, 64),
        ) {
            let s = Situation { needs, vm_alive, qmp_responsive: qmp, kernel_died: died,
                reset_keeps_transport: keeps, test_crashes: crashes };
            let mut l = Ladder::new(s, Policy::default());
            let mut i = 0;
            let (taken, done) = drive(&mut l, |_| {
                i += 1;
                match outcomes[i % outcomes.len()] {
                    0 => Outcome::Succeeded,
                    1 => Outcome::Failed,
                    _ => Outcome::Hung,
                }
            }, 200);
            prop_assert!(taken.len() < 60, "{} steps", taken.len());
            let Step::Done { level, fate } = done else { unreachable!() };
            if died || !vm_alive {
                prop_assert!(!names(&taken).contains(&"unload_module"));
            }
            let resets = taken.iter().filter(|(_, a, _)| matches!(a, Action::SystemReset | Action::RelaunchVm)).count();
            prop_assert!(resets <= Policy::default().reset_attempts as usize);
            if fate == Fate::Continue {
                prop_assert_eq!(resets, 0);
                prop_assert_eq!(level, Level::Graceful);
            }
            if crashes >= 2 && fate != Fate::Abort {
                prop_assert_eq!(fate, Fate::SkipCurrent);
            }
        }
    }
}
