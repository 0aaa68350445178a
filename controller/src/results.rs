//! The results of a run: what the runner produces and every report (JUnit, JSON,
//! HTML, terminal summary) reads. Plain data, serialisable, mergeable across shards.

use serde::{Deserialize, Serialize};

use crate::store::{Bucket, Stats};

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
}

impl TestStatus {
    /// True when the test counts as as-expected for the exit code.
    pub fn ok(self) -> bool {
        matches!(self, TestStatus::Passed | TestStatus::Skipped)
    }
}

/// One crash as a report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashSummary {
    /// Row id in the crash database.
    pub id: i64,
    /// Category name.
    pub category: String,
    /// Severity name.
    pub severity: String,
    /// Title.
    pub title: String,
    /// The crash was the one the test expected.
    pub expected: bool,
    /// Highest recovery level used (1 graceful, 2 system reset, 3 isolation).
    pub recovery_level: u8,
    /// The test's fate (continue, skip, restart_required, abort).
    pub fate: String,
    /// Total recovery time, ms.
    pub recovery_ms: u64,
    /// Recovery succeeded.
    pub recovered: bool,
    /// The report text (may be long).
    pub report: String,
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
    /// Times it was started (retries after recovery count).
    pub attempts: u32,
    /// Measurements the steps recorded (name → value), e.g. op times, error rates.
    pub metrics: Vec<(String, f64)>,
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
    /// Ladder level.
    pub level: u8,
    /// Action name.
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

    /// Test continuity: tests that reached a verdict (not error, not skipped for an
    /// aborted kernel) over all tests.
    pub fn continuity(&self) -> f64 {
        let all: Vec<&TestResult> = self.kernels.iter().flat_map(|k| &k.tests).collect();
        if all.is_empty() {
            return 1.0;
        }
        let done = all
            .iter()
            .filter(|t| !matches!(t.status, TestStatus::Error))
            .count();
        done as f64 / all.len() as f64
    }
}
