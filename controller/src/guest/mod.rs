//! One supervised guest: boot it, watch it, and carry out the recovery ladder's actions
//! on it ([`GuestActions`] for the real VM); [`handle_crash`] records the crash before
//! acting and every attempt as it ends.

#[cfg(test)]
pub(crate) mod fake;
mod fresh;
mod leaks;
mod recover;
#[cfg(test)]
pub(crate) mod tests;

use std::time::{Duration, Instant};

use vexfs_proto::{Counters, ExecReply, ExecRequest, HealthReply, ModuleOutcome, SampleRequest};

use crate::client::{AgentClient, ClientError};
use crate::recovery::{Action, Outcome};
use crate::store;
use crate::supervisor::{Watch, WatchOptions};
use crate::vm::restart::{self, StartedFrom};
use crate::vm::{Vm, VmConfig, VmError};

pub use fresh::{Judged, judge_restart};
pub use leaks::leak_check;
pub use recover::{
    ARTIFACTS_STEP, DUMP_STEP, DumpPoint, DumpStep, Keep, dump_point, handle_crash_keeping,
};
pub use recover::{
    Assessment, CrashContext, GuestActions, Handled, Performed, handle_crash, kernel_died,
};

/// How long a booting guest may take to answer Health.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a restarted guest may take to come back clean during recovery before the
/// ladder tries again. The recovery-time target (30 s) is measured, not enforced here: a
/// loaded CI machine boots a TCG guest several times slower than an idle one.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed stuck task may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long recovery waits for the agent's view of the guest before deciding without it.
const ASSESS_TIMEOUT: Duration = Duration::from_secs(2);
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
    /// What the smoke test mounts (`none` for an in-memory filesystem, else a device).
    pub smoke_source: String,
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
    /// Counters sampled before the current test: what `check_leaks` compares with.
    baseline: Option<Counters>,
    /// The agent of a guest that `relaunch` restored or booted, for `verify_clean_boot`.
    pending: Option<(AgentClient, HealthReply)>,
    /// How the running guest started: restored from the snapshot or cold booted.
    pub started_from: StartedFrom,
}

impl Guest {
    /// Starts a guest and waits for its agent: restored from the configuration's
    /// snapshot (taken on first use) when `cfg` asks for snapshots, else cold booted.
    pub async fn boot(
        cfg: VmConfig,
        module: ModuleSpec,
        opts: WatchOptions,
    ) -> Result<Guest, GuestError> {
        let s = restart::restore_or_boot(&cfg, BOOT_TIMEOUT).await?;
        let watch = Watch::start(&s.vm, &s.health.boot_id, s.health.agent_pid, opts.clone());
        Ok(Guest {
            cfg,
            module,
            vm: Some(s.vm),
            client: s.client,
            health: s.health,
            watch,
            opts,
            boot_time: s.elapsed,
            baseline: None,
            pending: None,
            started_from: s.from,
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
        self.run(argv, &[], timeout).await
    }

    /// Samples the guest's counters as the baseline a later `check_leaks` compares with
    /// (the runner takes one before each test).
    pub async fn take_baseline(&mut self) -> Result<(), GuestError> {
        self.baseline = Some(
            self.client
                .sample_counters(SampleRequest::default())
                .await?,
        );
        Ok(())
    }

    /// Runs `argv` with `stdin` in the guest; the reply, or why there is none.
    async fn run(
        &mut self,
        argv: &[&str],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<ExecReply, GuestError> {
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.to_vec(),
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
        self.smoke().await.outcome
    }

    async fn smoke(&mut self) -> Performed {
        let Some(fs) = self.module.fstype.clone() else {
            // Not a filesystem: a live module is all we can check.
            return match self.client.list_modules().await {
                Ok(l)
                    if l.modules
                        .iter()
                        .any(|m| m.name == self.module.name && m.state == "Live") =>
                {
                    Outcome::Succeeded.into()
                }
                Ok(_) => Performed::new(Outcome::Failed, format!("{} not live", self.module.name)),
                Err(e) => Performed::new(Outcome::Hung, e.to_string()),
            };
        };
        let file = format!("{SMOKE_MNT}/smoke");
        let source = self.module.smoke_source.clone();
        let steps: [(&[&str], &[u8], &[u8]); 6] = [
            (&["mkdir", "-p", SMOKE_MNT], b"", b""),
            (&["mount", "-t", &fs, &source, SMOKE_MNT], b"", b""),
            (&["tee", &file], b"smoke\n", b"smoke\n"),
            (&["cat", &file], b"", b"smoke\n"),
            (&["ls", SMOKE_MNT], b"", b"smoke\n"),
            (&["umount", SMOKE_MNT], b"", b""),
        ];
        for (argv, stdin, want) in steps {
            match self.run(argv, stdin, Duration::from_secs(20)).await {
                Ok(r) if r.exit_code == 0 && r.stdout.starts_with(want) => {}
                Ok(r) if r.timed_out => {
                    return Performed::new(Outcome::Hung, format!("{}: timed out", argv.join(" ")));
                }
                Ok(r) => {
                    return Performed::new(
                        Outcome::Failed,
                        format!(
                            "{}: exit {}: {}",
                            argv.join(" "),
                            r.exit_code,
                            String::from_utf8_lossy(&r.stderr).trim()
                        ),
                    );
                }
                Err(e) => return Performed::new(Outcome::Hung, format!("{}: {e}", argv.join(" "))),
            }
        }
        Outcome::Succeeded.into()
    }

    /// Compares the counters with the test's baseline once the module is unloaded.
    async fn check_leaks(&mut self, bound_kb: u64) -> Performed {
        let Some(base) = self.baseline.clone() else {
            return Performed::new(Outcome::Failed, "no baseline sample before the test");
        };
        match self.client.sample_counters(SampleRequest::default()).await {
            Ok(now) => match leak_check(&base, &now, bound_kb) {
                Ok(detail) => Performed::new(Outcome::Succeeded, detail),
                Err(detail) => Performed::new(Outcome::Failed, detail),
            },
            Err(e) => Performed::new(Outcome::Hung, format!("sample counters: {e}")),
        }
    }

    /// Sysrq w/l/m (blocked tasks, all-CPU backtraces, memory) through the agent while
    /// it answers, else the QMP keyboard; bounded and timed (see [`crate::forensics`]).
    pub async fn forensics(&mut self) -> String {
        let Some(vm) = &self.vm else {
            return String::new();
        };
        // A panicked (paused) guest runs no sysrq handler: asking would only spend the
        // forensics' time bounds on silence. Nothing collected is a failed action.
        if let Ok(st) = vm.qmp().query_status_timeout(ASSESS_TIMEOUT).await
            && !st.running
        {
            tracing::info!("forensics skipped: the guest is {}", st.status);
            return String::new();
        }
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

    /// Kills QEMU and starts a fresh guest from the same configuration: restored from
    /// the snapshot when it can be (a restored guest with disks has their cached blocks
    /// dropped), else cold booted. The detail says which and why it fell back; the
    /// agent is kept for `verify_clean_boot`.
    async fn relaunch(&mut self) -> Performed {
        if let Some(vm) = self.vm.take() {
            vm.kill();
        }
        self.pending = None;
        match restart::restore_or_boot(&self.cfg, BOOT_TIMEOUT).await {
            Ok(s) => {
                let detail = s.describe();
                self.boot_time = s.elapsed;
                self.vm = Some(s.vm);
                self.pending = Some((s.client, s.health));
                self.started_from = s.from;
                Performed::new(Outcome::Succeeded, detail)
            }
            Err(e) => {
                tracing::warn!("relaunch failed: {e}");
                Performed::new(Outcome::Failed, e.to_string())
            }
        }
    }

    /// Waits for the agent of a new guest: healthy, fresh (a new restore generation, or
    /// a new boot id: [`restart::fresh_state`]) and a clean kernel.
    async fn verify_clean_boot(&mut self, old: &HealthReply) -> Result<(), GuestError> {
        let vm = self
            .vm
            .as_ref()
            .ok_or_else(|| GuestError::Unclean("no VM".into()))?;
        let started = Instant::now();
        loop {
            // A relaunch measured its own start; after a system reset the wait is it.
            let (measured, (client, health)) = match self.pending.take() {
                Some(ready) => (true, ready),
                None => {
                    let left = VERIFY_TIMEOUT.saturating_sub(started.elapsed());
                    (false, vm.wait_for_agent(left).await?)
                }
            };
            match judge_restart(old, &health) {
                Judged::Stale(why) => {
                    if started.elapsed() > VERIFY_TIMEOUT {
                        return Err(GuestError::Unclean(why));
                    }
                    // The old agent still answers while the reset takes effect.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Judged::Unclean(why) => return Err(GuestError::Unclean(why)),
                Judged::Fresh(_) => {}
            }
            if !measured {
                self.boot_time = started.elapsed();
            }
            self.watch = Watch::start(vm, &health.boot_id, health.agent_pid, self.opts.clone());
            self.client = client;
            self.health = health;
            return Ok(());
        }
    }

    /// Kills the task the watcher last saw stuck and waits for it to be gone.
    async fn kill_stuck(&mut self) -> Performed {
        let Some(pid) = self.watch.stuck_pid() else {
            return Performed::new(Outcome::Hung, "no stuck task known");
        };
        match self.client.kill_and_wait(pid, KILL_WAIT).await {
            Ok(r) if r.gone => Performed::new(Outcome::Succeeded, format!("pid {pid} gone")),
            Ok(r) => Performed::new(
                Outcome::Hung,
                match &r.stuck {
                    Some(h) => format!(
                        "pid {pid} did not die: {}",
                        crate::client::unkillable_summary(h)
                    ),
                    None => format!("pid {pid} did not die (state {})", r.state),
                },
            ),
            Err(e) => Performed::new(Outcome::Hung, format!("kill {pid}: {e}")),
        }
    }
}

impl GuestActions for Guest {
    fn kernel(&self) -> String {
        self.health.kernel_release.clone()
    }

    fn console_excerpt(&self) -> String {
        self.watch.console_excerpt()
    }

    async fn assess(&mut self) -> Assessment {
        let (vm_alive, qmp_responsive) = match &self.vm {
            Some(vm) if vm.try_exit_status().is_none() => {
                let qmp = tokio::time::timeout(ASSESS_TIMEOUT, vm.qmp().query_status())
                    .await
                    .is_ok_and(|r| r.is_ok());
                (true, qmp)
            }
            _ => (false, false),
        };
        let mut client = self.client.clone().with_call_timeout(ASSESS_TIMEOUT);
        let taint_mask = match client.health().await {
            Ok(h) if vm_alive => Some(h.taint_mask),
            _ => None,
        };
        Assessment {
            vm_alive,
            qmp_responsive,
            // With the vhost-user daemon a relaunch is the reset: the daemon survives a
            // reset only when nothing connects too early, and a relaunch costs the same
            // boot.
            reset_keeps_transport: self.vm.as_ref().is_some_and(|vm| vm.daemon_pid().is_none()),
            taint_mask,
        }
    }

    async fn perform(&mut self, action: &Action) -> Performed {
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
                    Ok(r) => Performed::new(module_outcome(&r), r.detail),
                    Err(e) => Performed::new(Outcome::Hung, e.to_string()),
                }
            }
            Action::CheckLeaks { bound_kb } => self.check_leaks(*bound_kb).await,
            Action::LoadModule => match load_module(&mut self.client, &self.module).await {
                Ok((o, r)) => Performed::new(o, r.detail),
                Err(e) => Performed::new(Outcome::Failed, e.to_string()),
            },
            Action::SmokeTest => self.smoke().await,
            Action::Backoff { delay } => {
                tokio::time::sleep(*delay).await;
                Outcome::Succeeded.into()
            }
            Action::CollectForensics => {
                let text = self.forensics().await;
                Performed {
                    outcome: if text.is_empty() {
                        Outcome::Failed
                    } else {
                        Outcome::Succeeded
                    },
                    detail: format!("{} bytes", text.len()),
                    forensics: Some(text),
                }
            }
            Action::SystemReset => self.system_reset().await.into(),
            Action::RelaunchVm => self.relaunch().await,
            Action::VerifyCleanBoot => {
                let old = self.health.clone();
                match self.verify_clean_boot(&old).await {
                    Ok(()) => Performed::new(
                        Outcome::Succeeded,
                        fresh::verified_detail(&old, &self.health, self.boot_time),
                    ),
                    Err(e) => Performed::new(Outcome::Failed, e.to_string()),
                }
            }
        }
    }

    fn acknowledge(&mut self) {
        self.watch.acknowledge();
    }

    async fn dump_memory(
        &mut self,
        dir: &std::path::Path,
        limits: crate::vm::dump::DumpLimits,
    ) -> Result<crate::vm::dump::Dump, crate::vm::dump::DumpError> {
        let vm = self
            .vm
            .as_ref()
            .ok_or_else(|| crate::vm::dump::DumpError::NoVm("no VM".into()))?;
        crate::vm::dump::capture(vm.qmp(), dir, self.cfg.memory_mib, limits).await
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
        // Loading a module that is already there is what we wanted.
        Ok(ModuleOutcome::Ok | ModuleOutcome::AlreadyLoaded) => Outcome::Succeeded,
        Ok(ModuleOutcome::Hung) => Outcome::Hung,
        _ => Outcome::Failed,
    }
}
