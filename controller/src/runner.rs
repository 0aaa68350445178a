//! Runs a plan across a matrix of kernels: one guest per kernel (up to `jobs` at a
//! time), each test's steps through the agent while the supervisor watches, every
//! crash recorded and recovered from, the run checkpointed in the database (test
//! statuses) so `--resume` picks up where a killed controller stopped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vexfs_proto::{ExecRequest, ModuleOutcome, SampleRequest, UnloadModuleRequest};

use crate::client::{AgentClient, unkillable_summary};
use crate::guest::{self, CrashContext, Guest, ModuleSpec};
use crate::plan::{CyclesStep, ExecStep, Plan, Step, Test};
use crate::recovery::{Fate, Policy};
use crate::results::{
    CrashSummary, KernelResults, RecoveryEvent, RunResults, TestResult, TestStatus,
};
use crate::store::{self, Store};
use crate::supervisor::WatchOptions;
use crate::trend;
use crate::verdict::Timeouts;
use crate::vm::VmConfig;
use crate::vm::image::{self, Manifest};

/// How long after a test's last step a crash is still the test's: the classifiers
/// finish an open report after 400 ms of console quiet.
const SETTLE: Duration = Duration::from_millis(1000);

/// Errors that stop a run as a whole (per-kernel trouble is recorded in the results).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crash database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No image for a kernel of the plan.
    #[error("kernel {kernel}: {source}")]
    Image {
        /// The selector.
        kernel: String,
        /// The cause.
        source: image::ImageError,
    },
    /// The resumed run's saved plan is unusable.
    #[error("cannot resume run {run}: {why}")]
    Resume {
        /// The run id.
        run: i64,
        /// What is wrong.
        why: String,
    },
    /// Bad shard or option.
    #[error("{0}")]
    Invalid(String),
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A line per test on stderr.
    Lines,
    /// On a terminal: the same lines, under them one redrawn status line with a bar
    /// per kernel (tests done, crashes, recoveries).
    Bars,
    /// Nothing.
    Quiet,
}

/// One kernel's place in the run, for the status line.
#[derive(Debug, Clone, Default)]
struct KernelStatus {
    kernel: String,
    done: usize,
    total: usize,
    crashes: usize,
    recovered: usize,
}

/// Progress output shared by the kernel tasks.
#[derive(Debug, Clone)]
struct Reporter {
    mode: Progress,
    board: Arc<std::sync::Mutex<Vec<KernelStatus>>>,
}

impl Reporter {
    fn status(board: &[KernelStatus]) -> String {
        const WIDTH: usize = 12;
        let mut line = board
            .iter()
            .map(|k| {
                let filled = (k.done * WIDTH)
                    .checked_div(k.total)
                    .unwrap_or(0)
                    .min(WIDTH);
                let short = k.kernel.split('+').next().unwrap_or(&k.kernel);
                format!(
                    "{short} [{}{}] {}/{} crashes {} recovered {}",
                    "#".repeat(filled),
                    "-".repeat(WIDTH - filled),
                    k.done,
                    k.total,
                    k.crashes,
                    k.recovered
                )
            })
            .collect::<Vec<_>>()
            .join(" | ");
        line.truncate(200);
        line
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Vec<KernelStatus>> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Prints a line (above the status line on a terminal).
    fn line(&self, msg: &str) {
        match self.mode {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("{msg}"),
            Progress::Bars => eprint!("\r\x1b[2K{msg}\n{}", Self::status(&self.board())),
        }
    }

    /// Updates one kernel's status and redraws the status line.
    fn update(&self, slot: usize, f: impl FnOnce(&mut KernelStatus)) {
        let mut board = self.board();
        if let Some(k) = board.get_mut(slot) {
            f(k);
        }
        if self.mode == Progress::Bars {
            eprint!("\r\x1b[2K{}", Self::status(&board));
        }
    }

    /// Clears the status line at the end.
    fn finish(&self) {
        if self.mode == Progress::Bars {
            eprint!("\r\x1b[2K");
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The plan.
    pub plan: Plan,
    /// Its text, saved in the database for `--resume`.
    pub plan_text: String,
    /// Kernel selectors (override the plan's when not empty).
    pub kernels: Vec<String>,
    /// Guests at a time.
    pub jobs: usize,
    /// The crash database.
    pub db: PathBuf,
    /// Run only slice I of N (1-based).
    pub shard: Option<(u32, u32)>,
    /// Resume this run id.
    pub resume: Option<i64>,
    /// Where the guest images are.
    pub images_dir: PathBuf,
    /// Progress output.
    pub progress: Progress,
}

/// What the database keeps to resume a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    plan_text: String,
    kernels: Vec<String>,
    shard: Option<(u32, u32)>,
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(u32, u32), Error> {
    let bad = || Error::Invalid(format!("--shard {s:?}: expected I/N with 1 <= I <= N"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

fn selector(k: &str) -> &str {
    k.strip_prefix("latest-").unwrap_or(k)
}

fn applies(test: &Test, release: &str) -> bool {
    test.only_kernels.is_empty()
        || test
            .only_kernels
            .iter()
            .any(|k| image::release_matches(release, selector(k)))
}

/// The tests (indices into `tests`) each kernel runs: those that apply to it, and of
/// the whole (kernel, test) matrix only shard I of N, dealt round robin.
pub fn slice(releases: &[&str], tests: &[Test], shard: Option<(u32, u32)>) -> Vec<Vec<usize>> {
    let mut owned = vec![Vec::new(); releases.len()];
    let mut n = 0u32;
    for (ki, release) in releases.iter().enumerate() {
        for (ti, t) in tests.iter().enumerate() {
            if !applies(t, release) {
                continue;
            }
            if shard.is_none_or(|(i, count)| n % count == i - 1) {
                owned[ki].push(ti);
            }
            n += 1;
        }
    }
    owned
}

/// Runs the plan (or resumes a run) and returns the results.
pub async fn run(mut cfg: RunConfig) -> Result<RunResults, Error> {
    let store = Store::open(&cfg.db)?;
    let run_id = match cfg.resume {
        Some(run) => {
            let (_, saved) = store.run_checkpoint(run)?;
            let saved: Saved = serde_json::from_str(&saved).map_err(|e| Error::Resume {
                run,
                why: e.to_string(),
            })?;
            cfg.plan =
                crate::plan::parse(&saved.plan_text, "saved plan").map_err(|e| Error::Resume {
                    run,
                    why: e.to_string(),
                })?;
            cfg.plan_text = saved.plan_text;
            cfg.kernels = saved.kernels;
            cfg.shard = saved.shard;
            run
        }
        None => {
            if cfg.kernels.is_empty() {
                cfg.kernels = cfg.plan.kernels.clone();
            }
            let saved = Saved {
                plan_text: cfg.plan_text.clone(),
                kernels: cfg.kernels.clone(),
                shard: cfg.shard,
            };
            store.begin_resumable_run(
                &cfg.plan.name,
                &serde_json::to_string(&saved).unwrap_or_default(),
            )?
        }
    };
    let started_at_ms = store::now_ms();
    let mut manifests = Vec::new();
    for k in &cfg.kernels {
        let m = image::select_image(&cfg.images_dir, Some(selector(k))).map_err(|source| {
            Error::Image {
                kernel: k.clone(),
                source,
            }
        })?;
        manifests.push(m);
    }
    let releases: Vec<&str> = manifests
        .iter()
        .map(|m| m.kernel_release.as_str())
        .collect();
    let owned = slice(&releases, &cfg.plan.tests, cfg.shard);
    let reporter = Reporter {
        mode: cfg.progress,
        board: Arc::new(std::sync::Mutex::new(
            manifests
                .iter()
                .zip(&owned)
                .map(|(m, t)| KernelStatus {
                    kernel: m.kernel_release.clone(),
                    total: t.len(),
                    ..Default::default()
                })
                .collect(),
        )),
    };
    let jobs = Arc::new(tokio::sync::Semaphore::new(cfg.jobs.max(1)));
    let plan = Arc::new(cfg.plan.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (ki, m) in manifests.iter().enumerate() {
        if owned[ki].is_empty() {
            continue;
        }
        let (jobs, plan, m, tests) = (jobs.clone(), plan.clone(), m.clone(), owned[ki].clone());
        let (db, reporter) = (cfg.db.clone(), reporter.clone());
        tasks.spawn(async move {
            let _permit = jobs.acquire_owned().await;
            let r = run_kernel(&plan, &m, &tests, run_id, &db, &reporter, ki).await;
            (ki, r)
        });
    }
    let mut kernels: Vec<(usize, KernelResults)> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((ki, r)) => kernels.push((ki, r)),
            Err(e) => tracing::error!("kernel task: {e}"),
        }
    }
    reporter.finish();
    kernels.sort_by_key(|(ki, _)| *ki);
    let kernels: Vec<KernelResults> = kernels.into_iter().map(|(_, k)| k).collect();
    let results = collect(&store, run_id, &cfg, kernels, started_at_ms)?;
    let status = if results.all_ok() { "passed" } else { "failed" };
    store.finish_run(run_id, status)?;
    Ok(results)
}

fn collect(
    store: &Store,
    run_id: i64,
    cfg: &RunConfig,
    kernels: Vec<KernelResults>,
    started_at_ms: i64,
) -> Result<RunResults, Error> {
    let mut stats = store.stats(Some(run_id))?;
    let mut timeline = Vec::new();
    for c in store.crashes(Some(run_id), i64::MAX)? {
        for a in store.attempts(c.id)? {
            if a.action == store::RECOVERY_SUMMARY {
                continue;
            }
            timeline.push(RecoveryEvent {
                kernel: c.crash.kernel.clone(),
                test: c.crash.test_name.clone(),
                crash_id: c.id,
                level: u8::try_from(a.level).unwrap_or(0),
                action: a.action,
                started_at_ms: a.started_at_ms,
                duration_ms: u64::try_from(a.duration_ms).unwrap_or(0),
                outcome: a.outcome,
            });
        }
    }
    timeline.sort_by_key(|e| e.started_at_ms);
    let results = RunResults {
        run_id,
        plan: cfg.plan.name.clone(),
        shard: cfg.shard.map(|(i, n)| format!("{i}/{n}")),
        started_at_ms,
        finished_at_ms: store::now_ms(),
        kernels,
        stats: stats.clone(),
        buckets: store.buckets()?,
        timeline,
    };
    // Continuity from the results themselves: tests that reached a verdict.
    stats.test_continuity = results.continuity();
    Ok(RunResults { stats, ..results })
}

fn say(progress: &Reporter, msg: &str) {
    progress.line(msg);
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one kernel's tests on one guest (rebooted as recovery requires).
async fn run_kernel(
    plan: &Plan,
    m: &Manifest,
    tests: &[usize],
    run_id: i64,
    db: &std::path::Path,
    progress: &Reporter,
    slot: usize,
) -> KernelResults {
    let started = Instant::now();
    let mut kr = KernelResults {
        kernel: m.kernel_release.clone(),
        accel: String::new(),
        boot_ms: 0,
        duration_ms: 0,
        time_boot_ms: 0,
        time_tests_ms: 0,
        time_recovery_ms: 0,
        tests: Vec::new(),
        harness_error: None,
    };
    let tag = format!("[{}]", m.kernel_release);
    let mut store = match Store::open(db) {
        Ok(s) => s,
        Err(e) => {
            kr.harness_error = Some(e.to_string());
            return kr;
        }
    };
    let mut vm_cfg = VmConfig::from_manifest(m);
    vm_cfg.memory_mib = plan.guest.memory_mib;
    vm_cfg.cpus = plan.guest.cpus;
    vm_cfg.extra_cmdline = plan.guest.cmdline.clone();
    let module = ModuleSpec {
        name: plan.module.name.clone(),
        path: plan.module.path.clone(),
        params: plan.module.params.clone(),
        fstype: (!plan.module.fstype.is_empty()).then(|| plan.module.fstype.clone()),
    };
    let opts = WatchOptions {
        timeouts: Timeouts {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(plan.guest.silence_s.max(2)),
        },
        counters: None,
        fd_watch: Vec::new(),
    };
    say(progress, &format!("{tag} booting"));
    let boot = Instant::now();
    let mut guest = match Guest::boot(vm_cfg, module, opts).await {
        Ok(g) => g,
        Err(e) => {
            let msg = format!("guest did not boot: {e}");
            say(progress, &format!("{tag} {msg}"));
            for &ti in tests {
                kr.tests.push(error_result(&plan.tests[ti], &msg));
            }
            kr.harness_error = Some(msg);
            return kr;
        }
    };
    kr.boot_ms = ms(boot.elapsed());
    kr.time_boot_ms = kr.boot_ms;
    kr.accel = guest
        .vm()
        .map(|v| v.accel().as_str().to_string())
        .unwrap_or_default();
    say(
        progress,
        &format!(
            "{tag} agent healthy after {:.1} s",
            boot.elapsed().as_secs_f64()
        ),
    );
    // The module under test is loaded on every boot, as the ladder does after a
    // restart, so a resumed run starts where the killed one stood.
    match guest.load_module().await {
        Ok(crate::recovery::Outcome::Succeeded) => {}
        other => say(
            progress,
            &format!("{tag} loading {} failed: {other:?}", plan.module.name),
        ),
    }
    let mut crash_counts: HashMap<String, u32> = HashMap::new();
    let mut aborted: Option<String> = None;
    let total = tests.len();
    for (i, &ti) in tests.iter().enumerate() {
        let test = &plan.tests[ti];
        let test_id = match store.test_id(run_id, &m.kernel_release, &test.name) {
            Ok(id) => id,
            Err(e) => {
                kr.tests.push(error_result(test, &e.to_string()));
                continue;
            }
        };
        if let Some(prev) = finished_result(&store, run_id, test_id, test) {
            say(
                progress,
                &format!(
                    "{tag} {}/{total} {}: {:?} (from checkpoint)",
                    i + 1,
                    test.name,
                    prev.status
                ),
            );
            progress.update(slot, |k| k.done = i + 1);
            kr.tests.push(prev);
            continue;
        }
        if let Some(why) = &aborted {
            let r = error_result(test, why);
            // Best effort: when the database is what failed, resume re-runs the test.
            let _ = store.set_test_status(test_id, "error", why);
            kr.tests.push(r);
            continue;
        }
        let ctx = CrashContext {
            run_id: Some(run_id),
            test_id: Some(test_id),
            test_name: test.name.clone(),
            test_crashes: 0,
        };
        // A database that cannot take a status cannot take crashes either: stop this
        // kernel rather than run tests whose results would be lost.
        if let Err(e) = store.set_test_status(test_id, "running", "") {
            let why = format!("{}: {e}", db.display());
            kr.tests.push(error_result(test, &why));
            kr.harness_error = Some(why.clone());
            aborted = Some(why);
            continue;
        }
        let (result, recovery_ms, mut abort) =
            run_test(&mut guest, &mut store, test, ctx, &mut crash_counts, plan).await;
        kr.time_recovery_ms += recovery_ms;
        kr.time_tests_ms += result.duration_ms.saturating_sub(recovery_ms);
        let status = status_name(result.status);
        if let Err(e) = store.set_test_status(test_id, status, &result.message) {
            // The test stays "running" in the database, so a resume runs it again.
            abort.get_or_insert(format!("{}: {e}", db.display()));
        }
        let crash = result
            .crashes
            .first()
            .map(|c| format!(" [{}]", c.title))
            .unwrap_or_default();
        say(
            progress,
            &format!(
                "{tag} {}/{total} {}: {status} in {:.1} s{crash}{}",
                i + 1,
                test.name,
                result.duration_ms as f64 / 1000.0,
                if result.message.is_empty() || result.status == TestStatus::Passed {
                    String::new()
                } else {
                    format!(" ({})", result.message)
                }
            ),
        );
        progress.update(slot, |k| {
            k.done = i + 1;
            k.crashes += result.crashes.len();
            k.recovered += result.crashes.iter().filter(|c| c.recovered).count();
        });
        kr.tests.push(result);
        if let Some(why) = abort {
            kr.harness_error = Some(why.clone());
            aborted = Some(why);
        }
    }
    if let Some(vm) = guest.vm() {
        let _ = vm.qmp().quit().await;
    }
    drop(guest);
    kr.duration_ms = ms(started.elapsed());
    kr
}

fn status_name(s: TestStatus) -> &'static str {
    match s {
        TestStatus::Passed => "passed",
        TestStatus::Failed => "failed",
        TestStatus::Crashed => "crashed",
        TestStatus::Skipped => "skipped",
        TestStatus::Error => "error",
    }
}

fn error_result(test: &Test, msg: &str) -> TestResult {
    TestResult {
        name: test.name.clone(),
        status: TestStatus::Error,
        duration_ms: 0,
        message: msg.to_string(),
        expected_crash: test.expect_crash.clone(),
        crashes: Vec::new(),
        attempts: 0,
        metrics: Vec::new(),
    }
}

/// A test the checkpoint says is done, rebuilt from the database.
fn finished_result(store: &Store, run_id: i64, test_id: i64, test: &Test) -> Option<TestResult> {
    let rows = store.tests(run_id).ok()?;
    let (_, _, _, status, attempts) = rows.into_iter().find(|r| r.0 == test_id)?;
    let status = match status.as_str() {
        "passed" => TestStatus::Passed,
        "failed" => TestStatus::Failed,
        "crashed" => TestStatus::Crashed,
        "skipped" => TestStatus::Skipped,
        _ => return None,
    };
    let crashes = store
        .crashes(Some(run_id), i64::MAX)
        .ok()?
        .into_iter()
        .filter(|c| c.crash.test_id == Some(test_id))
        .map(|c| CrashSummary {
            id: c.id,
            expected: test
                .expect_crash
                .as_deref()
                .is_some_and(|e| crash_matches(e, &c.crash.category, &c.crash.title)),
            category: c.crash.category,
            severity: c.crash.severity,
            title: c.crash.title,
            recovery_level: 0,
            fate: String::new(),
            recovery_ms: 0,
            recovered: true,
            report: c.crash.report,
        })
        .collect();
    Some(TestResult {
        name: test.name.clone(),
        status,
        duration_ms: 0,
        message: "from checkpoint".into(),
        expected_crash: test.expect_crash.clone(),
        crashes,
        attempts: u32::try_from(attempts).unwrap_or(0),
        metrics: Vec::new(),
    })
}

/// Whether a crash is the expected one: a category name or a title fragment.
pub fn crash_matches(expect: &str, category: &str, title: &str) -> bool {
    expect == category || title.contains(expect)
}

/// Why a test's steps stopped.
enum StepsEnd {
    /// All steps done.
    Done,
    /// An assertion failed.
    Failed(String),
    /// Counters grew with every cycle.
    Leak(Vec<trend::Trend>),
}

/// Runs one test; returns its result, time spent recovering, and a reason to abort the
/// kernel when recovery failed.
async fn run_test(
    guest: &mut Guest,
    store: &mut Store,
    test: &Test,
    mut ctx: CrashContext,
    crash_counts: &mut HashMap<String, u32>,
    plan: &Plan,
) -> (TestResult, u64, Option<String>) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(test.timeout_s);
    let mut result = TestResult {
        name: test.name.clone(),
        status: TestStatus::Passed,
        duration_ms: 0,
        message: String::new(),
        expected_crash: test.expect_crash.clone(),
        crashes: Vec::new(),
        attempts: 1,
        metrics: Vec::new(),
    };
    let client = guest.client();
    let module = guest.module.clone();
    let kernel = guest.kernel().to_string();
    let mut metrics = Vec::new();
    let mut recovery_ms = 0;
    let mut abort = None;
    {
        let steps = run_steps(client, module, test, deadline, &mut metrics);
        tokio::pin!(steps);
        let mut steps_done = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                result.status = TestStatus::Failed;
                result.message = if steps_done {
                    format!(
                        "expected crash {:?} did not happen within {} s",
                        test.expect_crash.as_deref().unwrap_or(""),
                        test.timeout_s
                    )
                } else {
                    format!("timed out after {} s", test.timeout_s)
                };
                break;
            }
            let incident = tokio::select! {
                end = &mut steps, if !steps_done => {
                    steps_done = true;
                    match end {
                        StepsEnd::Done if test.expect_crash.is_some() => continue,
                        StepsEnd::Done => {
                            // Crashes the last step caused show up a moment later.
                            match guest.watch().next_incident(SETTLE, |_| {}).await {
                                Some(i) => Some(guest::incident_row(&i, &kernel, &ctx)).map(|r| (r, i.at)),
                                None => break,
                            }
                        }
                        StepsEnd::Failed(msg) => {
                            result.status = TestStatus::Failed;
                            result.message = msg;
                            break;
                        }
                        StepsEnd::Leak(trends) => {
                            let op = "cycle";
                            Some((guest::leak_row(&trends, &plan.module.name, op, &kernel, &ctx), Instant::now()))
                        }
                    }
                }
                inc = guest.watch().next_incident(left, |_| {}) => {
                    inc.map(|i| (guest::incident_row(&i, &kernel, &ctx), i.at))
                }
            };
            let Some((row, at)) = incident else {
                continue;
            };
            let count = crash_counts.entry(test.name.clone()).or_default();
            *count += 1;
            ctx.test_crashes = *count;
            let policy = Policy {
                isolate_after: plan.isolate_after,
                ..Policy::default()
            };
            let expected = test
                .expect_crash
                .as_deref()
                .is_some_and(|e| crash_matches(e, &row.category, &row.title));
            // An expected crash is the test doing its job: it never counts toward isolation.
            if expected {
                ctx.test_crashes = 1;
            }
            match guest::handle_crash(guest, store, row.clone(), at, &ctx, policy).await {
                Ok(h) => {
                    recovery_ms += ms(h.duration);
                    result.crashes.push(crash_summary(&row, expected, Some(&h)));
                    match h.fate {
                        Fate::Abort => {
                            result.status = TestStatus::Error;
                            result.message = format!("recovery failed after {}", row.title);
                            abort = Some(format!(
                                "recovery failed after {} in {}",
                                row.title, test.name
                            ));
                        }
                        Fate::SkipCurrent => {
                            result.status = TestStatus::Skipped;
                            result.message = format!(
                                "isolated after {} crashes: {}",
                                ctx.test_crashes, row.title
                            );
                        }
                        Fate::Continue | Fate::RestartRequired if expected => {
                            result.status = TestStatus::Passed;
                        }
                        Fate::Continue | Fate::RestartRequired => {
                            result.status = TestStatus::Crashed;
                            result.message = row.title.clone();
                        }
                    }
                }
                Err(e) => {
                    // Not in the database (most likely it could not be written): keep
                    // the crash in the results and on stderr, whatever the progress mode.
                    eprintln!(
                        "vexctl: crash not recorded ({e}): {} [{}]\n{}",
                        row.title, row.category, row.report
                    );
                    result.crashes.push(crash_summary(&row, expected, None));
                    result.status = TestStatus::Error;
                    result.message = format!("handling crash {}: {e}", row.title);
                    abort = Some(result.message.clone());
                }
            }
            break;
        }
    }
    result.metrics = metrics;
    result.duration_ms = ms(started.elapsed());
    (result, recovery_ms, abort)
}

/// A crash of a test as the results show it: with its recovery when it was handled,
/// marked `not_recorded` (id 0, not recovered) when the database refused it.
fn crash_summary(
    row: &crate::store::NewCrash,
    expected: bool,
    handled: Option<&guest::Handled>,
) -> CrashSummary {
    CrashSummary {
        id: handled.map_or(0, |h| h.crash_id),
        category: row.category.clone(),
        severity: row.severity.clone(),
        title: row.title.clone(),
        expected,
        recovery_level: handled.map_or(0, |h| h.level as u8),
        fate: handled.map_or("not_recorded".into(), |h| guest::fate_name(h.fate).into()),
        recovery_ms: handled.map_or(0, |h| ms(h.duration)),
        recovered: handled.is_some_and(guest::Handled::succeeded),
        report: row.report.clone(),
    }
}

async fn exec(
    client: &mut AgentClient,
    cmd: &str,
    env: Vec<String>,
    uid: u32,
    timeout: Duration,
) -> Result<vexfs_proto::ExecReply, String> {
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), cmd.into()],
        env,
        timeout_ms: ms(timeout).max(1),
        uid,
        gid: uid,
        ..Default::default()
    };
    let mut c = client
        .clone()
        .with_call_timeout(timeout + Duration::from_secs(5));
    c.exec(req).await.map_err(|e| format!("{cmd}: {e}"))
}

fn check_exec(s: &ExecStep, r: &vexfs_proto::ExecReply) -> Result<(), String> {
    let out = String::from_utf8_lossy(&r.stdout);
    let err = String::from_utf8_lossy(&r.stderr);
    if r.timed_out {
        return Err(match &r.unkillable {
            Some(h) => format!("{}: timed out; {}", s.cmd, unkillable_summary(h)),
            None => format!("{}: timed out", s.cmd),
        });
    }
    if !s.exit.accepts(r.exit_code) {
        return Err(format!(
            "{}: exit {} (expected {:?}); stderr: {}",
            s.cmd,
            r.exit_code,
            s.exit,
            err.trim()
        ));
    }
    if let Some(want) = &s.stdout
        && !out.contains(want.as_str())
    {
        return Err(format!("{}: stdout {:?} lacks {want:?}", s.cmd, out.trim()));
    }
    if let Some(want) = &s.stderr
        && !err.contains(want.as_str())
    {
        return Err(format!("{}: stderr {:?} lacks {want:?}", s.cmd, err.trim()));
    }
    Ok(())
}

async fn sunreclaim(client: &mut AgentClient) -> Result<f64, String> {
    let c = client
        .sample_counters(SampleRequest::default())
        .await
        .map_err(|e| format!("sample: {e}"))?;
    Ok(c.meminfo_kb.get("SUnreclaim").copied().unwrap_or(0) as f64)
}

/// Loads the module under test; one already loaded counts as loaded.
async fn load(client: &mut AgentClient, module: &ModuleSpec) -> Result<(), String> {
    match guest::load_module(client, module).await {
        Ok((crate::recovery::Outcome::Succeeded, _)) => Ok(()),
        Ok((_, reply)) => Err(format!("load: {}", reply.detail)),
        Err(e) => Err(format!("load: {e}")),
    }
}

async fn run_steps(
    mut client: AgentClient,
    module: ModuleSpec,
    test: &Test,
    deadline: Instant,
    metrics: &mut Vec<(String, f64)>,
) -> StepsEnd {
    let mut samples: HashMap<String, f64> = HashMap::new();
    for step in &test.steps {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Step::Cycles(c) = step {
            match cycles(&mut client, c, deadline, metrics).await {
                Ok(None) => continue,
                Ok(Some(leaks)) => return StepsEnd::Leak(leaks),
                Err(e) => return StepsEnd::Failed(e),
            }
        }
        let r: Result<(), String> = async {
            match step {
                Step::Load => load(&mut client, &module).await,
                Step::Unload | Step::Reload => {
                    let r = client
                        .unload_module(UnloadModuleRequest {
                            name: module.name.clone(),
                            deadline_ms: 10_000,
                            force: false,
                        })
                        .await
                        .map_err(|e| format!("unload: {e}"))?;
                    if r.outcome != ModuleOutcome::Ok as i32 {
                        return Err(format!("unload: {}", r.detail));
                    }
                    if matches!(step, Step::Reload) {
                        load(&mut client, &module).await?;
                    }
                    Ok(())
                }
                Step::Exec(s) => {
                    let t = s
                        .timeout_s
                        .map_or(left, |t| Duration::from_secs(t).min(left));
                    let r = exec(&mut client, &s.cmd, Vec::new(), s.uid, t).await?;
                    check_exec(s, &r)
                }
                Step::Mount(m) => {
                    let fs = module.fstype.clone().unwrap_or_else(|| "vexfs".into());
                    let opts = if m.options.is_empty() {
                        String::new()
                    } else {
                        format!("-o {} ", m.options)
                    };
                    let mkdir = if m.create {
                        format!("mkdir -p {} 2>/dev/null; ", m.target)
                    } else {
                        String::new()
                    };
                    let cmd = format!(
                        "{mkdir}mount -t {fs} {opts}{src} {t}",
                        t = m.target,
                        src = m.source
                    );
                    let s = ExecStep {
                        cmd,
                        exit: if m.fails_with.is_some() {
                            crate::plan::Exit::Word("nonzero".into())
                        } else {
                            crate::plan::Exit::Code(0)
                        },
                        stdout: None,
                        stderr: m.fails_with.clone(),
                        uid: 0,
                        timeout_s: None,
                    };
                    let r = exec(&mut client, &s.cmd, Vec::new(), 0, left).await?;
                    check_exec(&s, &r)
                }
                Step::Unmount(target) => {
                    let r = exec(
                        &mut client,
                        &format!("umount {target}"),
                        Vec::new(),
                        0,
                        left,
                    )
                    .await?;
                    if r.exit_code == 0 {
                        Ok(())
                    } else {
                        Err(format!(
                            "umount {target}: {}",
                            String::from_utf8_lossy(&r.stderr).trim()
                        ))
                    }
                }
                Step::Trigger(fault) => {
                    // The writer may never come back (deadlock, panic): fire and forget.
                    let mut c = client
                        .clone()
                        .with_call_timeout(left + Duration::from_secs(5));
                    let cmd = format!("echo {fault} > /sys/kernel/debug/vexfs/trigger");
                    let timeout_ms = ms(left);
                    tokio::spawn(async move {
                        let _ = c
                            .exec(ExecRequest {
                                argv: vec!["sh".into(), "-c".into(), cmd],
                                timeout_ms,
                                ..Default::default()
                            })
                            .await;
                    });
                    Ok(())
                }
                Step::Sample(label) => {
                    samples.insert(label.clone(), sunreclaim(&mut client).await?);
                    Ok(())
                }
                Step::NoLeakSince(c) => {
                    let now = sunreclaim(&mut client).await?;
                    let then = samples.get(&c.since).copied().unwrap_or(now);
                    let grew = now - then;
                    metrics.push((format!("sunreclaim_growth_kb_since_{}", c.since), grew));
                    if grew > c.max_kb as f64 {
                        Err(format!(
                            "SUnreclaim grew {grew:.0} kB since {:?} (max {})",
                            c.since, c.max_kb
                        ))
                    } else {
                        Ok(())
                    }
                }
                Step::Sleep(s) => {
                    tokio::time::sleep(Duration::from_secs_f64(*s)).await;
                    Ok(())
                }
                Step::Cycles(_) => Ok(()),
            }
        }
        .await;
        if let Err(e) = r {
            return StepsEnd::Failed(e);
        }
    }
    StepsEnd::Done
}

/// Runs a cycles step: the counters that leaked, if any, or why the step failed.
async fn cycles(
    client: &mut AgentClient,
    c: &CyclesStep,
    deadline: Instant,
    metrics: &mut Vec<(String, f64)>,
) -> Result<Option<Vec<trend::Trend>>, String> {
    let per_sample = (c.count / c.leak_samples.max(1)).max(1);
    let mut sunreclaim_series = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    for t in 0..c.threads {
        let mut client = client.clone();
        let cmd = c.cmd.clone();
        let count = c.count;
        let tx = tx.clone();
        tasks.spawn(async move {
            let mut ops = Vec::with_capacity(count as usize);
            for i in 0..count {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let t0 = Instant::now();
                let env = vec![format!("T={t}"), format!("I={i}")];
                let ok = match exec(&mut client, &cmd, env, 0, left.min(Duration::from_secs(60)))
                    .await
                {
                    Ok(r) => r.exit_code == 0,
                    Err(_) => false,
                };
                ops.push((t0.elapsed(), ok));
                if t == 0 && (i + 1) % per_sample == 0 {
                    let _ = tx.send(()).await;
                }
            }
            ops
        });
    }
    drop(tx);
    // Thread 0 signals sample points; sample between its cycles.
    while rx.recv().await.is_some() {
        if let Ok(v) = sunreclaim(client).await {
            sunreclaim_series.push(v);
        }
    }
    let mut ops: Vec<(Duration, bool)> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(v) = done {
            ops.extend(v);
        }
    }
    let planned = u64::from(c.count) * u64::from(c.threads);
    let failed =
        ops.iter().filter(|(_, ok)| !ok).count() as f64 + (planned as f64 - ops.len() as f64);
    let error_rate = failed / planned as f64;
    let half = ops.len() / 2;
    let mean = |v: &[(Duration, bool)]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().map(|(d, _)| d.as_secs_f64() * 1e3).sum::<f64>() / v.len() as f64
        }
    };
    let (first, second) = (mean(&ops[..half]), mean(&ops[half..]));
    let slowdown = if first > 0.0 { second / first } else { 1.0 };
    metrics.push(("cycles".into(), ops.len() as f64));
    metrics.push(("error_rate".into(), error_rate));
    metrics.push(("op_ms_first_half".into(), first));
    metrics.push(("op_ms_second_half".into(), second));
    metrics.push(("slowdown".into(), slowdown));
    let leaks = trend::leaks(
        &[trend::Series {
            name: "SUnreclaim".into(),
            unit: "kB".into(),
            min_growth: 256.0,
            values: sunreclaim_series,
        }],
        &trend::Config::default(),
    );
    if !leaks.is_empty() {
        return Ok(Some(leaks));
    }
    if error_rate > c.max_error_rate {
        return Err(format!(
            "{failed} of {planned} cycles failed (error rate {error_rate:.3} > {})",
            c.max_error_rate
        ));
    }
    if slowdown > c.max_slowdown {
        return Err(format!(
            "operations slowed down {slowdown:.2}x from the first half to the second (max {})",
            c.max_slowdown
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_shows_a_bar_per_kernel() {
        let board = [
            KernelStatus {
                kernel: "6.12.117+deb12-amd64".into(),
                done: 3,
                total: 12,
                crashes: 1,
                recovered: 1,
            },
            KernelStatus {
                kernel: "6.1.0-57-amd64".into(),
                total: 0,
                ..Default::default()
            },
        ];
        assert_eq!(
            Reporter::status(&board),
            "6.12.117 [###---------] 3/12 crashes 1 recovered 1 | \
             6.1.0-57-amd64 [------------] 0/0 crashes 0 recovered 0"
        );
    }

    #[test]
    fn shards_parse() {
        assert_eq!(parse_shard("1/2").unwrap(), (1, 2));
        assert!(parse_shard("0/2").is_err());
        assert!(parse_shard("3/2").is_err());
        assert!(parse_shard("x").is_err());
    }

    #[test]
    fn shards_cover_the_matrix_once() {
        let plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "default").unwrap();
        let kernels = ["6.1.0-57-amd64", "6.12.117+deb12-amd64"];
        let all = slice(&kernels, &plan.tests, None);
        // The KFENCE test runs on 6.12 only.
        assert_eq!(all[1].len(), plan.tests.len());
        assert_eq!(all[0].len(), plan.tests.len() - 1);
        let mut seen = std::collections::HashSet::new();
        for i in 1..=3 {
            let part = slice(&kernels, &plan.tests, Some((i, 3)));
            for (k, tests) in part.iter().enumerate() {
                for t in tests {
                    assert!(seen.insert((k, *t)), "({k}, {t}) in two shards");
                }
            }
        }
        let total: usize = all.iter().map(Vec::len).sum();
        assert_eq!(seen.len(), total);
    }

    #[test]
    fn expected_crash_matching() {
        assert!(crash_matches("module_crash", "module_crash", "BUG: x"));
        assert!(crash_matches(
            "in vexfs_fault_null",
            "module_crash",
            "BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null"
        ));
        assert!(!crash_matches(
            "deadlock",
            "module_crash",
            "kernel BUG in vexfs_fault_bug"
        ));
    }
}
