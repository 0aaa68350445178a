//! The steps a test is made of.

use serde::{Deserialize, Serialize};

#[allow(unused_imports)]
use super::*;

/// One step of a test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Load the module under test.
    Load,
    /// Unload it (with the recovery deadline).
    Unload,
    /// Unload and load it again.
    Reload,
    /// Run a shell command and check its result.
    Exec(ExecStep),
    /// Mount the module's filesystem.
    Mount(MountStep),
    /// Unmount a mountpoint.
    Unmount(String),
    /// Fire a fault through the module's trigger file; in a test that expects a crash
    /// the step waits for it (the test's timeout bounds the wait).
    Trigger(String),
    /// Repeat a command many times, concurrently if asked, timing every operation and
    /// watching counters for leaks.
    Cycles(CyclesStep),
    /// Take a counter sample under a label.
    Sample(String),
    /// Check that counters did not grow since a labelled sample.
    NoLeakSince(LeakCheck),
    /// Wait this many seconds.
    Sleep(f64),
}

/// Expected exit status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Exit {
    /// Exactly this code.
    Code(i32),
    /// `"nonzero"` or `"any"`.
    Word(String),
}

impl Exit {
    /// Whether `code` satisfies the expectation.
    pub fn accepts(&self, code: i32) -> bool {
        match self {
            Exit::Code(c) => *c == code,
            Exit::Word(w) if w == "nonzero" => code != 0,
            Exit::Word(_) => true,
        }
    }
}

pub(super) fn exit_zero() -> Exit {
    Exit::Code(0)
}

/// A command step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStep {
    /// Shell command (run with `sh -c`).
    pub cmd: String,
    /// Expected exit status (default 0).
    #[serde(default = "exit_zero")]
    pub exit: Exit,
    /// Text stdout must contain.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Text stderr must contain.
    #[serde(default)]
    pub stderr: Option<String>,
    /// Run as this uid (and gid) for permission tests; 0 is root.
    #[serde(default)]
    pub uid: u32,
    /// Per-command timeout, seconds (default: what is left of the test's).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// A mount step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountStep {
    /// Mountpoint (created).
    pub target: String,
    /// Source (ignored by vexfs).
    #[serde(default = "default_source")]
    pub source: String,
    /// `-o` options.
    #[serde(default)]
    pub options: String,
    /// The mount must fail with stderr containing this text.
    #[serde(default)]
    pub fails_with: Option<String>,
    /// Create the mountpoint first (default true).
    #[serde(default = "yes")]
    pub create: bool,
    /// Block device to mount: a `[[guest.disks]]` name (`/dev/disk/by-name/NAME`) or
    /// an absolute device path; replaces `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl MountStep {
    /// What `mount` gets as its source: the device when given, else `source`.
    pub fn source_arg(&self) -> String {
        match &self.device {
            Some(d) if d.starts_with('/') => d.clone(),
            Some(d) => format!("{DISK_BY_NAME}/{d}"),
            None => self.source.clone(),
        }
    }
}

/// Where the agent links each disk by its name.
pub const DISK_BY_NAME: &str = "/dev/disk/by-name";

pub(super) fn yes() -> bool {
    true
}

pub(super) fn default_source() -> String {
    "none".into()
}

/// A repeated operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CyclesStep {
    /// Shell command of one cycle; `$T` is the thread number, `$I` the iteration.
    pub cmd: String,
    /// Iterations per thread.
    pub count: u32,
    /// Concurrent threads.
    #[serde(default = "one")]
    pub threads: u32,
    /// Largest error rate (failed cycles / cycles) accepted.
    #[serde(default)]
    pub max_error_rate: f64,
    /// Second-half mean op time over first-half mean above this ratio fails the step.
    #[serde(default = "default_slowdown")]
    pub max_slowdown: f64,
    /// Sample counters this many times over the run and fail on a leak trend.
    #[serde(default = "default_samples")]
    pub leak_samples: u32,
}

pub(super) fn one() -> u32 {
    1
}
pub(super) fn default_slowdown() -> f64 {
    3.0
}
pub(super) fn default_samples() -> u32 {
    12
}

/// A leak check against a labelled sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakCheck {
    /// The label of the earlier sample.
    pub since: String,
    /// Largest SUnreclaim growth accepted, kB.
    #[serde(default = "default_max_kb")]
    pub max_kb: u64,
}

pub(super) fn default_max_kb() -> u64 {
    512
}
