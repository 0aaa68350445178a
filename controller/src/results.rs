//! The results of a run: what the runner produces and every report (JUnit, JSON,
//! HTML, terminal summary) reads. Plain data, serialisable, mergeable across shards.

use serde::{Deserialize, Serialize};

use crate::classify::{Category, Severity};
use crate::recovery::Fate;
use crate::scorecard::Stats;
use crate::store::Bucket;

/// How a test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// Every step passed and no crash happened (or exactly the expected one did).
    Passed,
    /// A step's assertion failed.
    Failed,
    /// A crash happened that the test did not expect (or not the expected one).
    Crashed,
    /// Isolated after crashing repeatedly, or not run because its kernel aborted.
    Skipped,
    /// The harness could not run it (guest never booted, agent unreachable).
    Error,
    /// The module (or the plan's image) did not build for this kernel; the message
    /// carries the compiler's first errors.
    BuildFailed,
}

impl TestStatus {
    /// True when the test counts as as-expected for the exit code.
    pub fn ok(self) -> bool {
        matches!(self, TestStatus::Passed | TestStatus::Skipped)
    }

    /// True when the harness brought the test to a verdict (anything but an error).
    pub fn reached_verdict(self) -> bool {
        !matches!(self, TestStatus::Error | TestStatus::BuildFailed)
    }

    /// The snake_case name (database, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Crashed => "crashed",
            TestStatus::Skipped => "skipped",
            TestStatus::Error => "error",
            TestStatus::BuildFailed => "build_failed",
        }
    }

    /// The status of a database name (`None` for pending/running and unknown names).
    pub fn from_name(s: &str) -> Option<Self> {
        [
            TestStatus::Passed,
            TestStatus::Failed,
            TestStatus::Crashed,
            TestStatus::Skipped,
            TestStatus::Error,
            TestStatus::BuildFailed,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// One crash as a report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashSummary {
    /// Row id in the crash database.
    pub id: i64,
    /// Category.
    pub category: Category,
    /// Severity.
    pub severity: Severity,
    /// Title.
    pub title: String,
    /// The crash was the one the test expected.
    pub expected: bool,
    /// Highest recovery level used (1 graceful, 2 system reset, 3 isolation).
    pub recovery_level: u8,
    /// The test's fate; None when the crash could not be recorded (so nothing was
    /// recovered).
    pub fate: Option<Fate>,
    /// Total recovery time, ms.
    pub recovery_ms: u64,
    /// Recovery succeeded.
    pub recovered: bool,
    /// Its database record read back intact before recovery acted (data integrity).
    #[serde(default)]
    pub intact: bool,
    /// The report text (may be long).
    pub report: String,
    /// What the test's `after_restart` checks said when they failed after this crash
    /// (data loss; `intact` is false unless the test expected it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss: Option<DataLoss>,
}

/// A failed `after_restart` check after a crash: the disk did not hold what was synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLoss {
    /// The failed check's message and output.
    pub detail: String,
    /// The test expected it (`expect_data_loss`: the fault tears a write on purpose and
    /// the checks caught it).
    pub expected: bool,
}

impl CrashSummary {
    /// The crash was recorded and its recovery ran to an end.
    pub fn handled(&self) -> bool {
        self.fate.is_some()
    }
}

/// One step of a test as it ran, for the timeline: steps after a crash show here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based index of the step in the test.
    pub index: usize,
    /// What it was (`load`, `exec: ...`, `trigger null`, ...).
    pub step: String,
    /// Start time (ms since the epoch).
    pub started_at_ms: i64,
    /// How long it ran, ms.
    pub duration_ms: u64,
    /// passed, failed, crashed (a crash came while it ran), or interrupted.
    pub outcome: String,
    /// Which run of the test (1 first, 2 after a retry or a rerun, ...).
    pub attempt: u32,
}

/// One test on one kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// Test name from the plan.
    pub name: String,
    /// Outcome.
    pub status: TestStatus,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// Why it failed or was skipped (empty when it passed).
    pub message: String,
    /// The crash title (or category) the plan expects, if any.
    pub expected_crash: Option<String>,
    /// Crashes seen during the test.
    pub crashes: Vec<CrashSummary>,
    /// Runs of the test or of its failed step (a level-1 retry or a rerun after a
    /// restart counts one more).
    pub attempts: u32,
    /// Every step run, in order, across retries and restarts.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// Measurements the steps recorded (name → value), e.g. op times, error rates.
    pub metrics: Vec<(String, f64)>,
    /// What the watcher saw that did not end the test: kernel log records lost, tasks
    /// seen blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Everything about one kernel of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelResults {
    /// Kernel release.
    pub kernel: String,
    /// Accelerator used (tcg, kvm).
    pub accel: String,
    /// Time of the first boot to agent healthy, ms.
    pub boot_ms: u64,
    /// Wall time of this kernel's whole run, ms.
    pub duration_ms: u64,
    /// Time spent booting (all boots), in tests, and in recovery, ms.
    pub time_boot_ms: u64,
    /// Time spent running tests, ms.
    pub time_tests_ms: u64,
    /// Time spent recovering, ms.
    pub time_recovery_ms: u64,
    /// Tests in plan order.
    pub tests: Vec<TestResult>,
    /// Set when the harness gave up on this kernel.
    pub harness_error: Option<String>,
}

/// One recovery step for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryEvent {
    /// Kernel release.
    pub kernel: String,
    /// Test name.
    pub test: String,
    /// Crash id.
    pub crash_id: i64,
    /// Ladder level; 0 for a step of the crashed test (so the timeline shows what ran
    /// before and after the recovery).
    pub level: u8,
    /// Action name, or `step N: ...` for a test step.
    pub action: String,
    /// Start (ms since the epoch).
    pub started_at_ms: i64,
    /// Duration, ms.
    pub duration_ms: u64,
    /// succeeded / failed / hung.
    pub outcome: String,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// Run id in the crash database (0 for merged results).
    pub run_id: i64,
    /// Plan name.
    pub plan: String,
    /// Shard "I/N" when only a slice ran.
    pub shard: Option<String>,
    /// Start and end (ms since the epoch).
    pub started_at_ms: i64,
    /// End.
    pub finished_at_ms: i64,
    /// Per kernel.
    pub kernels: Vec<KernelResults>,
    /// Recovery metrics.
    pub stats: Stats,
    /// Crash buckets.
    pub buckets: Vec<Bucket>,
    /// Recovery steps in time order.
    pub timeline: Vec<RecoveryEvent>,
}

impl RunResults {
    /// True when every test on every kernel ended as expected and no kernel aborted.
    pub fn all_ok(&self) -> bool {
        self.kernels
            .iter()
            .all(|k| k.harness_error.is_none() && k.tests.iter().all(|t| t.status.ok()))
    }
}
