//! One supervised guest: boot it, watch it, and carry out the recovery ladder's actions
//! on it, recording the crash before acting and every attempt as it ends.

use std::time::{Duration, Instant};

use vexfs_proto::{ExecReply, ExecRequest, HealthReply, ModuleOutcome};

use crate::classify::{Category, CrashReport};
use crate::client::{AgentClient, ClientError};
use crate::recovery::{Action, Fate, Ladder, Level, Needs, Outcome, Policy, Situation, Step};
use crate::store::{self, NewAttempt, NewCrash, Store};
use crate::supervisor::{Watch, WatchOptions};
use crate::verdict::Verdict;
use crate::vm::{Vm, VmConfig, VmError};

/// How long a booting guest may take to answer Health.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a restarted guest may take to come back clean during recovery (the
/// design's recovery-time target is 30 s).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Taint letters that say the kernel is no longer clean (die, warn, soft lockup, bad
/// page, machine check).
const DIRTY_TAINT: &[char] = &['D', 'W', 'L', 'B', 'M'];
/// Mountpoint of the smoke test.
const SMOKE_MNT: &str = "/mnt/vexfs-smoke";

/// Errors of guest handling.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The agent failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The crash database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The guest came back, but not clean.
    #[error("guest not clean after restart: {0}")]
    Unclean(String),
}

/// The module under test as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// Module name (as in /proc/modules).
    pub name: String,
    /// Path of the .ko inside the guest.
    pub path: String,
    /// Load parameters.
    pub params: String,
    /// Filesystem type it registers (for the smoke test), if any.
    pub fstype: Option<String>,
}

/// A booted guest with its agent connection and watcher.
#[derive(Debug)]
pub struct Guest {
    cfg: VmConfig,
    /// The module under test.
    pub module: ModuleSpec,
    vm: Option<Vm>,
    client: AgentClient,
    /// Health at the last (re)boot.
    pub health: HealthReply,
    watch: Watch,
    opts: WatchOptions,
    /// Time from QEMU start to agent healthy at the last (re)boot.
    pub boot_time: Duration,
}

impl Guest {
    /// Launches a VM and waits for its agent.
    pub async fn boot(
        cfg: VmConfig,
        module: ModuleSpec,
        opts: WatchOptions,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let vm = Vm::launch(&cfg).await?;
        let (client, health) = vm.wait_for_agent(BOOT_TIMEOUT).await?;
        let watch = Watch::start(&vm, &health.boot_id, health.agent_pid, opts.clone());
        Ok(Guest {
            cfg,
            module,
            vm: Some(vm),
            client,
            health,
            watch,
            opts,
            boot_time: started.elapsed(),
        })
    }

    /// The running VM.
    pub fn vm(&self) -> Option<&Vm> {
        self.vm.as_ref()
    }

    /// A client of the agent (cheap clone).
    pub fn client(&self) -> AgentClient {
        self.client.clone()
    }

    /// The watcher.
    pub fn watch(&mut self) -> &mut Watch {
        &mut self.watch
    }

    /// The guest's kernel release.
    pub fn kernel(&self) -> &str {
        &self.health.kernel_release
    }

    /// Loads the module under test.
    pub async fn load_module(&mut self) -> Result<Outcome, GuestError> {
        Ok(load_module(&mut self.client, &self.module).await?.0)
    }

    /// Runs a command in the guest.
    pub async fn exec(
        &mut self,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<ExecReply, GuestError> {
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        };
        let mut client = self
            .client
            .clone()
            .with_call_timeout(timeout + Duration::from_secs(5));
        Ok(client.exec(req).await?)
    }

    /// Mount, write, read back, list and unmount the module's filesystem.
    pub async fn smoke_test(&mut self) -> Outcome {
        let Some(fs) = self.module.fstype.clone() else {
            // Not a filesystem: a live module is all we can check.
            return match self.client.list_modules().await {
                Ok(l)
                    if l.modules
                        .iter()
                        .any(|m| m.name == self.module.name && m.state == "Live") =>
                {
                    Outcome::Succeeded
                }
                _ => Outcome::Failed,
            };
        };
        let script = format!(
            "set -e; mkdir -p {SMOKE_MNT}; mount -t {fs} none {SMOKE_MNT}; \
             echo smoke > {SMOKE_MNT}/f; cat {SMOKE_MNT}/f; ls {SMOKE_MNT}; umount {SMOKE_MNT}"
        );
        match self
            .exec(&["sh", "-c", &script], Duration::from_secs(20))
            .await
        {
            Ok(r) if r.exit_code == 0 && r.stdout.starts_with(b"smoke\n") => Outcome::Succeeded,
            Ok(r) if r.timed_out => Outcome::Hung,
            Ok(_) => Outcome::Failed,
            Err(_) => Outcome::Hung,
        }
    }

    /// Sysrq w/l/m (blocked tasks, all-CPU backtraces, memory) through the agent while
    /// it answers, else the QMP keyboard; bounded and timed (see [`crate::forensics`]).
    pub async fn forensics(&mut self) -> String {
        let Some(vm) = &self.vm else {
            return String::new();
        };
        crate::forensics::collect_vm(vm, Some(self.client.clone()))
            .await
            .render()
    }

    /// Hard reset over QMP.
    async fn system_reset(&mut self) -> Outcome {
        match &self.vm {
            Some(vm) => match vm.qmp().system_reset().await {
                Ok(()) => Outcome::Succeeded,
                Err(_) => Outcome::Failed,
            },
            None => Outcome::Failed,
        }
    }

    /// Kills QEMU and boots a fresh VM from the same configuration.
    async fn relaunch(&mut self) -> Outcome {
        if let Some(vm) = self.vm.take() {
            vm.kill();
        }
        match Vm::launch(&self.cfg).await {
            Ok(vm) => {
                self.vm = Some(vm);
                Outcome::Succeeded
            }
            Err(e) => {
                tracing::warn!("relaunch failed: {e}");
                Outcome::Failed
            }
        }
    }

    /// Waits for the agent of a new boot: healthy, a new boot id, a clean kernel.
    async fn verify_clean_boot(&mut self, old_boot: &str) -> Result<(), GuestError> {
        let vm = self
            .vm
            .as_ref()
            .ok_or_else(|| GuestError::Unclean("no VM".into()))?;
        let started = Instant::now();
        loop {
            let left = VERIFY_TIMEOUT.saturating_sub(started.elapsed());
            let (client, health) = vm.wait_for_agent(left).await?;
            if health.boot_id == old_boot {
                if started.elapsed() > VERIFY_TIMEOUT {
                    return Err(GuestError::Unclean("boot id did not change".into()));
                }
                // The old agent still answers while the reset takes effect.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if let Some(bad) = health.taint_flags.chars().find(|c| DIRTY_TAINT.contains(c)) {
                return Err(GuestError::Unclean(format!(
                    "kernel tainted {bad} ({})",
                    health.taint_flags
                )));
            }
            self.boot_time = started.elapsed();
            self.watch = Watch::start(vm, &health.boot_id, health.agent_pid, self.opts.clone());
            self.client = client;
            self.health = health;
            return Ok(());
        }
    }

    async fn kill_stuck(&mut self) -> Outcome {
        let Some(pid) = self.watch.stuck_pid() else {
            return Outcome::Hung;
        };
        let script = format!(
            "kill -KILL {pid} 2>/dev/null; sleep 1; \
             s=$(cat /proc/{pid}/stat 2>/dev/null | sed 's/.*) //' | cut -c1); \
             [ -z \"$s\" ] || [ \"$s\" = Z ]"
        );
        match self
            .exec(&["sh", "-c", &script], Duration::from_secs(10))
            .await
        {
            Ok(r) if r.exit_code == 0 => Outcome::Succeeded,
            _ => Outcome::Hung,
        }
    }

    /// Performs one ladder action.
    async fn perform(
        &mut self,
        action: &Action,
        old_boot: &str,
        forensics: &mut String,
    ) -> Outcome {
        match action {
            Action::KillWorkload => self.kill_stuck().await,
            Action::UnloadModule { deadline } => {
                let name = self.module.name.clone();
                let req = vexfs_proto::UnloadModuleRequest {
                    name,
                    deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
                    force: false,
                };
                match self.client.unload_module(req).await {
                    Ok(r) => module_outcome(&r),
                    Err(_) => Outcome::Hung,
                }
            }
            Action::CheckLeaks => Outcome::Succeeded,
            Action::LoadModule => self.load_module().await.unwrap_or(Outcome::Failed),
            Action::SmokeTest => self.smoke_test().await,
            Action::Backoff { delay } => {
                tokio::time::sleep(*delay).await;
                Outcome::Succeeded
            }
            Action::CollectForensics => {
                forensics.push_str(&self.forensics().await);
                Outcome::Succeeded
            }
            Action::SystemReset => self.system_reset().await,
            Action::RelaunchVm => self.relaunch().await,
            Action::VerifyCleanBoot => match self.verify_clean_boot(old_boot).await {
                Ok(()) => Outcome::Succeeded,
                Err(e) => {
                    tracing::warn!("verify clean boot: {e}");
                    Outcome::Failed
                }
            },
            Action::ResumeFromCheckpoint => Outcome::Succeeded,
        }
    }

    /// Sees whether the VM is alive and QMP answers.
    async fn vm_liveness(&self) -> (bool, bool) {
        match &self.vm {
            Some(vm) if vm.try_exit_status().is_none() => {
                let qmp = tokio::time::timeout(Duration::from_secs(2), vm.qmp().query_status())
                    .await
                    .is_ok_and(|r| r.is_ok());
                (true, qmp)
            }
            _ => (false, false),
        }
    }
}

/// Loads `module` through `client`; a module already loaded counts as loaded. Returns
/// the outcome and the agent's reply (for its detail).
pub(crate) async fn load_module(
    client: &mut AgentClient,
    module: &ModuleSpec,
) -> Result<(Outcome, vexfs_proto::ModuleReply), ClientError> {
    let r = client
        .load_module(vexfs_proto::LoadModuleRequest {
            path: module.path.clone(),
            params: module.params.clone(),
        })
        .await?;
    Ok((module_outcome(&r), r))
}

fn module_outcome(r: &vexfs_proto::ModuleReply) -> Outcome {
    match ModuleOutcome::try_from(r.outcome) {
        Ok(ModuleOutcome::Ok) => Outcome::Succeeded,
        Ok(ModuleOutcome::Hung) => Outcome::Hung,
        // Loading a module that is already there is what we wanted.
        _ if r.detail.contains("exists") => Outcome::Succeeded,
        _ => Outcome::Failed,
    }
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
}

impl Handled {
    /// Recovery succeeded (the run can go on).
    pub fn succeeded(&self) -> bool {
        self.fate != Fate::Abort
    }
}

/// A crash row from a classified report.
pub fn crash_row(
    report: &CrashReport,
    kernel: &str,
    verdict: &str,
    ctx: &CrashContext,
) -> NewCrash {
    NewCrash {
        run_id: ctx.run_id,
        test_id: ctx.test_id,
        category: report.category.as_str().into(),
        severity: report.severity.as_str().into(),
        recovery: report.recovery.as_str().into(),
        title: report.title.clone(),
        signature: report.signature.clone(),
        corrupted: report.corrupted,
        kernel: kernel.into(),
        module: report.guilty_module.clone().unwrap_or_default(),
        test_name: ctx.test_name.clone(),
        verdict: verdict.into(),
        detected_at_ms: store::now_ms(),
        report: report.report.clone(),
        ..Default::default()
    }
}

/// A crash row for a verdict that no kernel report explains (a frozen VM, a dead
/// QEMU, a dead agent).
pub fn verdict_row(verdict: &Verdict, kernel: &str, ctx: &CrashContext) -> NewCrash {
    let (category, severity, recovery, title) = match verdict {
        Verdict::GuestHung => (
            "system_hang",
            "critical",
            "vm_restart",
            "no output from guest".to_string(),
        ),
        Verdict::GuestPanicked => (
            "kernel_panic",
            "critical",
            "vm_restart",
            "kernel panic: unknown".to_string(),
        ),
        Verdict::VmmDead { code } => (
            "other",
            "critical",
            "vm_restart",
            format!(
                "qemu exited ({})",
                code.map_or("killed by a signal".into(), |c| format!("status {c}"))
            ),
        ),
        // Init restarts the agent; a smoke test tells whether the guest is whole, and
        // the ladder escalates when it is not.
        Verdict::AgentDead => (
            "other",
            "moderate",
            "none",
            "agent died in a live guest".to_string(),
        ),
        Verdict::VmmHung => (
            "system_hang",
            "critical",
            "vm_restart",
            "qemu stopped answering (VMM frozen)".to_string(),
        ),
        Verdict::BackendDead => (
            "other",
            "high",
            "vm_restart",
            "vsock backend (vhost-device-vsock) exited".to_string(),
        ),
        Verdict::Rebooted => (
            "kernel_panic",
            "critical",
            "vm_restart",
            "unexpected reboot".to_string(),
        ),
        other => ("other", "low", "none", format!("verdict {}", other.name())),
    };
    NewCrash {
        run_id: ctx.run_id,
        test_id: ctx.test_id,
        category: category.into(),
        severity: severity.into(),
        recovery: recovery.into(),
        signature: title.clone(),
        title,
        kernel: kernel.into(),
        test_name: ctx.test_name.clone(),
        verdict: verdict.name().into(),
        detected_at_ms: store::now_ms(),
        ..Default::default()
    }
}

/// The crash row of an incident: the kernel's report when there is one, else the
/// verdict itself.
pub fn incident_row(
    incident: &crate::supervisor::Incident,
    kernel: &str,
    ctx: &CrashContext,
) -> NewCrash {
    match &incident.report {
        Some(r) if incident.verdict.is_failure() => {
            crash_row(r, kernel, incident.verdict.name(), ctx)
        }
        Some(r) => crash_row(r, kernel, "crash", ctx),
        None => verdict_row(&incident.verdict, kernel, ctx),
    }
}

/// A crash row for counters that grew with every cycle of an operation. The title
/// names the counters but no numbers, so the same leak dedupes across runs.
pub fn leak_row(
    leaks: &[crate::trend::Trend],
    module: &str,
    operation: &str,
    kernel: &str,
    ctx: &CrashContext,
) -> NewCrash {
    let names: Vec<&str> = leaks.iter().map(|t| t.name.as_str()).collect();
    let title = format!(
        "resource leak in {module}: {} per {operation}",
        names.join(", ")
    );
    let report = leaks
        .iter()
        .map(|t| {
            format!(
                "{}: {:+.1} {}/{operation} (99% interval {:+.1} .. {:+.1}) over {} cycles",
                t.name, t.slope, t.unit, t.lower, t.upper, t.n
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    NewCrash {
        run_id: ctx.run_id,
        test_id: ctx.test_id,
        category: Category::ResourceLeak.as_str().into(),
        severity: Category::ResourceLeak.severity().as_str().into(),
        recovery: Category::ResourceLeak.recovery().as_str().into(),
        signature: title.clone(),
        title,
        kernel: kernel.into(),
        module: module.into(),
        test_name: ctx.test_name.clone(),
        verdict: "trend".into(),
        detected_at_ms: store::now_ms(),
        report,
        ..Default::default()
    }
}

/// What a recorded crash calls for.
pub fn needs_of(category: &str, recovery: &str) -> Needs {
    match (category, recovery) {
        (_, "vm_restart") => Needs::VmRestart,
        (_, "module_reload") => Needs::ModuleReload,
        (_, "resource_cleanup") => Needs::ResourceCleanup,
        (_, "process_termination") => Needs::ProcessTermination,
        _ => Needs::None,
    }
}

/// Records the crash (before anything else), then runs the recovery ladder on the
/// guest, recording every attempt.
pub async fn handle_crash(
    guest: &mut Guest,
    store: &mut Store,
    mut crash: NewCrash,
    detected: Instant,
    ctx: &CrashContext,
    policy: Policy,
) -> Result<Handled, GuestError> {
    crash.console_excerpt = guest.watch.console_excerpt();
    let crash_id = store.record_crash(&crash)?;
    let record_latency = detected.elapsed();
    let (vm_alive, qmp_responsive) = guest.vm_liveness().await;
    let verdict = guest.watch.verdict();
    // An oops taints the kernel D; its module must never be unloaded (rmmod hangs).
    let oopsed = matches!(
        crash.category.as_str(),
        "module_crash" | "memory_corruption"
    ) || crash.report.contains("Oops") && crash.report.contains("#1");
    let situation = Situation {
        needs: needs_of(&crash.category, &crash.recovery),
        vm_alive,
        qmp_responsive,
        kernel_died: oopsed || crash.category == Category::KernelPanic.as_str(),
        guest_running: !verdict.is_failure(),
        // With the vhost-user daemon a relaunch is the reset: the daemon survives a
        // reset only when nothing connects too early, and a relaunch costs the same boot.
        reset_keeps_transport: guest
            .vm
            .as_ref()
            .is_some_and(|vm| vm.daemon_pid().is_none()),
        test_crashes: ctx.test_crashes.max(1),
    };
    let mut ladder = Ladder::new(situation, policy);
    let old_boot = guest.health.boot_id.clone();
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut last = None;
    let mut forensics = String::new();
    let (level, fate) = loop {
        match ladder.next(last) {
            Step::Do { level, action } => {
                let t0 = Instant::now();
                let at_ms = store::now_ms();
                let outcome = guest.perform(&action, &old_boot, &mut forensics).await;
                let took = t0.elapsed();
                store.record_attempt(&NewAttempt {
                    run_id: ctx.run_id,
                    crash_id: Some(crash_id),
                    test_id: ctx.test_id,
                    level: level as i64,
                    action: action.name().into(),
                    started_at_ms: at_ms,
                    duration_ms: i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
                    outcome: outcome_name(outcome).into(),
                    fate: String::new(),
                    detail: String::new(),
                })?;
                if action == Action::CollectForensics && !forensics.is_empty() {
                    store.add_forensics(crash_id, &forensics)?;
                }
                steps.push((level, action, outcome, took));
                last = Some(outcome);
            }
            Step::Done { level, fate } => break (level, fate),
        }
    };
    let duration = started.elapsed();
    if fate == Fate::Continue {
        guest.watch.acknowledge();
    }
    // The verdict row of the whole recovery: its outcome is what the stats count.
    store.record_attempt(&NewAttempt {
        run_id: ctx.run_id,
        crash_id: Some(crash_id),
        test_id: ctx.test_id,
        level: level as i64,
        action: store::RECOVERY_SUMMARY.into(),
        started_at_ms: store::now_ms(),
        duration_ms: i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
        outcome: if fate == Fate::Abort {
            "failed"
        } else {
            "succeeded"
        }
        .into(),
        fate: fate_name(fate).into(),
        detail: format!("{} steps in {:.1} s", steps.len(), duration.as_secs_f64()),
    })?;
    Ok(Handled {
        crash_id,
        level,
        fate,
        steps,
        duration,
        record_latency,
    })
}

/// Name of an outcome for the database.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Hung => "hung",
    }
}

/// Name of a fate for the database.
pub fn fate_name(f: Fate) -> &'static str {
    match f {
        Fate::Continue => "continue",
        Fate::SkipCurrent => "skip",
        Fate::RestartRequired => "restart_required",
        Fate::Abort => "abort",
    }
}
