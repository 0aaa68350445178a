//! The rows the crash database stores and returns, and how the classifier's enums
//! become SQL text and back.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use crate::classify::{Category, Recovery, Severity};

/// A crash to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCrash {
    /// Run it happened in, if any.
    pub run_id: Option<i64>,
    /// Test it happened in, if any.
    pub test_id: Option<i64>,
    /// Category.
    pub category: Category,
    /// Severity.
    pub severity: Severity,
    /// Recovery the crash type calls for.
    pub recovery: Recovery,
    /// One-line title.
    pub title: String,
    /// Deduplication signature (the bucket key).
    pub signature: String,
    /// The report could not be titled reliably.
    pub corrupted: bool,
    /// Guest kernel release.
    pub kernel: String,
    /// Guilty module, if known.
    pub module: String,
    /// Test name, denormalised for listing.
    pub test_name: String,
    /// The supervisor's verdict that led here.
    pub verdict: String,
    /// When it was detected (ms since the epoch).
    pub detected_at_ms: i64,
    /// The report text.
    pub report: String,
    /// Console lines around the crash.
    pub console_excerpt: String,
    /// Forensics (sysrq output, hung-task stacks).
    pub forensics: String,
}

/// A recorded crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crash {
    /// Row id.
    pub id: i64,
    /// Bucket id.
    pub bucket_id: i64,
    /// The report, console excerpt and forensics read back from the database as they
    /// were written (None: not checked yet).
    pub intact: Option<bool>,
    /// The recorded fields.
    #[serde(flatten)]
    pub crash: NewCrash,
}

/// A group of crashes with one signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Row id.
    pub id: i64,
    /// The signature.
    pub signature: String,
    /// Title of the first crash.
    pub title: String,
    /// Category.
    pub category: Category,
    /// First and last time seen (ms since the epoch).
    pub first_seen_ms: i64,
    /// Last time seen.
    pub last_seen_ms: i64,
    /// Number of crashes.
    pub count: i64,
    /// Kernels the bucket was seen on.
    pub kernels: Vec<String>,
    /// Tests the bucket was seen in.
    pub tests: Vec<String>,
}

/// One recovery attempt to record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewAttempt {
    /// Run id.
    pub run_id: Option<i64>,
    /// The crash being recovered from.
    pub crash_id: Option<i64>,
    /// The test it belongs to.
    pub test_id: Option<i64>,
    /// Ladder level: 1 graceful, 2 system reset, 3 test isolation.
    pub level: i64,
    /// What was done (unload, reload, system_reset, relaunch, isolate, ...).
    pub action: String,
    /// Start time (ms since the epoch).
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// succeeded / failed.
    pub outcome: String,
    /// The test's fate decided by it (continue, skip, restart_required, abort).
    pub fate: String,
    /// Free-form detail.
    pub detail: String,
}

/// A test of a run: (id, kernel, name, status, attempts).
pub type TestRow = (i64, String, String, String, i64);

/// Implements SQL text conversion for an enum from its `as_str` names: every variant
/// is listed, so a name that reads back unknown is an error, not a default.
macro_rules! sql_text_enum {
    ($t:ty, [$($v:expr),+ $(,)?]) => {
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = v.as_str()?;
                [$($v),+].into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
                    FromSqlError::Other(format!("unknown {} {s:?}", stringify!($t)).into())
                })
            }
        }
    };
}

sql_text_enum!(
    Category,
    [
        Category::KernelPanic,
        Category::SystemHang,
        Category::ModuleCrash,
        Category::MemoryCorruption,
        Category::ResourceLeak,
        Category::Deadlock,
        Category::Warning,
        Category::Other,
    ]
);
sql_text_enum!(
    Severity,
    [
        Severity::Critical,
        Severity::High,
        Severity::Moderate,
        Severity::Low
    ]
);
sql_text_enum!(
    Recovery,
    [
        Recovery::ModuleReload,
        Recovery::VmRestart,
        Recovery::ProcessTermination,
        Recovery::ResourceCleanup,
        Recovery::None,
    ]
);

impl Default for NewCrash {
    fn default() -> Self {
        Self {
            run_id: None,
            test_id: None,
            category: Category::Other,
            severity: Severity::Low,
            recovery: Recovery::None,
            title: String::new(),
            signature: String::new(),
            corrupted: false,
            kernel: String::new(),
            module: String::new(),
            test_name: String::new(),
            verdict: String::new(),
            detected_at_ms: 0,
            report: String::new(),
            console_excerpt: String::new(),
            forensics: String::new(),
        }
    }
}
