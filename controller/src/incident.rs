//! One incident type for everything that calls for recovery: a classified kernel
//! report, a liveness verdict no report explains, or a leak trend. It carries the
//! classifier's enums all the way to the crash database; strings appear only in the
//! row written there.

use std::time::Instant;

use crate::classify::{Category, CrashReport, Recovery, Severity};
use crate::store::{self, NewCrash};
use crate::supervisor::CrashSource;
use crate::trend::Trend;
use crate::verdict::Verdict;

/// How the incident was found.
#[derive(Debug, Clone, PartialEq)]
pub enum Detection {
    /// The kernel reported it (console or kmsg).
    Report(CrashSource),
    /// A liveness verdict with no kernel report to explain it.
    Verdict,
    /// Counters that grew with every cycle of an operation.
    Trend,
}

/// Something that calls for recovery.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// Category.
    pub category: Category,
    /// Severity.
    pub severity: Severity,
    /// The recovery the category (or verdict) calls for.
    pub recovery: Recovery,
    /// One-line title.
    pub title: String,
    /// Deduplication signature.
    pub signature: String,
    /// The report could not be titled reliably.
    pub corrupted: bool,
    /// Module the crash is attributed to.
    pub module: Option<String>,
    /// Report text (the kernel's lines, or what the trend measured).
    pub report: String,
    /// The liveness verdict at the time (Healthy for a report in a live guest).
    pub verdict: Verdict,
    /// How it was found.
    pub detection: Detection,
    /// When it was first noticed.
    pub at: Instant,
}

impl Incident {
    /// A classified kernel report, seen under `verdict`.
    pub fn from_report(
        r: &CrashReport,
        source: CrashSource,
        verdict: Verdict,
        at: Instant,
    ) -> Self {
        Self {
            category: r.category,
            severity: r.severity,
            recovery: r.recovery,
            title: r.title.clone(),
            signature: r.signature.clone(),
            corrupted: r.corrupted,
            module: r.guilty_module.clone(),
            report: r.report.clone(),
            verdict,
            detection: Detection::Report(source),
            at,
        }
    }

    /// A failure verdict that no kernel report explains (a frozen VM, a dead QEMU, a
    /// dead agent).
    pub fn from_verdict(verdict: Verdict, at: Instant) -> Self {
        let (category, severity, recovery, title) = match &verdict {
            Verdict::GuestHung => (
                Category::SystemHang,
                Severity::Critical,
                Recovery::VmRestart,
                "no output from guest".to_string(),
            ),
            Verdict::GuestPanicked => (
                Category::KernelPanic,
                Severity::Critical,
                Recovery::VmRestart,
                "kernel panic: unknown".to_string(),
            ),
            Verdict::VmmDead { code } => (
                Category::Other,
                Severity::Critical,
                Recovery::VmRestart,
                format!(
                    "qemu exited ({})",
                    code.map_or("killed by a signal".into(), |c| format!("status {c}"))
                ),
            ),
            // Init restarts the agent; a smoke test tells whether the guest is whole,
            // and the ladder escalates when it is not.
            Verdict::AgentDead => (
                Category::Other,
                Severity::Moderate,
                Recovery::None,
                "agent died in a live guest".to_string(),
            ),
            Verdict::VmmHung => (
                Category::SystemHang,
                Severity::Critical,
                Recovery::VmRestart,
                "qemu stopped answering (VMM frozen)".to_string(),
            ),
            Verdict::BackendDead => (
                Category::Other,
                Severity::High,
                Recovery::VmRestart,
                "vsock backend (vhost-device-vsock) exited".to_string(),
            ),
            Verdict::Rebooted => (
                Category::KernelPanic,
                Severity::Critical,
                Recovery::VmRestart,
                "unexpected reboot".to_string(),
            ),
            other => (
                Category::Other,
                Severity::Low,
                Recovery::None,
                format!("verdict {}", other.name()),
            ),
        };
        Self {
            category,
            severity,
            recovery,
            signature: title.clone(),
            title,
            corrupted: false,
            module: None,
            report: String::new(),
            verdict,
            detection: Detection::Verdict,
            at,
        }
    }

    /// Counters that grew with every cycle of `operation`. The title names the
    /// counters but no numbers, so the same leak dedupes across runs.
    pub fn leak(trends: &[Trend], module: &str, operation: &str, at: Instant) -> Self {
        let names: Vec<&str> = trends.iter().map(|t| t.name.as_str()).collect();
        let title = format!(
            "resource leak in {module}: {} per {operation}",
            names.join(", ")
        );
        let report = trends
            .iter()
            .map(|t| {
                format!(
                    "{}: {:+.1} {}/{operation} (99% interval {:+.1} .. {:+.1}) over {} cycles",
                    t.name, t.slope, t.unit, t.lower, t.upper, t.n
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let category = Category::ResourceLeak;
        Self {
            category,
            severity: category.severity(),
            recovery: category.recovery(),
            signature: title.clone(),
            title,
            corrupted: false,
            module: Some(module.to_string()),
            report,
            verdict: Verdict::Healthy,
            detection: Detection::Trend,
            at,
        }
    }

    /// The name of how it was found, for the database's `verdict` column.
    pub fn verdict_name(&self) -> &'static str {
        match self.detection {
            Detection::Trend => "trend",
            Detection::Report(_) if !self.verdict.is_failure() => "crash",
            _ => self.verdict.name(),
        }
    }

    /// The crash row to record: where the typed incident leaves for SQL.
    pub fn row(&self, kernel: &str, ctx: &crate::guest::CrashContext) -> NewCrash {
        NewCrash {
            run_id: ctx.run_id,
            test_id: ctx.test_id,
            category: self.category,
            severity: self.severity,
            recovery: self.recovery,
            title: self.title.clone(),
            signature: self.signature.clone(),
            corrupted: self.corrupted,
            kernel: kernel.into(),
            module: self.module.clone().unwrap_or_default(),
            test_name: ctx.test_name.clone(),
            verdict: self.verdict_name().into(),
            detected_at_ms: store::now_ms(),
            report: self.report.clone(),
            console_excerpt: String::new(),
            forensics: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_verdict_calls_for_recovery_or_a_smoke_test() {
        for v in [
            Verdict::GuestHung,
            Verdict::GuestPanicked,
            Verdict::VmmDead { code: Some(1) },
            Verdict::VmmHung,
            Verdict::BackendDead,
            Verdict::Rebooted,
        ] {
            let i = Incident::from_verdict(v.clone(), Instant::now());
            assert_eq!(i.recovery, Recovery::VmRestart, "{v:?}");
            assert_eq!(i.verdict_name(), v.name());
        }
        let agent = Incident::from_verdict(Verdict::AgentDead, Instant::now());
        assert_eq!(agent.recovery, Recovery::None);
    }

    #[test]
    fn a_report_in_a_live_guest_is_a_crash_and_keeps_its_enums() {
        let log = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/guest-logs/crash-612-null.log"
        ))
        .unwrap();
        let r = crate::classify::classify(&log).remove(0);
        let i = Incident::from_report(&r, CrashSource::Console, Verdict::Healthy, Instant::now());
        assert_eq!(i.category, Category::ModuleCrash);
        assert_eq!(i.verdict_name(), "crash");
        let row = i.row("6.12", &crate::guest::CrashContext::default());
        assert_eq!(row.category, Category::ModuleCrash);
        assert_eq!(Some(row.module), r.guilty_module);
        let under_hang = Incident::from_report(&r, CrashSource::Kmsg, Verdict::GuestHung, i.at);
        assert_eq!(under_hang.verdict_name(), "guest_hung");
    }
}
