//! The human summary printed at the end of a run: tests per kernel, totals, the
//! recovery metrics against their targets and the crash buckets.

use std::fmt::Write;

use crate::results::{KernelResults, RunResults, TestResult, TestStatus};

use super::{dur, iso_time, targets};

use anstyle::{AnsiColor, Style};

const BOLD: Style = Style::new().bold();
const RED: Style = AnsiColor::Red.on_default();
const GREEN: Style = AnsiColor::Green.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const MAGENTA: Style = AnsiColor::Magenta.on_default();
const DIM: Style = Style::new().dimmed();

/// Whether to colour standard output: anstream's choice, which honours NO_COLOR,
/// CLICOLOR(_FORCE) and TERM=dumb and colours only a terminal.
pub fn stdout_color() -> bool {
    anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
}

/// Renders the terminal summary; ANSI colors only when `color` is true.
pub fn summary(r: &RunResults, color: bool) -> String {
    let paint = |style: Style, s: &str| {
        if color {
            format!("{style}{s}{style:#}")
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    let shard = r
        .shard
        .as_ref()
        .map(|s| format!(", shard {s}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}",
        paint(
            BOLD,
            &format!(
                "vexfs plan {} (run {}{shard}) started {} UTC, took {}",
                r.plan,
                r.run_id,
                iso_time(r.started_at_ms).replace('T', " "),
                dur(r.finished_at_ms.saturating_sub(r.started_at_ms).max(0) as u64)
            )
        )
    );
    for k in &r.kernels {
        kernel(&mut out, k, &paint);
    }

    let s = &r.stats;
    let _ = writeln!(
        out,
        "\n{}: {} crashes in {} buckets; {} recoveries, {} succeeded",
        paint(BOLD, "recovery"),
        s.crashes,
        s.buckets,
        s.recoveries,
        s.recovered
    );
    for t in targets(s) {
        let mark = if t.met {
            paint(GREEN, "ok  ")
        } else {
            paint(RED, "MISS")
        };
        let _ = writeln!(
            out,
            "  {mark} {:24} {:>9}  (target {})",
            t.name, t.value, t.target
        );
    }

    if !r.buckets.is_empty() {
        let _ = writeln!(
            out,
            "\n{}\n  {:>5}  {:17}  {:24}  TITLE",
            paint(BOLD, "crash buckets"),
            "COUNT",
            "CATEGORY",
            "KERNELS"
        );
        for b in &r.buckets {
            let _ = writeln!(
                out,
                "  {:>5}  {:17}  {:24}  {}",
                b.count,
                b.category,
                b.kernels.join(","),
                one_line(&b.title)
            );
        }
    }

    let all: Vec<&TestResult> = r.kernels.iter().flat_map(|k| &k.tests).collect();
    let n = |st: TestStatus| all.iter().filter(|t| t.status == st).count();
    let aborted = r
        .kernels
        .iter()
        .filter(|k| k.harness_error.is_some())
        .count();
    let verdict = if r.all_ok() {
        paint(GREEN, "PASSED")
    } else {
        paint(RED, "FAILED")
    };
    let _ = writeln!(
        out,
        "\n{verdict}: {} tests on {} kernels: {} passed, {} failed, {} crashed, {} skipped, {} errors; {} kernels aborted",
        all.len(),
        r.kernels.len(),
        n(TestStatus::Passed),
        n(TestStatus::Failed),
        n(TestStatus::Crashed),
        n(TestStatus::Skipped),
        n(TestStatus::Error),
        aborted,
    );
    out
}

fn kernel(out: &mut String, k: &KernelResults, paint: &dyn Fn(Style, &str) -> String) {
    let _ = writeln!(
        out,
        "\n{} ({}, first boot {})",
        paint(BOLD, &format!("kernel {}", k.kernel)),
        k.accel,
        dur(k.boot_ms)
    );
    let width = k.tests.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &k.tests {
        let (label, code) = match t.status {
            TestStatus::Passed => ("PASS", GREEN),
            TestStatus::Failed => ("FAIL", RED),
            TestStatus::Crashed => ("CRASH", RED),
            TestStatus::Skipped => ("SKIP", YELLOW),
            TestStatus::Error => ("ERROR", MAGENTA),
            TestStatus::BuildFailed => ("BUILD FAILED", MAGENTA),
        };
        // Pad before painting: escape codes would throw the columns off.
        let status = paint(code, &format!("{label:5}"));
        let mut detail = String::new();
        for c in &t.crashes {
            let _ = write!(
                detail,
                "  {}{} [{}, {} L{} in {}]",
                if c.expected { "expected: " } else { "" },
                one_line(&c.title),
                c.category,
                if c.recovered {
                    "recovered"
                } else {
                    "NOT recovered"
                },
                c.recovery_level,
                dur(c.recovery_ms),
            );
            if let Some(d) = &c.data_loss {
                let what = if d.expected {
                    "data loss caught"
                } else {
                    "DATA LOSS"
                };
                let _ = write!(detail, "  {what}: {}", one_line(&d.detail));
            }
        }
        if !t.message.is_empty() && t.status != TestStatus::Passed {
            let _ = write!(detail, "  {}", one_line(&t.message));
        }
        if t.attempts > 1 {
            let _ = write!(detail, "  ({} attempts)", t.attempts);
        }
        let detail = if detail.is_empty() {
            detail
        } else {
            paint(DIM, &detail)
        };
        let line = format!(
            "  {status} {:>8}  {:width$}{detail}",
            dur(t.duration_ms),
            t.name,
        );
        let _ = writeln!(out, "{}", line.trim_end());
        for note in &t.notes {
            let _ = writeln!(
                out,
                "      {}",
                paint(DIM, &format!("note: {}", one_line(note)))
            );
        }
    }
    let n = |st: TestStatus| k.tests.iter().filter(|t| t.status == st).count();
    let _ = writeln!(
        out,
        "  {} tests: {} passed, {} failed, {} crashed, {} skipped, {} errors in {} (boot {}, tests {}, recovery {})",
        k.tests.len(),
        n(TestStatus::Passed),
        n(TestStatus::Failed),
        n(TestStatus::Crashed),
        n(TestStatus::Skipped),
        n(TestStatus::Error),
        dur(k.duration_ms),
        dur(k.time_boot_ms),
        dur(k.time_tests_ms),
        dur(k.time_recovery_ms),
    );
    // The compiler's first errors, once per kernel (every test carries the same).
    if let Some(t) = k.tests.iter().find(|t| t.status == TestStatus::BuildFailed) {
        for l in t.message.lines() {
            let _ = writeln!(out, "    {}", paint(DIM, l));
        }
    }
    if let Some(e) = &k.harness_error {
        let _ = writeln!(out, "  {} {}", paint(MAGENTA, "ABORTED"), one_line(e));
    }
}

/// First line, control characters made visible: titles and messages come from
/// kernel logs and must not move the terminal's cursor or change its colors.
fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    if s.trim_end().contains('\n') {
        out.push_str(" ...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn plain_summary() {
        let s = summary(&sample(), false);
        assert!(!s.contains('\x1b'), "{s}");
        assert!(
            s.contains(
                "vexfs plan smoke (run 42, shard 1/2) started 2025-11-30 23:00:00 UTC, took 65.0 s"
            ),
            "{s}"
        );
        assert!(s.contains("  PASS     1.2 s  mount_basic\n"), "{s}");
        assert!(
            s.contains("  FAIL     0.5 s  write_read      checksum mismatch"),
            "{s}"
        );
        assert!(s.contains("  CRASH    4.0 s  null_deref      BUG: kernel NULL pointer dereference in vexfs_write<T> [module_crash, recovered L1 in 2.1 s]  unexpected crash  (2 attempts)"), "{s}");
        assert!(s.contains("expected_panic  expected: Kernel panic"), "{s}");
        assert!(
            s.contains("  6 tests: 2 passed, 1 failed, 1 crashed, 1 skipped, 1 errors in 45.0 s"),
            "{s}"
        );
        assert!(s.contains("  ABORTED guest never booted"), "{s}");
        assert!(
            s.contains("  ok   recovery success rate       100.0%  (target > 95%)"),
            "{s}"
        );
        assert!(
            s.contains("      2  module_crash       6.1.0-vexfs               BUG: kernel NULL"),
            "{s}"
        );
        assert!(s.contains("FAILED: 7 tests on 2 kernels: 3 passed, 1 failed, 1 crashed, 1 skipped, 1 errors; 1 kernels aborted"), "{s}");
    }

    #[test]
    fn colored_summary_and_misses() {
        let mut r = sample();
        r.stats.mean_recovery_ms = 45_000.0;
        let s = summary(&r, true);
        assert!(s.contains("\x1b[31mMISS\x1b[0m mean recovery time"), "{s}");
        assert!(s.contains("\x1b[32mPASS \x1b[0m"), "{s}");
        assert!(s.contains("\x1b[31mFAILED\x1b[0m"), "{s}");
    }

    #[test]
    fn passing_run_and_hostile_titles() {
        let mut r = sample();
        r.kernels.truncate(1);
        r.kernels[0]
            .tests
            .retain(|t| t.status == TestStatus::Passed);
        r.kernels[0].tests[0].crashes = sample().kernels[0].tests[2].crashes.clone();
        r.kernels[0].tests[0].crashes[0].title = "evil \x1b[2J title\nsecond line".into();
        let s = summary(&r, false);
        assert!(s.contains("PASSED: 2 tests"), "{s}");
        assert!(s.contains("evil \\x1b[2J title ..."), "{s}");
    }

    #[test]
    fn notes_print_under_their_test() {
        let mut r = sample();
        r.kernels[0].tests[0].notes = vec!["kernel log records 3..=4 lost".into()];
        let s = summary(&r, false);
        assert!(
            s.contains("  mount_basic\n      note: kernel log records 3..=4 lost\n"),
            "{s}"
        );
    }
}
