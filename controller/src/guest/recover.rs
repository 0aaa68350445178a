//! Handling one incident: record it (and check the record reads back intact) before
//! anything else, then drive the recovery ladder against a guest, recording every
//! action as it ends. The guest is a trait, so this is unit tested with a scripted one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::artifacts::{self, Artifact};
use crate::classify::Category;
use crate::incident::Incident;
use crate::plan::{DumpOn, ForensicsConfig};
use crate::recovery::{Action, Fate, Ladder, Level, Outcome, Policy, Situation, Step};
use crate::store::{self, NewAttempt, Store};
use crate::vm::dump::{Dump, DumpError, DumpLimits};

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
    /// Dumps the guest's memory into `dir` (a vmcore), within `limits`.
    async fn dump_memory(&mut self, dir: &Path, limits: DumpLimits) -> Result<Dump, DumpError>;
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
    /// The vmcore step, when one was taken or tried.
    pub dump: Option<DumpStep>,
    /// The crash's artifacts folder as written after the ladder (empty without a
    /// [`Keep`]).
    pub artifacts: Vec<Artifact>,
}

/// Where a crash's artifacts go and which crashes get a vmcore.
#[derive(Debug, Clone)]
pub struct Keep {
    /// The crash database file: the artifacts folders sit beside it.
    pub db_path: PathBuf,
    /// The plan's vmcore settings.
    pub forensics: ForensicsConfig,
    /// The unstripped module the guest ran, copied into the folder and used for source
    /// lines (none: the cached image's, when there is one).
    pub module_ko: Option<PathBuf>,
}

/// Attempt-row name of the vmcore step in the recovery timeline.
pub const DUMP_STEP: &str = "dump_vmcore";
/// Attempt-row name of writing the artifacts folder.
pub const ARTIFACTS_STEP: &str = "write_artifacts";

/// What the vmcore step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpStep {
    /// Ladder level it ran at.
    pub level: Level,
    /// How it went.
    pub outcome: Outcome,
    /// The dump, when it worked.
    pub dump: Option<Dump>,
    /// Size and format, or why it failed.
    pub detail: String,
    /// How long it took.
    pub duration: Duration,
}

/// When in the ladder a vmcore is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpPoint {
    /// Before the first action (an oops: before anything unloads or resets).
    First,
    /// Before the first reset or relaunch (a panic, a hang: after the forensics).
    BeforeReset,
}

/// When a crash of `category` gets its vmcore under `cfg`, if at all.
pub fn dump_point(category: Category, cfg: &ForensicsConfig) -> Option<DumpPoint> {
    if !cfg.dumps(category) {
        return None;
    }
    match DumpOn::of(category)? {
        DumpOn::Oops => Some(DumpPoint::First),
        DumpOn::Panic | DumpOn::Hang => Some(DumpPoint::BeforeReset),
    }
}

fn due(point: DumpPoint, action: &Action) -> bool {
    point == DumpPoint::First || matches!(action, Action::SystemReset | Action::RelaunchVm)
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
    handle_crash_keeping(guest, store, incident, ctx, policy, None).await
}

/// [`handle_crash`], and with `keep` the crash's vmcore (a panic's before the relaunch,
/// as the plan asks) and its artifacts folder, each timed as a step of the recovery.
/// A failed dump or folder is recorded as a failed step; recovery goes on.
pub async fn handle_crash_keeping<G: GuestActions>(
    guest: &mut G,
    store: &mut Store,
    incident: &Incident,
    ctx: &CrashContext,
    policy: Policy,
    keep: Option<&Keep>,
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
    let mut point = keep.and_then(|k| dump_point(incident.category, &k.forensics));
    let mut dump = None;
    let (level, fate) = loop {
        match ladder.next(last) {
            Step::Do { level, action } => {
                if let (Some(p), Some(k)) = (point, keep)
                    && due(p, &action)
                {
                    point = None;
                    let d = take_dump(guest, store, ctx, crash_id, level, a, k).await?;
                    dump = Some(d);
                }
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
    if fate == Fate::Continue {
        guest.acknowledge();
    }
    let artifacts = match keep {
        Some(k) => keep_artifacts(store, ctx, crash_id, level, &row, incident, k)?,
        None => Vec::new(),
    };
    let duration = started.elapsed();
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
        dump,
        artifacts,
    })
}

fn attempt(ctx: &CrashContext, crash_id: i64, level: Level, action: &str) -> NewAttempt {
    NewAttempt {
        run_id: ctx.run_id,
        crash_id: Some(crash_id),
        test_id: ctx.test_id,
        level: level as i64,
        action: action.into(),
        started_at_ms: store::now_ms(),
        duration_ms: 0,
        outcome: String::new(),
        fate: String::new(),
        detail: String::new(),
    }
}

/// Takes the crash's vmcore into its artifacts folder (QEMU alive and answering QMP)
/// and keeps only the plan's newest ones; records it as its own step.
#[allow(clippy::too_many_arguments)]
async fn take_dump<G: GuestActions>(
    guest: &mut G,
    store: &mut Store,
    ctx: &CrashContext,
    crash_id: i64,
    level: Level,
    a: Assessment,
    keep: &Keep,
) -> Result<DumpStep, GuestError> {
    let mut row = attempt(ctx, crash_id, level, DUMP_STEP);
    let t0 = Instant::now();
    let result = if a.vm_alive && a.qmp_responsive {
        let dir = artifacts::dir(&keep.db_path, crash_id);
        guest.dump_memory(&dir, keep.forensics.limits()).await
    } else {
        Err(DumpError::NoVm(
            if a.vm_alive {
                "QMP does not answer"
            } else {
                "QEMU is gone"
            }
            .into(),
        ))
    };
    let duration = t0.elapsed();
    let (outcome, dump, detail) = match result {
        Ok(d) => {
            let mut detail = format!(
                "{} bytes ({:.1} MiB) {}",
                d.bytes,
                d.bytes as f64 / 1048576.0,
                d.format.as_str()
            );
            match artifacts::prune_vmcores(&keep.db_path, keep.forensics.keep_vmcores) {
                Ok(gone) if !gone.is_empty() => {
                    detail.push_str(&format!("; {} older vmcore(s) deleted", gone.len()));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(crash_id, "pruning vmcores: {e}"),
            }
            (Outcome::Succeeded, Some(d), detail)
        }
        Err(e) => {
            tracing::warn!(crash_id, "no vmcore: {e}");
            let outcome = match e {
                DumpError::Qmp(crate::vm::qmp::QmpError::Timeout(_)) => Outcome::Hung,
                _ => Outcome::Failed,
            };
            (outcome, None, e.to_string())
        }
    };
    row.duration_ms = ms(duration);
    row.outcome = outcome.as_str().into();
    row.detail = detail.clone();
    store.record_attempt(&row)?;
    Ok(DumpStep {
        level,
        outcome,
        dump,
        detail,
        duration,
    })
}

/// Writes the crash's artifacts folder (console, report, symbolized report,
/// forensics, the module .ko; the vmcore is already there) and records it as a step.
#[allow(clippy::too_many_arguments)]
fn keep_artifacts(
    store: &mut Store,
    ctx: &CrashContext,
    crash_id: i64,
    level: Level,
    crash: &store::NewCrash,
    incident: &Incident,
    keep: &Keep,
) -> Result<Vec<Artifact>, GuestError> {
    let mut row = attempt(ctx, crash_id, level, ARTIFACTS_STEP);
    let t0 = Instant::now();
    let module_ko = keep.module_ko.clone().or_else(|| {
        artifacts::image_module_ko(
            &crate::vm::image::default_images_dir(),
            &crash.kernel,
            incident.module.as_deref().unwrap_or(&crash.module),
        )
    });
    let inputs = artifacts::Inputs {
        console: &crash.console_excerpt,
        report: &crash.report,
        forensics: &crash.forensics,
        module_ko: module_ko.as_deref(),
    };
    let (outcome, detail, kept) = match artifacts::write(&keep.db_path, crash_id, &inputs) {
        Ok(kept) => (
            Outcome::Succeeded,
            format!(
                "{} files in {}",
                kept.len(),
                artifacts::dir(&keep.db_path, crash_id).display()
            ),
            kept,
        ),
        Err(e) => {
            tracing::warn!(crash_id, "artifacts: {e}");
            (Outcome::Failed, e.to_string(), Vec::new())
        }
    };
    row.duration_ms = ms(t0.elapsed());
    row.outcome = outcome.as_str().into();
    row.detail = detail;
    store.record_attempt(&row)?;
    Ok(kept)
}
