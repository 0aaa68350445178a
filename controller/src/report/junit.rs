//! JUnit XML as Jenkins, GitLab and GitHub test reporters read it (the Jenkins
//! `junit-10.xsd` structure): one `<testsuite>` per kernel, one `<testcase>` per test.
//! `<testsuites>` carries no `skipped` attribute because that schema has none; each
//! `<testsuite>` has it.

use std::fmt::Write;

use crate::results::{KernelResults, RunResults, TestResult, TestStatus};

use super::{attr, iso_time, text};

/// Renders the run as JUnit XML.
pub fn junit(r: &RunResults) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let mut suites = String::new();
    let (mut tests, mut failures, mut errors) = (0, 0, 0);
    for k in &r.kernels {
        let c = Counts::of(k);
        tests += c.tests;
        failures += c.failures;
        errors += c.errors;
        suite(&mut suites, r, k, &c);
    }
    let name = match &r.shard {
        Some(s) => format!("vexfs {} (shard {s})", r.plan),
        None => format!("vexfs {}", r.plan),
    };
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\">",
        attr(&name),
        secs(r.finished_at_ms.saturating_sub(r.started_at_ms).max(0) as u64),
    );
    out.push_str(&suites);
    out.push_str("</testsuites>\n");
    out
}

struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

impl Counts {
    fn of(k: &KernelResults) -> Counts {
        let n = |s: &[TestStatus]| k.tests.iter().filter(|t| s.contains(&t.status)).count();
        let harness = usize::from(k.harness_error.is_some());
        Counts {
            tests: k.tests.len() + harness,
            failures: n(&[TestStatus::Failed, TestStatus::Crashed]),
            errors: n(&[TestStatus::Error, TestStatus::BuildFailed]) + harness,
            skipped: n(&[TestStatus::Skipped]),
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn suite(out: &mut String, r: &RunResults, k: &KernelResults, c: &Counts) {
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\">",
        attr(&k.kernel),
        c.tests,
        c.failures,
        c.errors,
        c.skipped,
        secs(k.duration_ms),
        iso_time(r.started_at_ms),
    );
    out.push_str("    <properties>\n");
    let mut prop = |name: &str, value: &str| {
        let _ = writeln!(
            out,
            "      <property name=\"{}\" value=\"{}\"/>",
            attr(name),
            attr(value)
        );
    };
    prop("plan", &r.plan);
    prop("run_id", &r.run_id.to_string());
    if let Some(s) = &r.shard {
        prop("shard", s);
    }
    prop("accel", &k.accel);
    prop("boot_ms", &k.boot_ms.to_string());
    prop("time_boot_ms", &k.time_boot_ms.to_string());
    prop("time_tests_ms", &k.time_tests_ms.to_string());
    prop("time_recovery_ms", &k.time_recovery_ms.to_string());
    out.push_str("    </properties>\n");
    let classname = format!("vexfs.{}", k.kernel);
    for t in &k.tests {
        case(out, &classname, t);
    }
    if let Some(e) = &k.harness_error {
        // CI systems only show testcases, so the abort gets one of its own.
        let _ = writeln!(
            out,
            "    <testcase classname=\"{}\" name=\"(harness)\" time=\"{}\">\n      <error message=\"{}\" type=\"harness\">{}</error>\n    </testcase>",
            attr(&classname),
            secs(k.time_boot_ms),
            attr(e),
            text(e),
        );
    }
    out.push_str("  </testsuite>\n");
}

fn case(out: &mut String, classname: &str, t: &TestResult) {
    let _ = write!(
        out,
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\">",
        attr(classname),
        attr(&t.name),
        secs(t.duration_ms),
    );
    // Child order is fixed by the schema: skipped, error*, failure*, system-out.
    let mut body = String::new();
    let mut reported = vec![false; t.crashes.len()];
    match t.status {
        TestStatus::Passed => {}
        TestStatus::Skipped => {
            let _ = write!(body, "\n      <skipped message=\"{}\"/>", attr(&t.message));
        }
        TestStatus::BuildFailed => {
            let _ = write!(
                body,
                "\n      <error message=\"{}\" type=\"build\">{}</error>",
                attr(t.message.lines().next().unwrap_or_default()),
                text(&t.message)
            );
        }
        TestStatus::Error => {
            let _ = write!(
                body,
                "\n      <error message=\"{}\" type=\"harness\">{}</error>",
                attr(&t.message),
                text(&t.message)
            );
        }
        TestStatus::Failed | TestStatus::Crashed => {
            if t.status == TestStatus::Failed {
                let _ = write!(
                    body,
                    "\n      <failure message=\"{}\" type=\"assertion\">{}</failure>",
                    attr(&t.message),
                    text(&t.message)
                );
            }
            for (i, c) in t.crashes.iter().enumerate().filter(|(_, c)| !c.expected) {
                reported[i] = true;
                let _ = write!(
                    body,
                    "\n      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    attr(&c.title),
                    attr(c.category.as_str()),
                    text(&c.report)
                );
            }
            if t.status == TestStatus::Crashed && !reported.contains(&true) {
                let msg = match &t.expected_crash {
                    Some(e) if t.message.is_empty() => format!("expected crash {e:?} differed"),
                    _ => t.message.clone(),
                };
                let _ = write!(
                    body,
                    "\n      <failure message=\"{}\" type=\"crash\">{}</failure>",
                    attr(&msg),
                    text(&msg)
                );
            }
        }
    }
    let out_text = system_out(t, &reported);
    if !out_text.is_empty() {
        let _ = write!(body, "\n      <system-out>{}</system-out>", text(&out_text));
    }
    if body.is_empty() {
        out.pop();
        out.push_str("/>\n");
    } else {
        out.push_str(&body);
        out.push_str("\n    </testcase>\n");
    }
}

/// What a reader of a passing (or skipped) test still wants: the crashes that were
/// not failures (expected ones), retries and the recorded metrics.
fn system_out(t: &TestResult, reported: &[bool]) -> String {
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
            c.report.trim_end(),
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
    use crate::report::tests::sample;

    #[test]
    fn counts_and_shapes() {
        let x = junit(&sample());
        assert!(x.contains(
            "<testsuites name=\"vexfs smoke (shard 1/2)\" tests=\"8\" failures=\"2\" errors=\"2\" time=\"65.000\">"
        ), "{x}");
        assert!(x.contains(
            "<testsuite name=\"6.1.0-vexfs\" tests=\"6\" failures=\"2\" errors=\"1\" skipped=\"1\""
        ));
        assert!(x.contains(
            "<testsuite name=\"6.6.0-vexfs\" tests=\"2\" failures=\"0\" errors=\"1\" skipped=\"0\""
        ));
        assert!(x.contains(
            "<testcase classname=\"vexfs.6.1.0-vexfs\" name=\"mount_basic\" time=\"1.200\">"
        ));
        assert!(x.contains("<failure message=\"checksum mismatch at offset 4096: &quot;a&quot; != &#39;b&#39;\" type=\"assertion\">"));
        assert!(x.contains("<failure message=\"BUG: kernel NULL pointer dereference in vexfs_write&lt;T&gt;\" type=\"module_crash\">BUG: &lt;vexfs_write+0x1c/0x80&gt; &amp; friends ]]&gt; end\\x01\\x7f&#13;\n  CR2: 0</failure>"), "{x}");
        assert!(x.contains("<skipped message=\"isolated after 3 crashes\"/>"));
        assert!(x.contains("<error message=\"agent unreachable\" type=\"harness\">"));
        assert!(x.contains("name=\"(harness)\""));
        // The expected crash is a pass that lists the crash.
        let panic = x.split("name=\"expected_panic\"").nth(1).unwrap();
        let panic = &panic[..panic.find("</testcase>").unwrap()];
        assert!(!panic.contains("<failure"), "{panic}");
        assert!(panic.contains("<system-out>expected crash #8 [kernel_panic] Kernel panic - not syncing: vexfs &amp; co"));
        assert!(!x.contains('\x01'));
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
        // The schema has teeth: a testcase without a name, or children out of order, fail.
        let xml = junit(&sample());
        let nameless = xml.replacen(" name=\"mount_basic\"", "", 1);
        assert!(!lint("nameless.xml", &nameless).status.success());
        let reordered = xml.replacen(
            "<skipped message=\"isolated after 3 crashes\"/>",
            "<system-out>x</system-out><skipped/>",
            1,
        );
        assert!(!lint("reordered.xml", &reordered).status.success());
    }
}
