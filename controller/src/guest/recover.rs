//! Handling one incident: record it (and check the record reads back intact) before
//! anything else, then drive the recovery ladder against a guest, recording every
//! action as it ends. The guest is a trait, so this is unit tested with a scripted one.

use std::time::{Duration, Instant};

use crate::classify::Category;
use crate::incident::Incident;
use crate::recovery::{Action, Fate, Ladder, Level, Outcome, Policy, Situation, Step};
use crate::store::{self, NewAttempt, Store};

use super::GuestError;

/// What the ladder needs to know about a guest when recovery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// QEMU runs.
    pub vm_alive: bool,
    /// QMP answers.
    pub qmp_responsive: bool,
    /// A QMP system_reset brings the agent back (kernel vhost-vsock only).
    pub reset_keeps_transport: bool,
    /// The kernel's taint mask, when the agent answered.
    pub taint_mask: Option<u64>,
}

/// What one action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Performed {
    /// How it went.
    pub outcome: Outcome,
    /// What it found or why it failed, for the attempt row.
    pub detail: String,
    /// Forensics it collected, to be added to the crash row.
    pub forensics: Option<String>,
}

impl Performed {
    /// An outcome with a detail.
    pub fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            forensics: None,
        }
    }
}

impl From<Outcome> for Performed {
    fn from(outcome: Outcome) -> Self {
        Self::new(outcome, "")
    }
}

/// The guest actions recovery needs.
// Used only through generics inside this crate, so the futures' auto traits follow
// the implementation.
#[allow(async_fn_in_trait)]
pub trait GuestActions {
    /// The guest's kernel release.
    fn kernel(&self) -> String;
    /// Console lines around now, for the crash row.
    fn console_excerpt(&self) -> String;
    /// The facts the ladder starts from.
    async fn assess(&mut self) -> Assessment;
    /// Carries out one ladder action.
    async fn perform(&mut self, action: &Action) -> Performed;
    /// Accepts the current state as the new normal after a recovery that kept the guest.
    fn acknowledge(&mut self);
}

/// Where a crash happened, for the database.
#[derive(Debug, Clone, Default)]
pub struct CrashContext {
    /// Run id.
    pub run_id: Option<i64>,
    /// Test id.
    pub test_id: Option<i64>,
    /// Test name.
    pub test_name: String,
    /// How many times this test has crashed in this run, this crash included.
    pub test_crashes: u32,
}

/// What handling a crash did.
#[derive(Debug, Clone)]
pub struct Handled {
    /// Crash row id.
    pub crash_id: i64,
    /// Highest level used.
    pub level: Level,
    /// The test's fate.
    pub fate: Fate,
    /// Steps taken: level, action, outcome, duration.
    pub steps: Vec<(Level, Action, Outcome, Duration)>,
    /// Total recovery time.
    pub duration: Duration,
    /// Time from seeing the crash to its row being committed.
    pub record_latency: Duration,
    /// The crash's report, excerpt and forensics read back intact.
    pub intact: bool,
}

impl Handled {
    /// Recovery succeeded (the run can go on).
    pub fn succeeded(&self) -> bool {
        self.fate != Fate::Abort
    }
}

/// Whether the guest kernel died (oopsed or panicked): its module must never be
/// unloaded then (rmmod hangs). The agent's taint bit D says so; when the agent does
/// not answer, an oops category stands in for it.
pub fn kernel_died(incident: &Incident, taint_mask: Option<u64>) -> bool {
    incident.category == Category::KernelPanic
        || match taint_mask {
            Some(mask) => vexfs_proto::Taint(mask).die(),
            None => matches!(
                incident.category,
                Category::ModuleCrash | Category::MemoryCorruption
            ),
        }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Records the incident (before anything else), checks the record reads back intact,
/// then runs the recovery ladder on the guest, recording every attempt.
pub async fn handle_crash<G: GuestActions>(
    guest: &mut G,
    store: &mut Store,
    incident: &Incident,
    ctx: &CrashContext,
    policy: Policy,
) -> Result<Handled, GuestError> {
    let mut row = incident.row(&guest.kernel(), ctx);
    row.console_excerpt = guest.console_excerpt();
    let crash_id = store.record_crash(&row)?;
    let record_latency = incident.at.elapsed();
    let mut intact = store.verify_crash(crash_id, &row)?;
    let a = guest.assess().await;
    let situation = Situation {
        needs: incident.recovery,
        vm_alive: a.vm_alive,
        qmp_responsive: a.qmp_responsive,
        kernel_died: kernel_died(incident, a.taint_mask),
        reset_keeps_transport: a.reset_keeps_transport,
        test_crashes: ctx.test_crashes.max(1),
    };
    let mut ladder = Ladder::new(situation, policy);
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut last = None;
    let (level, fate) = loop {
        match ladder.next(last) {
            Step::Do { level, action } => {
                let t0 = Instant::now();
                let at_ms = store::now_ms();
                let done = guest.perform(&action).await;
                let took = t0.elapsed();
                store.record_attempt(&NewAttempt {
                    run_id: ctx.run_id,
                    crash_id: Some(crash_id),
                    test_id: ctx.test_id,
                    level: level as i64,
                    action: action.name().into(),
                    started_at_ms: at_ms,
                    duration_ms: ms(took),
                    outcome: done.outcome.as_str().into(),
                    fate: String::new(),
                    detail: done.detail,
                })?;
                if let Some(text) = done.forensics.filter(|t| !t.is_empty()) {
                    store.add_forensics(crash_id, &text)?;
                    row.forensics.push_str(&text);
                    intact &= store.verify_crash(crash_id, &row)?;
                }
                steps.push((level, action, done.outcome, took));
                last = Some(done.outcome);
            }
            Step::Done { level, fate } => break (level, fate),
        }
    };
    let duration = started.elapsed();
    if fate == Fate::Continue {
        guest.acknowledge();
    }
    // The summary row of the whole recovery: its outcome is what the stats count.
    store.record_attempt(&NewAttempt {
        run_id: ctx.run_id,
        crash_id: Some(crash_id),
        test_id: ctx.test_id,
        level: level as i64,
        action: store::RECOVERY_SUMMARY.into(),
        started_at_ms: store::now_ms(),
        duration_ms: ms(duration),
        outcome: if fate == Fate::Abort {
            "failed"
        } else {
            "succeeded"
        }
        .into(),
        fate: fate.as_str().into(),
        detail: format!("{} steps in {:.1} s", steps.len(), duration.as_secs_f64()),
    })?;
    Ok(Handled {
        crash_id,
        level,
        fate,
        steps,
        duration,
        record_latency,
        intact,
    })
}
