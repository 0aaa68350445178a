//! The step interpreter: runs a test's steps in the guest from a given index, keeping
//! which step is running (so a crash can be placed, and the test resumed after it)
//! and a record of every step for the timeline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vexfs_proto::{ModuleOutcome, UnloadModuleRequest};

use super::cycles::cycles;
use super::exec::{self, argv_ok, shell, sunreclaim_kb};
use crate::client::AgentClient;
use crate::guest::{self, ModuleSpec};
use crate::plan::{ExecStep, Exit, MountStep, Step, Test};
use crate::recovery::Outcome;
use crate::results::StepRecord;
use crate::store;
use crate::trend;

/// Why a run of steps stopped.
#[derive(Debug)]
pub(super) enum StepsEnd {
    /// All steps done.
    Done,
    /// An assertion failed.
    Failed(String),
    /// Counters grew with every cycle.
    Leak(Vec<trend::Trend>),
}

/// A short name of a step for the timeline.
pub(super) fn describe(step: &Step) -> String {
    match step {
        Step::Load => "load".into(),
        Step::Unload => "unload".into(),
        Step::Reload => "reload".into(),
        Step::Exec(e) => format!("exec: {}", e.cmd),
        Step::Mount(m) => format!("mount {}", m.target),
        Step::Unmount(t) => format!("unmount {t}"),
        Step::Trigger(f) => format!("trigger {f}"),
        Step::Cycles(c) => format!("cycles x{} x{}: {}", c.count, c.threads, c.cmd),
        Step::Sample(l) => format!("sample {l}"),
        Step::NoLeakSince(c) => format!("no_leak_since {}", c.since),
        Step::Sleep(s) => format!("sleep {s}"),
    }
}

/// One test's steps against one guest.
pub(super) struct Steps<'a> {
    /// The agent (replaced after a VM restart).
    pub(super) client: AgentClient,
    module: ModuleSpec,
    trigger_path: String,
    test: &'a Test,
    deadline: Instant,
    samples: HashMap<String, f64>,
    /// Index of the step that runs (or ran last).
    pub(super) current: usize,
    /// Which run of the test this is (1 first).
    pub(super) attempt: u32,
    /// Every step run so far.
    pub(super) records: Vec<StepRecord>,
    /// Measurements the steps recorded.
    pub(super) metrics: Vec<(String, f64)>,
}

impl<'a> Steps<'a> {
    /// The steps of `test`, to finish by `deadline`.
    pub(super) fn new(
        client: AgentClient,
        module: ModuleSpec,
        trigger_path: String,
        test: &'a Test,
        deadline: Instant,
    ) -> Self {
        Self {
            client,
            module,
            trigger_path,
            test,
            deadline,
            samples: HashMap::new(),
            current: 0,
            attempt: 1,
            records: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// After a VM restart: the new guest's agent; samples of the old guest mean
    /// nothing there.
    pub(super) fn restarted(&mut self, client: AgentClient) {
        self.client = client;
        self.samples.clear();
    }

    /// Marks the running step's record (a crash came while it ran).
    pub(super) fn mark_current(&mut self, outcome: &str) {
        if let Some(r) = self.records.last_mut().filter(|r| r.index == self.current) {
            r.outcome = outcome.into();
            r.duration_ms = u64::try_from(store::now_ms() - r.started_at_ms).unwrap_or(0);
        }
    }

    /// Runs the steps from `start` to the end, or to the first that fails.
    pub(super) async fn run_from(&mut self, start: usize) -> StepsEnd {
        for index in start..self.test.steps.len() {
            self.current = index;
            let step = &self.test.steps[index];
            let t0 = Instant::now();
            self.records.push(StepRecord {
                index,
                step: describe(step),
                started_at_ms: store::now_ms(),
                duration_ms: 0,
                outcome: "interrupted".into(),
                attempt: self.attempt,
            });
            let end = self.one(step).await;
            if let Some(r) = self.records.last_mut() {
                r.duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                r.outcome = match &end {
                    None => "passed",
                    Some(StepsEnd::Leak(_)) => "leaked",
                    Some(_) => "failed",
                }
                .into();
            }
            if let Some(end) = end {
                return end;
            }
        }
        StepsEnd::Done
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs one step: None when it passed.
    async fn one(&mut self, step: &Step) -> Option<StepsEnd> {
        let left = self.left();
        let r = match step {
            Step::Cycles(c) => {
                return match cycles(&mut self.client, c, self.deadline, &mut self.metrics).await {
                    Ok(None) => None,
                    Ok(Some(leaks)) => Some(StepsEnd::Leak(leaks)),
                    Err(e) => Some(StepsEnd::Failed(e)),
                };
            }
            Step::Load => self.load().await,
            Step::Unload => self.unload().await,
            Step::Reload => match self.unload().await {
                Ok(()) => self.load().await,
                e => e,
            },
            Step::Exec(s) => {
                let t = s
                    .timeout_s
                    .map_or(left, |t| Duration::from_secs(t).min(left));
                match shell(&mut self.client, &s.cmd, Vec::new(), s.uid, t).await {
                    Ok(r) => exec::check(s, &r),
                    Err(e) => Err(e),
                }
            }
            Step::Mount(m) => self.mount(m, left).await,
            Step::Unmount(target) => argv_ok(&mut self.client, &["umount", target], left)
                .await
                .map(drop),
            Step::Trigger(fault) => return self.trigger(fault).await,
            Step::Sample(label) => match sunreclaim_kb(&mut self.client).await {
                Ok(v) => {
                    self.samples.insert(label.clone(), v);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::NoLeakSince(c) => match sunreclaim_kb(&mut self.client).await {
                Ok(now) => match self.samples.get(&c.since) {
                    Some(then) => {
                        let grew = now - then;
                        self.metrics
                            .push((format!("sunreclaim_growth_kb_since_{}", c.since), grew));
                        if grew > c.max_kb as f64 {
                            Err(format!(
                                "SUnreclaim grew {grew:.0} kB since {:?} (max {})",
                                c.since, c.max_kb
                            ))
                        } else {
                            Ok(())
                        }
                    }
                    // The sample was taken in a guest a restart has since replaced.
                    None => Err(format!(
                        "no sample {:?} in this guest (taken before a restart, or never)",
                        c.since
                    )),
                },
                Err(e) => Err(e),
            },
            Step::Sleep(s) => {
                tokio::time::sleep(Duration::from_secs_f64(*s).min(left)).await;
                Ok(())
            }
        };
        r.err().map(StepsEnd::Failed)
    }

    async fn load(&mut self) -> Result<(), String> {
        match guest::load_module(&mut self.client, &self.module).await {
            Ok((Outcome::Succeeded, _)) => Ok(()),
            Ok((_, reply)) => Err(format!("load: {}", reply.detail)),
            Err(e) => Err(format!("load: {e}")),
        }
    }

    async fn unload(&mut self) -> Result<(), String> {
        let r = self
            .client
            .unload_module(UnloadModuleRequest {
                name: self.module.name.clone(),
                deadline_ms: 10_000,
                force: false,
            })
            .await
            .map_err(|e| format!("unload: {e}"))?;
        if r.outcome == ModuleOutcome::Ok as i32 {
            Ok(())
        } else {
            Err(format!("unload: {}", r.detail))
        }
    }

    async fn mount(&mut self, m: &MountStep, left: Duration) -> Result<(), String> {
        if m.create {
            argv_ok(&mut self.client, &["mkdir", "-p", &m.target], left).await?;
        }
        let fs = self
            .module
            .fstype
            .clone()
            .unwrap_or_else(|| self.module.name.clone());
        let mut argv = vec!["mount", "-t", fs.as_str()];
        if !m.options.is_empty() {
            argv.extend(["-o", m.options.as_str()]);
        }
        let source = m.source_arg();
        argv.extend([source.as_str(), m.target.as_str()]);
        let s = ExecStep {
            cmd: argv.join(" "),
            exit: if m.fails_with.is_some() {
                Exit::Word("nonzero".into())
            } else {
                Exit::Code(0)
            },
            stdout: None,
            stderr: m.fails_with.clone(),
            uid: 0,
            timeout_s: None,
        };
        let argv = argv.iter().map(|s| s.to_string()).collect();
        let r = exec::run(&mut self.client, argv, Vec::new(), Vec::new(), 0, left).await?;
        exec::check(&s, &r)
    }

    /// Writes the fault's name to the module's trigger file. The writer may never come
    /// back (a deadlock, a panic), so it runs on its own; a test that expects a crash
    /// then waits here for it until its deadline.
    async fn trigger(&mut self, fault: &str) -> Option<StepsEnd> {
        let left = self.left();
        let mut client = self.client.clone();
        let argv = vec!["tee".to_string(), self.trigger_path.clone()];
        let stdin = format!("{fault}\n").into_bytes();
        tokio::spawn(async move {
            let _ = exec::run(&mut client, argv, stdin, Vec::new(), 0, left).await;
        });
        if self.test.expect_crash.is_some() {
            tokio::time::sleep(left).await;
            return Some(StepsEnd::Failed(format!(
                "expected crash {:?} did not happen within {} s",
                self.test.expect_crash.as_deref().unwrap_or(""),
                self.test.timeout_s
            )));
        }
        None
    }
}
