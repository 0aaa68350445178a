//! Crash classifier: turns raw kernel console output (serial console bytes, or the
//! agent's kmsg records through [`Classifier::feed_record`]) into classified, titled,
//! deduplicable crash reports.
//!
//! The approach follows syzkaller's `pkg/report/linux.go`: a table of oops header
//! patterns ([`oops`]), each with title formats, stack-frame extraction rules and a
//! skip table of infrastructure frames ([`skip`]) and frame selection ([`pick`]); titles are normalised ([`title`]) so the
//! same bug gives the same title on every run. Input is bytes ([`lines`]); the
//! [`Classifier`] works incrementally and [`classify`] is the same machine run over
//! the whole input, so both always agree.

mod formats;
mod frame_scan;
mod frames;
mod incremental;
mod lines;
mod names;
mod oops;
mod parse;
mod pick;
mod record;
mod skip;
mod title;

#[cfg(test)]
mod record_tests;
#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use incremental::{Classifier, MAX_LINE_BYTES};
pub use record::Record;

/// What kind of crash a report is (definitions: the crash corpus README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// `Kernel panic - not syncing`, double fault, unexpected reboot.
    KernelPanic,
    /// RCU stalls: the system stopped making progress.
    SystemHang,
    /// Oopses in (module) code: NULL dereference, `BUG()`, invalid opcode, ...
    ModuleCrash,
    /// Sanitizer reports, GPFs, bad accesses, stack and list corruption.
    MemoryCorruption,
    /// kmemleak, refcount leaks of devices, busy inodes.
    ResourceLeak,
    /// Hung tasks, soft lockups, lockdep reports, lock misuse.
    Deadlock,
    /// `WARNING:` reports.
    Warning,
    /// Anything else (data races, harness self-failures).
    Other,
}

impl Category {
    /// The snake_case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::KernelPanic => "kernel_panic",
            Category::SystemHang => "system_hang",
            Category::ModuleCrash => "module_crash",
            Category::MemoryCorruption => "memory_corruption",
            Category::ResourceLeak => "resource_leak",
            Category::Deadlock => "deadlock",
            Category::Warning => "warning",
            Category::Other => "other",
        }
    }

    /// How bad a crash of this category is.
    pub fn severity(self) -> Severity {
        match self {
            Category::KernelPanic | Category::SystemHang => Severity::Critical,
            Category::MemoryCorruption | Category::Deadlock => Severity::High,
            Category::ModuleCrash => Severity::Moderate,
            Category::ResourceLeak | Category::Warning | Category::Other => Severity::Low,
        }
    }

    /// The recovery this category calls for.
    pub fn recovery(self) -> Recovery {
        match self {
            Category::KernelPanic | Category::SystemHang | Category::MemoryCorruption => {
                Recovery::VmRestart
            }
            Category::ModuleCrash => Recovery::ModuleReload,
            Category::ResourceLeak => Recovery::ResourceCleanup,
            Category::Deadlock => Recovery::ProcessTermination,
            Category::Warning | Category::Other => Recovery::None,
        }
    }
}

/// Severity of a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The guest is gone or unusable.
    Critical,
    /// State is corrupted or tasks are stuck.
    High,
    /// The faulting context died; the rest may continue.
    Moderate,
    /// Informational or slow-burning.
    Low,
}

impl Severity {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Moderate => "moderate",
            Severity::Low => "low",
        }
    }
}

/// The recovery action a crash calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// Unload and reload the module (VM restart if that fails).
    ModuleReload,
    /// Restart (or force-reset) the VM.
    VmRestart,
    /// Kill or reset the stuck process.
    ProcessTermination,
    /// Free leaked resources.
    ResourceCleanup,
    /// Nothing to do.
    None,
}

impl Recovery {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::ModuleReload => "module_reload",
            Recovery::VmRestart => "vm_restart",
            Recovery::ProcessTermination => "process_termination",
            Recovery::ResourceCleanup => "resource_cleanup",
            Recovery::None => "none",
        }
    }
}

/// One crash found in a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashReport {
    /// Crash category.
    pub category: Category,
    /// Severity (from the category).
    pub severity: Severity,
    /// Recovery action (from the category).
    pub recovery: Recovery,
    /// One-line syzkaller-style title, e.g. `WARNING in vexfs_write`.
    pub title: String,
    /// Other titles the same bug is known by (for deduplication).
    pub alt_titles: Vec<String>,
    /// True when the report is truncated or interleaved so the title is unreliable.
    pub corrupted: bool,
    /// Function names of the report's first stack trace, innermost first.
    pub frames: Vec<String>,
    /// Module the crash is attributed to (e.g. `vexfs`), from frame suffixes.
    pub guilty_module: Option<String>,
    /// Kernel taint flags at the time (e.g. `G OE`), when printed.
    pub taint: Option<String>,
    /// The lines of this crash (other callers' interleaved lines removed).
    pub report: String,
    /// Stable deduplication key: the title plus the alternative titles.
    pub signature: String,
    /// 0-based index of the report's first line in the input.
    pub start_line: usize,
}

/// The function a stack-frame line names, normalised as in titles (offsets, compiler
/// suffixes and syscall wrappers removed); `None` for other lines and `?` frames.
pub fn frame_function(line: &str) -> Option<String> {
    frames::parse_frame(line).map(|f| f.func)
}

/// The literal header strings that can start a crash report (what the prefilter
/// searches for; the benchmark hands them to `grep -F` for comparison).
pub fn crash_headers() -> Vec<&'static str> {
    oops::header_strings()
}

/// Classifies a whole log; equal to feeding it to a [`Classifier`] and finishing.
pub fn classify(log: &[u8]) -> Vec<CrashReport> {
    let mut c = Classifier::new();
    let mut out = c.feed(log);
    out.extend(c.finish());
    out
}
