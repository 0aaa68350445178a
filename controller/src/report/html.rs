//! One self-contained HTML page for people: header, recovery metrics against their
//! targets, crash buckets, a tests × kernels matrix, a recovery timeline and the crash
//! reports. Inline CSS and a few lines of JS; no external resources (a CSP forbids
//! them), every value escaped.

use std::collections::HashMap;
use std::fmt::Write;

use crate::results::{RunResults, TestResult, TestStatus};

use super::merge::{test_names, test_of};
use super::{attr, dur, iso_time, targets, text};

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}td.num{text-align:right}
.badge{padding:.1em .5em;border-radius:.3em;color:#fff;font-size:.8em;vertical-align:middle}
.pass,.passed,.ok{background:#2e7d32}.fail,.failed,.crashed,.miss{background:#c62828}
.skipped{background:#f9a825}.error,.aborted{background:#6a1b9a}.none{background:#eee;color:#888}
#metrics td.mark{color:#fff;font-weight:bold}
#matrix td{color:#fff;white-space:nowrap}#matrix td a{color:#fff}
#matrix td.none{color:#888}#timeline{margin-top:.6em}
.lane{display:flex;align-items:center;margin:.2em 0}.lane-name{width:14em;flex:none;overflow:hidden;text-overflow:ellipsis}
.track{position:relative;flex:1;height:1.2em;background:#f3f3f3;border:1px solid #ddd}
.ev{position:absolute;top:0;bottom:0;min-width:3px;opacity:.85}.ev.succeeded{background:#2e7d32}.ev.failed,.ev.hung{background:#c62828}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.5em;overflow:auto;max-height:30em}
summary{cursor:pointer}
";

// Opening a crash's report when its matrix cell is clicked; the last line tells the
// test harness (and anyone curious) that the script ran without an error.
const JS: &str = "
for (const a of document.querySelectorAll('a[href^=\"#crash-\"]')) {
  a.addEventListener('click', () => {
    const d = document.getElementById(a.getAttribute('href').slice(1));
    if (d) d.open = true;
  });
}
document.body.dataset.ok = '1';
";

/// Per-crash additions to the page: source lines and links to the crash's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashExtras {
    /// The report (and forensics) with source lines for the module's frames.
    pub source_lines: Option<String>,
    /// Links to the crash's artifacts: (label, href).
    pub artifacts: Vec<(String, String)>,
}

/// Renders the run as one self-contained HTML page.
pub fn html(r: &RunResults) -> String {
    html_with(r, &HashMap::new())
}

/// [`html`] with source lines and artifact links for the crashes in `extras` (by id).
pub fn html_with(r: &RunResults, extras: &HashMap<i64, CrashExtras>) -> String {
    let mut o = String::new();
    let ok = r.all_ok();
    let verdict = if ok { "PASSED" } else { "FAILED" };
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>vexfs {} run {}: {verdict}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        text(&r.plan),
        r.run_id
    );
    header(&mut o, r, verdict, ok);
    metrics(&mut o, r);
    buckets(&mut o, r);
    matrix(&mut o, r);
    timeline(&mut o, r);
    reports(&mut o, r, extras);
    let _ = write!(o, "<script>{JS}</script>\n</body>\n</html>\n");
    o
}

fn header(o: &mut String, r: &RunResults, verdict: &str, ok: bool) {
    let all: Vec<&TestResult> = r.kernels.iter().flat_map(|k| &k.tests).collect();
    let n = |st: TestStatus| all.iter().filter(|t| t.status == st).count();
    let shard = r
        .shard
        .as_ref()
        .map(|s| format!(" · shard {}", text(s)))
        .unwrap_or_default();
    let _ = write!(
        o,
        "<header>\n<h1>vexfs plan {} <span id=\"verdict\" class=\"badge {}\">{verdict}</span></h1>\n\
         <p>run {}{shard} · started {} UTC · took {} · {} tests on {} kernels: {} passed, {} failed, {} crashed, {} skipped, {} errors</p>\n</header>\n",
        text(&r.plan),
        if ok { "pass" } else { "fail" },
        r.run_id,
        iso_time(r.started_at_ms).replace('T', " "),
        dur(r.finished_at_ms.saturating_sub(r.started_at_ms).max(0) as u64),
        all.len(),
        r.kernels.len(),
        n(TestStatus::Passed),
        n(TestStatus::Failed),
        n(TestStatus::Crashed),
        n(TestStatus::Skipped),
        n(TestStatus::Error),
    );
}

fn metrics(o: &mut String, r: &RunResults) {
    let s = &r.stats;
    let _ = write!(
        o,
        "<section>\n<h2>Recovery</h2>\n<p>{} crashes in {} buckets; {} recoveries, {} succeeded.</p>\n\
         <table id=\"metrics\">\n<thead><tr><th>Metric</th><th>Value</th><th>Target</th><th></th></tr></thead>\n<tbody>\n",
        s.crashes, s.buckets, s.recoveries, s.recovered
    );
    for t in targets(s) {
        let (class, mark) = if t.met {
            ("ok", "ok")
        } else {
            ("miss", "MISS")
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"mark {class}\">{mark}</td></tr>",
            text(t.name),
            text(&t.value),
            text(t.target)
        );
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
}

fn buckets(o: &mut String, r: &RunResults) {
    o.push_str(
        "<section>\n<h2>Crash buckets</h2>\n<table id=\"crashes\">\n<thead><tr><th>Count</th><th>Category</th><th>Title</th><th>Kernels</th><th>Tests</th></tr></thead>\n<tbody>\n",
    );
    for b in &r.buckets {
        let _ = writeln!(
            o,
            "<tr><td class=\"num\">{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            b.count,
            text(b.category.as_str()),
            attr(&b.signature),
            text(&b.title),
            text(&b.kernels.join(", ")),
            text(&b.tests.join(", "))
        );
    }
    if r.buckets.is_empty() {
        o.push_str("<tr><td colspan=\"5\">No crashes.</td></tr>\n");
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
}

fn anchor(k: usize, t: usize, c: usize) -> String {
    // Positions, not crash ids: ids repeat across shards merged from different databases.
    format!("crash-{k}-{t}-{c}")
}

fn matrix(o: &mut String, r: &RunResults) {
    o.push_str("<section>\n<h2>Tests</h2>\n<table id=\"matrix\">\n<thead><tr><th>Test</th>");
    for k in &r.kernels {
        let _ = write!(
            o,
            "<th>{} <small>({})</small></th>",
            text(&k.kernel),
            text(&k.accel)
        );
    }
    o.push_str("</tr></thead>\n<tbody>\n");
    for name in test_names(&r.kernels) {
        let _ = write!(o, "<tr><th>{}</th>", text(&name));
        for (ki, k) in r.kernels.iter().enumerate() {
            let Some(t) = test_of(k, &name) else {
                o.push_str("<td class=\"none\">—</td>");
                continue;
            };
            let ti = k.tests.iter().position(|x| std::ptr::eq(x, t)).unwrap_or(0);
            let (label, class) = match t.status {
                TestStatus::Passed => ("PASS", "passed"),
                TestStatus::Failed => ("FAIL", "failed"),
                TestStatus::Crashed => ("CRASH", "crashed"),
                TestStatus::Skipped => ("SKIP", "skipped"),
                TestStatus::Error => ("ERROR", "error"),
                TestStatus::BuildFailed => ("BUILD FAILED", "error"),
            };
            let mut tip: Vec<String> = t
                .crashes
                .iter()
                .map(|c| {
                    let expected = if c.expected { "expected: " } else { "" };
                    let loss = match &c.data_loss {
                        Some(d) if d.expected => format!("; data loss caught: {}", d.detail),
                        Some(d) => format!("; DATA LOSS: {}", d.detail),
                        None => String::new(),
                    };
                    format!("{expected}{} [{}]{loss}", c.title, c.category)
                })
                .collect();
            if !t.message.is_empty() {
                tip.push(t.message.clone());
            }
            let label = format!("{label} {}", dur(t.duration_ms));
            let cell = match t.crashes.first() {
                Some(_) => format!("<a href=\"#{}\">{}</a>", anchor(ki, ti, 0), text(&label)),
                None => text(&label),
            };
            let _ = write!(
                o,
                "<td class=\"{class}\" title=\"{}\">{cell}</td>",
                attr(&tip.join("\n"))
            );
        }
        o.push_str("</tr>\n");
    }
    if r.kernels.iter().any(|k| k.harness_error.is_some()) {
        o.push_str("<tr><th>(harness)</th>");
        for k in &r.kernels {
            match &k.harness_error {
                Some(e) => {
                    let _ = write!(
                        o,
                        "<td class=\"aborted\" title=\"{}\">ABORTED</td>",
                        attr(e)
                    );
                }
                None => o.push_str("<td class=\"passed\">ok</td>"),
            }
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
}

fn timeline(o: &mut String, r: &RunResults) {
    o.push_str("<section>\n<h2>Recovery timeline</h2>\n");
    if r.timeline.is_empty() {
        o.push_str("<p>No recoveries.</p>\n</section>\n");
        return;
    }
    let start = r.started_at_ms.min(
        r.timeline
            .iter()
            .map(|e| e.started_at_ms)
            .min()
            .unwrap_or(0),
    );
    let end = r.timeline.iter().fold(r.finished_at_ms, |m, e| {
        m.max(e.started_at_ms + e.duration_ms as i64)
    });
    let span = (end - start).max(1) as f64;
    let mut kernels: Vec<&str> = r.kernels.iter().map(|k| k.kernel.as_str()).collect();
    for e in &r.timeline {
        if !kernels.contains(&e.kernel.as_str()) {
            kernels.push(&e.kernel);
        }
    }
    o.push_str("<div id=\"lanes\">\n");
    for k in kernels {
        let events: Vec<_> = r.timeline.iter().filter(|e| e.kernel == k).collect();
        if events.is_empty() {
            continue;
        }
        let _ = write!(
            o,
            "<div class=\"lane\"><div class=\"lane-name\" title=\"{}\">{}</div><div class=\"track\">",
            attr(k),
            text(k)
        );
        for e in events {
            let left = ((e.started_at_ms - start) as f64 / span * 100.0).clamp(0.0, 100.0);
            let width = (e.duration_ms as f64 / span * 100.0).clamp(0.0, 100.0 - left);
            let _ = write!(
                o,
                "<div class=\"ev {}\" style=\"left:{left:.2}%;width:{width:.2}%\" title=\"{}\"></div>",
                attr(&e.outcome),
                attr(&format!(
                    "+{} {} (level {}) for {} in {}: {} after {}",
                    dur((e.started_at_ms - start).max(0) as u64),
                    e.action,
                    e.level,
                    e.test,
                    k,
                    e.outcome,
                    dur(e.duration_ms)
                ))
            );
        }
        o.push_str("</div></div>\n");
    }
    o.push_str(
        "</div>\n<table id=\"timeline\">\n<thead><tr><th>At</th><th>Kernel</th><th>Test</th><th>Crash</th><th>Level</th><th>Action</th><th>Took</th><th>Outcome</th></tr></thead>\n<tbody>\n",
    );
    for e in &r.timeline {
        let _ = writeln!(
            o,
            "<tr><td class=\"num\">+{}</td><td>{}</td><td>{}</td><td class=\"num\">#{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            dur((e.started_at_ms - start).max(0) as u64),
            text(&e.kernel),
            text(&e.test),
            e.crash_id,
            e.level,
            text(&e.action),
            dur(e.duration_ms),
            text(&e.outcome)
        );
    }
    o.push_str("</tbody>\n</table>\n</section>\n");
}

fn reports(o: &mut String, r: &RunResults, extras: &HashMap<i64, CrashExtras>) {
    o.push_str("<section>\n<h2>Crash reports</h2>\n");
    let mut any = false;
    for (ki, k) in r.kernels.iter().enumerate() {
        for (ti, t) in k.tests.iter().enumerate() {
            for (ci, c) in t.crashes.iter().enumerate() {
                any = true;
                let _ = write!(
                    o,
                    "<details id=\"{}\"><summary>#{} {} / {}: {} <small>[{}, {}{}, level {}, {}, fate {}]</small></summary>\n<pre>{}</pre>",
                    anchor(ki, ti, ci),
                    c.id,
                    text(&k.kernel),
                    text(&t.name),
                    text(&c.title),
                    text(c.category.as_str()),
                    if c.expected { "expected, " } else { "" },
                    text(c.severity.as_str()),
                    c.recovery_level,
                    if c.recovered {
                        format!("recovered in {}", dur(c.recovery_ms))
                    } else {
                        "NOT recovered".to_string()
                    },
                    text(c.fate.map_or("not_recorded", |f| f.as_str())),
                    text(&c.report)
                );
                if let Some(x) = extras.get(&c.id) {
                    crash_extras(o, x);
                }
                o.push_str("</details>\n");
            }
        }
    }
    if !any {
        o.push_str("<p>No crashes.</p>\n");
    }
    o.push_str("</section>\n");
}

fn crash_extras(o: &mut String, x: &CrashExtras) {
    if let Some(s) = &x.source_lines {
        let _ = write!(o, "\n<p>Source lines:</p>\n<pre>{}</pre>", text(s));
    }
    if !x.artifacts.is_empty() {
        o.push_str("\n<p>Artifacts:</p>\n<ul>");
        for (label, href) in &x.artifacts {
            let _ = write!(o, "<li><a href=\"{}\">{}</a></li>", attr(href), text(label));
        }
        o.push_str("</ul>");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::report::tests::{NASTY, sample};

    #[test]
    fn crash_extras_add_source_lines_and_links() {
        let r = sample();
        let id = r.kernels[0]
            .tests
            .iter()
            .find_map(|t| t.crashes.first())
            .expect("a crash in the sample")
            .id;
        let x = CrashExtras {
            source_lines: Some("RIP: f+0x1/0x2 [vexfs] vexfs.c:7 <b>".into()),
            artifacts: vec![("vmcore (3 bytes)".into(), "artifacts/1/vmcore?a=\"x".into())],
        };
        let h = html_with(&r, &HashMap::from([(id, x)]));
        assert!(
            h.contains("<pre>RIP: f+0x1/0x2 [vexfs] vexfs.c:7 &lt;b&gt;</pre>"),
            "{h}"
        );
        assert!(h.contains("<a href=\"artifacts/1/vmcore?a=&quot;x\">vmcore (3 bytes)</a>"));
        assert_eq!(
            html(&r).matches("</details>").count(),
            h.matches("</details>").count()
        );
    }

    #[test]
    fn everything_is_escaped() {
        let h = html(&sample());
        assert!(!h.contains("vexfs_write<T>"), "titles escaped");
        assert!(h.contains("vexfs_write&lt;T&gt;"));
        assert!(!h.contains(NASTY));
        assert!(h.contains("&amp; friends ]]&gt; end\\x01\\x7f"));
        assert!(!h.contains('\x01'));
        assert!(
            !h.contains("http://") && !h.contains("https://"),
            "no external resources"
        );
        assert!(h.contains("<table id=\"crashes\">"));
        assert!(h.contains("class=\"aborted\" title=\"guest never booted after reset: &lt;timeout&gt; &amp; gave up\""));
    }

    #[test]
    fn matrix_has_every_kernel_and_test() {
        let h = html(&sample());
        let m = &h[h.find("<table id=\"matrix\">").unwrap()..];
        let m = &m[..m.find("</table>").unwrap()];
        assert_eq!(
            m.matches("<tr><th>").count(),
            1 + 6 + 1,
            "head + 6 tests + harness"
        );
        assert!(m.contains("<th>6.6.0-vexfs <small>(tcg)</small></th>"));
        assert_eq!(m.matches("class=\"none\"").count(), 5, "6.6 ran one test");
        assert!(m.contains("<td class=\"crashed\" title=\"BUG: kernel NULL pointer dereference in vexfs_write&lt;T&gt; [module_crash]&#10;unexpected crash\"><a href=\"#crash-0-2-0\">CRASH 4.0 s</a></td>"), "{m}");
        assert!(h.contains("<details id=\"crash-0-2-0\">"));
    }

    /// Loads the page in headless Chromium and checks the rendered DOM: the crash
    /// table with the sample's titles, and the script's end marker (any JS error
    /// before it would leave it unset). Chromium is required, never skipped.
    #[test]
    fn renders_in_headless_chromium() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("report.html");
        std::fs::write(&file, html(&sample())).unwrap();
        let profile = dir.path().join("profile");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", file.display()))
            .env("HOME", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run chromium ({e}): install Debian package chromium")
            });
        // Read both pipes on threads: chromium can fill one while we wait on the other.
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium --dump-dom did not finish in 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (dom, log) = (out.join().unwrap(), err.join().unwrap());
        assert!(status.success(), "chromium failed: {status}\n{log}");
        assert!(
            dom.contains("data-ok=\"1\""),
            "the page's script did not run to the end:\n{log}\n{dom}"
        );
        let console: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .collect();
        assert!(console.is_empty(), "console messages: {console:#?}");
        let table = &dom[dom.find("<table id=\"crashes\">").expect("crash table")..];
        let table = &table[..table.find("</table>").unwrap()];
        assert!(
            table.contains("BUG: kernel NULL pointer dereference in vexfs_write&lt;T&gt;"),
            "{table}"
        );
        assert!(
            table.contains("Kernel panic - not syncing: vexfs &amp; co"),
            "{table}"
        );
        assert_eq!(table.matches("<tr>").count(), 3, "header + 2 buckets");
        assert!(dom.contains("id=\"matrix\""));
        assert!(dom.contains("class=\"ev succeeded\""));
    }
}
