//! JUnit XML as Jenkins, GitLab and GitHub test reporters read it (the Jenkins
//! `junit-10.xsd` structure): one `<testsuite>` per kernel, one `<testcase>` per test,
//! built with `quick-junit` (nextest's data model and writer: escaping, control
//! characters and ANSI escapes are its job). Each test status maps to one
//! `TestCaseStatus` in [`status`]; a new result kind is one more arm there.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::results::{CrashSummary, KernelResults, RunResults, TestResult, TestStatus};

use super::html::CrashExtras;

/// Renders the run as JUnit XML.
pub fn junit(r: &RunResults) -> String {
    junit_with(r, &HashMap::new())
}

/// [`junit`] with the module frames resolved to source lines (`vexfs.c:LINE`) in the
/// text of the crashes in `extras` (by crash id; `CrashExtras::source_lines`, as
/// `crate::artifacts::html_extras` gives them).
pub fn junit_with(r: &RunResults, extras: &HashMap<i64, CrashExtras>) -> String {
    let name = match &r.shard {
        Some(s) => format!("vexfs {} (shard {s})", r.plan),
        None => format!("vexfs {}", r.plan),
    };
    let mut report = Report::new(name);
    report.set_time(ms(
        r.finished_at_ms.saturating_sub(r.started_at_ms).max(0) as u64
    ));
    for k in &r.kernels {
        report.add_test_suite(suite(r, k, extras));
    }
    // Serializing into memory has no I/O to fail, and every string went through
    // XmlString (control characters removed), so quick-xml has nothing to refuse.
    let xml = report
        .to_string()
        .expect("serializing a JUnit report into a String cannot fail");
    without_root_skipped(&xml)
}

/// Drops the `skipped` attribute quick-junit always writes on `<testsuites>`: the
/// Jenkins schema has none there (each `<testsuite>` keeps its own).
fn without_root_skipped(xml: &str) -> String {
    let Some(start) = xml.find("<testsuites") else {
        return xml.to_string();
    };
    let end = xml[start..].find('>').map_or(xml.len(), |e| start + e);
    let head = &xml[start..end];
    // Attribute values have their quotes escaped, so this is the attribute itself.
    let Some(at) = head.find(" skipped=\"") else {
        return xml.to_string();
    };
    let value_end = head[at + 10..]
        .find('"')
        .map_or(head.len(), |e| at + 10 + e + 1);
    let mut out = String::with_capacity(xml.len());
    out.push_str(&xml[..start + at]);
    out.push_str(&xml[start + value_end..]);
    out
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn timestamp(ms: i64) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.fixed_offset())
}

fn suite(r: &RunResults, k: &KernelResults, extras: &HashMap<i64, CrashExtras>) -> TestSuite {
    let mut s = TestSuite::new(&k.kernel);
    s.set_time(ms(k.duration_ms));
    if let Some(t) = timestamp(r.started_at_ms) {
        s.set_timestamp(t);
    }
    let mut props = vec![("plan", r.plan.clone()), ("run_id", r.run_id.to_string())];
    if let Some(sh) = &r.shard {
        props.push(("shard", sh.clone()));
    }
    props.extend([
        ("accel", k.accel.clone()),
        ("boot_ms", k.boot_ms.to_string()),
        ("time_boot_ms", k.time_boot_ms.to_string()),
        ("time_tests_ms", k.time_tests_ms.to_string()),
        ("time_recovery_ms", k.time_recovery_ms.to_string()),
    ]);
    s.add_properties(props.into_iter().map(|(n, v)| Property::new(n, v)));
    let classname = format!("vexfs.{}", k.kernel);
    s.add_test_cases(k.tests.iter().map(|t| case(&classname, t, extras)));
    if let Some(e) = &k.harness_error {
        // CI systems only show testcases, so the abort gets one of its own.
        let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
        st.set_message(e).set_type("harness").set_description(e);
        let mut c = TestCase::new("(harness)", st);
        c.set_classname(&classname).set_time(ms(k.time_boot_ms));
        s.add_test_case(c);
    }
    s
}

fn case(classname: &str, t: &TestResult, extras: &HashMap<i64, CrashExtras>) -> TestCase {
    let (status, reported) = status(t, extras);
    let mut c = TestCase::new(&t.name, status);
    c.set_classname(classname).set_time(ms(t.duration_ms));
    let out = system_out(t, &reported, extras);
    if !out.is_empty() {
        c.set_system_out(out);
    }
    c
}

/// The crash's report, with source lines for the module frames when known.
fn report_text<'a>(c: &'a CrashSummary, extras: &'a HashMap<i64, CrashExtras>) -> &'a str {
    extras
        .get(&c.id)
        .and_then(|x| x.source_lines.as_deref())
        .unwrap_or(&c.report)
}

/// The test's JUnit status, and which of its crashes it reports (the rest go to
/// system-out).
fn status(t: &TestResult, extras: &HashMap<i64, CrashExtras>) -> (TestCaseStatus, Vec<bool>) {
    let mut reported = vec![false; t.crashes.len()];
    let status = match t.status {
        TestStatus::Passed => TestCaseStatus::success(),
        TestStatus::Skipped => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(&t.message);
            s
        }
        TestStatus::BuildFailed => {
            // The compiler's first errors: the first line as the message, all as text.
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(t.message.lines().next().unwrap_or_default())
                .set_type("build")
                .set_description(&t.message);
            s
        }
        TestStatus::Error => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(&t.message)
                .set_type("harness")
                .set_description(&t.message);
            s
        }
        TestStatus::Failed | TestStatus::Crashed => {
            // One <failure> per testcase (the model's): the assertion, if any, then
            // every unexpected crash with its report.
            let unexpected: Vec<(usize, &CrashSummary)> = t
                .crashes
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.expected)
                .collect();
            let mut text = String::new();
            let (message, ty) = if t.status == TestStatus::Failed {
                text.push_str(&t.message);
                (t.message.clone(), "assertion".to_string())
            } else if let Some((_, first)) = unexpected.first() {
                let more = match unexpected.len() {
                    1 => String::new(),
                    n => format!(" (+{} more crashes)", n - 1),
                };
                (
                    format!("{}{more}", first.title),
                    first.category.as_str().to_string(),
                )
            } else {
                let msg = match &t.expected_crash {
                    Some(e) if t.message.is_empty() => format!("expected crash {e:?} differed"),
                    _ => t.message.clone(),
                };
                text.push_str(&msg);
                (msg, "crash".to_string())
            };
            for (i, c) in &unexpected {
                reported[*i] = true;
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                if unexpected.len() > 1 || t.status == TestStatus::Failed {
                    let _ = writeln!(text, "crash #{} [{}] {}", c.id, c.category, c.title);
                }
                text.push_str(report_text(c, extras));
            }
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(message).set_type(ty).set_description(text);
            s
        }
    };
    (status, reported)
}

/// What a reader of a passing (or skipped) test still wants: the crashes that were
/// not failures (expected ones), retries and the recorded metrics.
fn system_out(t: &TestResult, reported: &[bool], extras: &HashMap<i64, CrashExtras>) -> String {
    let mut s = String::new();
    if t.attempts > 1 {
        let _ = writeln!(s, "attempts: {}", t.attempts);
    }
    for (c, _) in t.crashes.iter().zip(reported).filter(|(_, r)| !**r) {
        let _ = writeln!(
            s,
            "{} crash #{} [{}] {}\nrecovery: level {}, {} ms, {}, fate {}\n{}",
            if c.expected { "expected" } else { "recorded" },
            c.id,
            c.category,
            c.title,
            c.recovery_level,
            c.recovery_ms,
            if c.recovered {
                "recovered"
            } else {
                "NOT recovered"
            },
            c.fate.map_or("not_recorded", |f| f.as_str()),
            report_text(c, extras).trim_end(),
        );
    }
    for (name, value) in &t.metrics {
        let _ = writeln!(s, "metric {name} = {value}");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::classify::Category;
    use crate::report::tests::sample;

    #[test]
    fn counts_and_shapes() {
        let x = junit(&sample());
        assert!(
            x.contains(
                "<testsuites name=\"vexfs smoke (shard 1/2)\" tests=\"8\" failures=\"2\" errors=\"2\" time=\"65.000\">"
            ),
            "{x}"
        );
        assert!(x.contains(
            "<testsuite name=\"6.1.0-vexfs\" tests=\"6\" skipped=\"1\" errors=\"1\" failures=\"2\" timestamp=\"2025-11-30T23:00:00.000+00:00\" time=\"45.000\">"
        ), "{x}");
        assert!(x.contains(
            "<testsuite name=\"6.6.0-vexfs\" tests=\"2\" skipped=\"0\" errors=\"1\" failures=\"0\""
        ));
        assert!(
            x.contains("<property name=\"shard\" value=\"1/2\"/>"),
            "{x}"
        );
        assert!(x.contains(
            "<testcase name=\"mount_basic\" classname=\"vexfs.6.1.0-vexfs\" time=\"1.200\">"
        ));
        assert!(x.contains("<failure message=\"checksum mismatch at offset 4096: &quot;a&quot; != &apos;b&apos;\" type=\"assertion\">"), "{x}");
        // Escaped, \x01 and \r dropped (quick-junit strips control characters), the
        // report as the failure's text.
        assert!(x.contains("<failure message=\"BUG: kernel NULL pointer dereference in vexfs_write&lt;T&gt;\" type=\"module_crash\">BUG: &lt;vexfs_write+0x1c/0x80&gt; &amp; friends ]]&gt; end\x7f\n  CR2: 0</failure>"), "{x}");
        assert!(x.contains("<skipped message=\"isolated after 3 crashes\"/>"));
        assert!(x.contains("<error message=\"agent unreachable\" type=\"harness\">"));
        assert!(x.contains("<testcase name=\"(harness)\""));
        // The expected crash is a pass that lists the crash.
        let panic = x.split("name=\"expected_panic\"").nth(1).unwrap();
        let panic = &panic[..panic.find("</testcase>").unwrap()];
        assert!(!panic.contains("<failure"), "{panic}");
        assert!(panic.contains("<system-out>expected crash #8 [kernel_panic] Kernel panic - not syncing: vexfs &amp; co"));
        assert!(!x.contains('\x01'));
    }

    #[test]
    fn an_assertion_and_crashes_share_one_failure() {
        let mut r = sample();
        let mut c = r.kernels[0].tests[2].crashes[0].clone();
        c.id = 9;
        c.category = Category::MemoryCorruption;
        c.title = "list_add corruption".into();
        c.report = "list_add corruption.\n".into();
        r.kernels[0].tests[1].crashes = vec![c];
        let x = junit(&r);
        let case = x.split("name=\"write_read\"").nth(1).unwrap();
        let case = &case[..case.find("</testcase>").unwrap()];
        assert_eq!(case.matches("<failure").count(), 1, "{case}");
        assert!(case.contains("type=\"assertion\""), "{case}");
        assert!(
            case.contains("\n\ncrash #9 [memory_corruption] list_add corruption\nlist_add"),
            "{case}"
        );
        assert!(!case.contains("<system-out>"), "{case}");
    }

    #[test]
    fn root_skipped_attribute_only_is_dropped() {
        let x = "<?xml?>\n<testsuites name=\"a skipped=&quot;\" tests=\"1\" skipped=\"3\" errors=\"0\">\n<testsuite skipped=\"3\"/>";
        assert_eq!(
            without_root_skipped(x),
            "<?xml?>\n<testsuites name=\"a skipped=&quot;\" tests=\"1\" errors=\"0\">\n<testsuite skipped=\"3\"/>"
        );
        assert_eq!(without_root_skipped("<a/>"), "<a/>");
    }

    /// A crash of the real vexfs module: its failure text names the source line the
    /// module's DWARF gives (the same data `crashes show` prints).
    #[test]
    fn crash_text_carries_symbolized_module_frames() {
        let ko = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/symbolize/6.12.117+deb12-amd64/vexfs.ko");
        let mut r = sample();
        let crash = &mut r.kernels[0].tests[2].crashes[0];
        crash.report = "BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                        RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs]\n"
            .into();
        let sym = crate::symbolize::report(&crash.report, &ko).unwrap();
        assert!(!sym.frames.is_empty());
        let extras = HashMap::from([(
            crash.id,
            CrashExtras {
                source_lines: Some(sym.text),
                artifacts: vec![],
            },
        )]);
        let plain = junit(&r);
        assert!(!plain.contains("vexfs.c:"), "{plain}");
        let x = junit_with(&r, &extras);
        let case = x.split("name=\"null_deref\"").nth(1).unwrap();
        let case = &case[..case.find("</testcase>").unwrap()];
        assert!(
            case.contains("RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs] vexfs.c:715\n"),
            "{case}"
        );
    }

    /// Runs `xmllint --schema` on the sample's JUnit output; xmllint is required
    /// (Debian package libxml2-utils), never skipped.
    #[test]
    fn validates_against_junit_xsd() {
        let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit.xsd");
        let dir = tempfile::tempdir().unwrap();
        let lint = |name: &str, xml: &str| {
            let file = dir.path().join(name);
            std::fs::write(&file, xml).unwrap();
            Command::new("xmllint")
                .arg("--noout")
                .arg("--schema")
                .arg(&xsd)
                .arg(&file)
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run xmllint ({e}): install Debian package libxml2-utils")
                })
        };
        let mut unsharded = sample();
        unsharded.shard = None;
        unsharded.kernels[1].harness_error = None;
        for (i, r) in [sample(), unsharded].iter().enumerate() {
            let xml = junit(r);
            let out = lint(&format!("junit{i}.xml"), &xml);
            assert!(
                out.status.success(),
                "JUnit XML does not validate against {}:\n{}\n{xml}",
                xsd.display(),
                String::from_utf8_lossy(&out.stderr),
            );
        }
        // The schema has teeth: a testcase without a name, children out of order, or
        // the root's `skipped` quick-junit writes, fail.
        let xml = junit(&sample());
        let nameless = xml.replacen(" name=\"mount_basic\"", "", 1);
        assert!(!lint("nameless.xml", &nameless).status.success());
        let reordered = xml.replacen(
            "<skipped message=\"isolated after 3 crashes\"/>",
            "<system-out>x</system-out><skipped/>",
            1,
        );
        assert!(!lint("reordered.xml", &reordered).status.success());
        let root_skipped = xml.replacen(" tests=\"8\"", " tests=\"8\" skipped=\"1\"", 1);
        assert!(!lint("root-skipped.xml", &root_skipped).status.success());
    }
}
