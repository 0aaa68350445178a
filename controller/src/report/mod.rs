//! Reports of a run in the forms CI systems and people read: JUnit XML, JSON (also the
//! shard format `vexctl report merge` combines), a self-contained HTML page and the
//! terminal summary.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::results::RunResults;
use crate::scorecard::Stats;

pub mod html;
pub mod json;
pub mod junit;
pub mod kcidb;
pub mod kcidb_facts;
pub mod kcidb_types;
pub mod merge;
pub mod summary;

pub use html::html;
pub use json::{json, parse};
pub use junit::junit;
pub use merge::merge;
pub use summary::summary;

/// Errors of the report module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A results file is not valid results JSON.
    #[error("invalid results JSON: {0}")]
    Parse(serde_json::Error),
    /// `merge` got no parts.
    #[error("nothing to merge")]
    Empty,
    /// The parts come from different plans.
    #[error("cannot merge results of plan {found:?} into results of plan {expected:?}")]
    PlanMismatch {
        /// Plan of the first part.
        expected: String,
        /// Plan of the offending part.
        found: String,
    },
    /// The same test of the same kernel is in two parts (overlapping shards, or one
    /// file given twice): merging would double-count it.
    #[error("test {test:?} on kernel {kernel:?} is in more than one part")]
    Duplicate {
        /// Kernel release.
        kernel: String,
        /// Test name.
        test: String,
    },
    /// Writing a report file failed (full disk, missing directory, permissions).
    #[error("writing {}: {cause}", path.display())]
    Write {
        /// The report being written.
        path: PathBuf,
        /// The cause (not a `source`: the message already shows it, and anyhow's
        /// `{:#}` would print it twice).
        cause: std::io::Error,
    },
}

/// Writes the requested report files, each atomically (temp file in the same
/// directory, then rename) so a reader never sees a half-written report.
pub fn write_all(
    r: &RunResults,
    junit: Option<&Path>,
    json: Option<&Path>,
    html: Option<&Path>,
) -> Result<(), Error> {
    write_all_with(r, junit, json, html, None)
}

/// [`write_all`], and with the crash database at `db` the HTML report and JUnit show
/// each crash's module frames with source lines, and the HTML links its artifacts.
pub fn write_all_with(
    r: &RunResults,
    junit: Option<&Path>,
    json: Option<&Path>,
    html: Option<&Path>,
    db: Option<&Path>,
) -> Result<(), Error> {
    // One read of the database for both reports; links are relative to the HTML.
    let extras = match db {
        Some(db) => crate::artifacts::html_extras(db, r, html.and_then(Path::parent)),
        None => Default::default(),
    };
    if let Some(p) = junit {
        write_atomic(p, junit::junit_with(r, &extras).as_bytes())?;
    }
    if let Some(p) = json {
        write_atomic(p, json::json(r).as_bytes())?;
    }
    if let Some(p) = html {
        write_atomic(p, html::html_with(r, &extras).as_bytes())?;
    }
    Ok(())
}

/// Writes `data` to `path` through a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let err = |cause| Error::Write {
        path: path.to_path_buf(),
        cause,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("not a file path")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        // ENOSPC and friends may only show up here, not in write_all.
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// One recovery metric against its design target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Metric name.
    pub name: &'static str,
    /// Formatted value.
    pub value: String,
    /// Formatted target.
    pub target: &'static str,
    /// The target is met.
    pub met: bool,
}

/// The recovery metrics against the design targets (same thresholds as
/// `vexctl crashes stats`).
pub fn targets(s: &Stats) -> Vec<Target> {
    let t = |name, met, value, target| Target {
        name,
        value,
        target,
        met,
    };
    vec![
        t(
            "recovery success rate",
            s.recovery_success_rate >= 0.95,
            format!("{:.1}%", s.recovery_success_rate * 100.0),
            "> 95%",
        ),
        t(
            "mean recovery time",
            s.mean_recovery_ms < 30_000.0,
            format!("{:.1} s", s.mean_recovery_ms / 1000.0),
            "< 30 s",
        ),
        t(
            "p95 recovery time",
            s.p95_recovery_ms < 30_000.0,
            format!("{:.1} s", s.p95_recovery_ms / 1000.0),
            "< 30 s",
        ),
        t(
            "data integrity",
            s.data_integrity >= 1.0,
            format!("{:.1}%", s.data_integrity * 100.0),
            "100%",
        ),
        t(
            "test continuity",
            s.test_continuity >= 0.9,
            format!("{:.1}%", s.test_continuity * 100.0),
            "> 90%",
        ),
    ]
}

/// Escapes text for XML and HTML element content and attribute values alike.
/// Characters illegal in XML 1.0 (most C0 controls, U+FFFE/U+FFFF) and the C1
/// controls, which kernel reports sometimes carry, become a visible `\xNN`;
/// newlines and tabs in attributes are kept as character references so parsers do
/// not normalise them to spaces.
pub(crate) fn escape(s: &str, attr: bool) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' if attr => out.push_str("&#10;"),
            '\r' if attr => out.push_str("&#13;"),
            '\t' if attr => out.push_str("&#9;"),
            '\n' | '\t' => out.push(c),
            // A lone CR would be normalised to LF by the parser anyway.
            '\r' => out.push_str("&#13;"),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            _ => out.push(c),
        }
    }
    out
}

/// Escapes element content.
pub(crate) fn text(s: &str) -> String {
    escape(s, false)
}

/// Escapes an attribute value.
pub(crate) fn attr(s: &str) -> String {
    escape(s, true)
}

/// UTC time `YYYY-MM-DDTHH:MM:SS` of milliseconds since the epoch (jiff; times
/// outside its range, years before -9999 or after 9999, are clamped to it).
pub(crate) fn iso_time(ms: i64) -> String {
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    t.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Milliseconds as seconds with one decimal, `12.3 s`, or minutes past 100 s.
pub(crate) fn dur(ms: u64) -> String {
    if ms >= 100_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::classify::{Category, Severity};
    use crate::recovery::Fate;
    use crate::results::{
        CrashSummary, KernelResults, RecoveryEvent, RunResults, TestResult, TestStatus,
    };
    use crate::scorecard::Stats;
    use crate::store::Bucket;

    /// A report text with everything that breaks naive XML/HTML writers.
    pub const NASTY: &str = "BUG: <vexfs_write+0x1c/0x80> & friends ]]> end\x01\x7f\r\n  CR2: 0";

    fn test(name: &str, status: TestStatus, ms: u64, msg: &str) -> TestResult {
        TestResult {
            name: name.into(),
            status,
            duration_ms: ms,
            message: msg.into(),
            expected_crash: None,
            crashes: vec![],
            attempts: 1,
            steps: vec![],
            metrics: vec![],
            notes: Vec::new(),
        }
    }

    fn crash(id: i64, cat: Category, title: &str, expected: bool, report: &str) -> CrashSummary {
        CrashSummary {
            id,
            category: cat,
            severity: Severity::High,
            title: title.into(),
            expected,
            recovery_level: 1,
            fate: Some(Fate::Continue),
            recovery_ms: 2_100,
            recovered: true,
            intact: true,
            report: report.into(),
            data_loss: None,
        }
    }

    /// Two kernels with every status, an expected crash, an unexpected crash whose
    /// report holds `<`, `&`, `]]>` and a \x01 byte, and a kernel the harness gave up on.
    pub fn sample() -> RunResults {
        let t0 = 1_764_543_600_000; // 2025-11-30T23:00:00Z
        let mut mount = test("mount_basic", TestStatus::Passed, 1_200, "");
        mount.metrics = vec![("mount_ms".into(), 41.5)];
        let write = test(
            "write_read",
            TestStatus::Failed,
            500,
            "checksum mismatch at offset 4096: \"a\" != 'b'",
        );
        let mut null = test("null_deref", TestStatus::Crashed, 4_000, "unexpected crash");
        null.crashes = vec![crash(
            7,
            Category::ModuleCrash,
            "BUG: kernel NULL pointer dereference in vexfs_write<T>",
            false,
            NASTY,
        )];
        null.attempts = 2;
        let mut panic = test("expected_panic", TestStatus::Passed, 3_000, "");
        panic.expected_crash = Some("kernel_panic".into());
        panic.crashes = vec![crash(
            8,
            Category::KernelPanic,
            "Kernel panic - not syncing: vexfs & co",
            true,
            "Kernel panic - not syncing: vexfs & co\n",
        )];
        let skip = test(
            "isolated",
            TestStatus::Skipped,
            0,
            "isolated after 3 crashes",
        );
        let error = test("agent_lost", TestStatus::Error, 30_000, "agent unreachable");
        let k1 = KernelResults {
            kernel: "6.1.0-vexfs".into(),
            accel: "kvm".into(),
            boot_ms: 3_200,
            duration_ms: 45_000,
            time_boot_ms: 6_400,
            time_tests_ms: 38_700,
            time_recovery_ms: 2_100,
            tests: vec![mount, write, null, panic, skip, error],
            harness_error: None,
        };
        let k2 = KernelResults {
            kernel: "6.6.0-vexfs".into(),
            accel: "tcg".into(),
            boot_ms: 9_000,
            duration_ms: 20_000,
            time_boot_ms: 18_000,
            time_tests_ms: 1_000,
            time_recovery_ms: 0,
            tests: vec![test("mount_basic", TestStatus::Passed, 1_000, "")],
            harness_error: Some("guest never booted after reset: <timeout> & gave up".into()),
        };
        RunResults {
            run_id: 42,
            plan: "smoke".into(),
            shard: Some("1/2".into()),
            started_at_ms: t0,
            finished_at_ms: t0 + 65_000,
            kernels: vec![k1, k2],
            stats: Stats {
                crashes: 2,
                buckets: 2,
                recoveries: 2,
                recovered: 2,
                recovery_success_rate: 1.0,
                mean_recovery_ms: 2_100.0,
                p95_recovery_ms: 2_100.0,
                data_integrity: 1.0,
                test_continuity: 0.9,
            },
            buckets: vec![
                Bucket {
                    id: 1,
                    signature: "module_crash:vexfs_write".into(),
                    title: "BUG: kernel NULL pointer dereference in vexfs_write<T>".into(),
                    category: Category::ModuleCrash,
                    first_seen_ms: t0 + 5_000,
                    last_seen_ms: t0 + 9_000,
                    count: 2,
                    kernels: vec!["6.1.0-vexfs".into()],
                    tests: vec!["null_deref".into()],
                },
                Bucket {
                    id: 2,
                    signature: "kernel_panic:vexfs".into(),
                    title: "Kernel panic - not syncing: vexfs & co".into(),
                    category: Category::KernelPanic,
                    first_seen_ms: t0 + 12_000,
                    last_seen_ms: t0 + 12_000,
                    count: 1,
                    kernels: vec!["6.1.0-vexfs".into()],
                    tests: vec!["expected_panic".into()],
                },
            ],
            timeline: vec![
                RecoveryEvent {
                    kernel: "6.1.0-vexfs".into(),
                    test: "null_deref".into(),
                    crash_id: 7,
                    level: 1,
                    action: "reload".into(),
                    started_at_ms: t0 + 6_000,
                    duration_ms: 2_100,
                    outcome: "succeeded".into(),
                },
                RecoveryEvent {
                    kernel: "6.1.0-vexfs".into(),
                    test: "expected_panic".into(),
                    crash_id: 8,
                    level: 2,
                    action: "system_reset".into(),
                    started_at_ms: t0 + 13_000,
                    duration_ms: 2_100,
                    outcome: "succeeded".into(),
                },
            ],
        }
    }

    #[test]
    fn escape_handles_markup_controls_and_attrs() {
        assert_eq!(
            text("a<b>&\"c'\x01\x7f\tz\n"),
            "a&lt;b&gt;&amp;&quot;c&#39;\\x01\\x7f\tz\n"
        );
        assert_eq!(attr("a\nb\tc\rd"), "a&#10;b&#9;c&#13;d");
        assert_eq!(text("\u{fffe}"), "\u{fffd}");
        assert_eq!(text("]]>"), "]]&gt;");
    }

    #[test]
    fn iso_time_is_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00");
        assert_eq!(iso_time(1_764_543_600_000), "2025-11-30T23:00:00");
        assert_eq!(iso_time(951_782_400_999), "2000-02-29T00:00:00");
        assert_eq!(iso_time(-1), "1969-12-31T23:59:59");
        assert!(iso_time(i64::MAX).starts_with("9999-12-3"));
    }

    #[test]
    fn write_all_is_atomic_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample();
        let (j, s, h) = (
            dir.path().join("junit.xml"),
            dir.path().join("results.json"),
            dir.path().join("report.html"),
        );
        write_all(&r, Some(&j), Some(&s), Some(&h)).unwrap();
        assert_eq!(parse(&std::fs::read_to_string(&s).unwrap()).unwrap(), r);
        assert!(std::fs::read_to_string(&j).unwrap().starts_with("<?xml"));
        assert!(
            std::fs::read_to_string(&h)
                .unwrap()
                .starts_with("<!DOCTYPE html>")
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 3, "no temp files left behind");

        let bad = dir.path().join("missing-dir").join("junit.xml");
        let e = write_all(&r, Some(&bad), None, None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("missing-dir/junit.xml"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn html_from_write_all_with_a_database_has_source_lines_and_artifact_links() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crashes.db");
        let mut r = sample();
        r.kernels[0].tests[2].crashes[0].report =
            "RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs]\n".into();
        let ko = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/symbolize/6.12.117+deb12-amd64/vexfs.ko"
        );
        crate::artifacts::write(
            &db,
            7,
            &crate::artifacts::Inputs {
                report: &r.kernels[0].tests[2].crashes[0].report,
                module_ko: Some(Path::new(ko)),
                ..Default::default()
            },
        )
        .unwrap();
        let h = dir.path().join("report.html");
        write_all_with(&r, None, None, Some(&h), Some(&db)).unwrap();
        let html = std::fs::read_to_string(&h).unwrap();
        assert!(html.contains("vexfs.c:715"), "no source line");
        assert!(html.contains("href=\"artifacts/7/report.txt\""), "no link");
        // Without a database the same report has neither.
        write_all(&r, None, None, Some(&h)).unwrap();
        assert!(
            !std::fs::read_to_string(&h)
                .unwrap()
                .contains("artifacts/7/")
        );
    }

    #[test]
    fn targets_flag_misses() {
        let mut s = sample().stats;
        assert!(targets(&s).iter().all(|t| t.met));
        s.recovery_success_rate = 0.5;
        s.p95_recovery_ms = 31_000.0;
        let missed: Vec<_> = targets(&s)
            .into_iter()
            .filter(|t| !t.met)
            .map(|t| t.name)
            .collect();
        assert_eq!(missed, ["recovery success rate", "p95 recovery time"]);
    }
}
