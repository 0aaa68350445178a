//! Results as KernelCI KCIDB v5.3 JSON: one checkout (the module source), a build per
//! kernel x module, a test per (kernel, test), an issue per crash bucket and an
//! incident per crash. Pure: the facts only the machine knows (git, compiler, build
//! log) come in as [`Facts`], gathered by `kcidb_facts`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::results::{CrashSummary, KernelResults, RunResults, TestResult, TestStatus};
use crate::store::Bucket;

pub use super::kcidb_types::*;

/// Checks an origin against KCIDB's `^[a-z0-9_]+$`.
pub fn check_origin(origin: &str) -> Result<(), KcidbError> {
    let ok = !origin.is_empty()
        && origin
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KcidbError::Origin(origin.to_string()))
    }
}

/// Converts a run to KCIDB.
pub fn kcidb(r: &RunResults, f: &Facts) -> Result<Kcidb, KcidbError> {
    check_origin(&f.origin)?;
    if let Some(u) = &f.artifacts_url
        && !is_url(u)
    {
        return Err(KcidbError::ArtifactsUrl(u.clone()));
    }
    let o = f.origin.as_str();
    let run = run_key(r);
    let checkout_id = format!("{o}:{run}");
    let mut out = Kcidb {
        version: VERSION,
        checkouts: vec![checkout(r, f, &checkout_id)],
        builds: Vec::new(),
        tests: Vec::new(),
        issues: Vec::new(),
        incidents: Vec::new(),
    };
    let mut issues: BTreeMap<String, Issue> = BTreeMap::new();
    for k in &r.kernels {
        let build_id = format!("{checkout_id}:{}", k.kernel);
        out.builds.push(build(k, f, &checkout_id, &build_id));
        for t in &k.tests {
            let test_id = format!("{build_id}:{}", t.name);
            out.tests.push(test(r, k, t, f, &build_id, &test_id));
            for (i, c) in t.crashes.iter().enumerate() {
                let issue = issue_for(o, c, t, &r.buckets);
                out.incidents.push(Incident {
                    id: format!("{test_id}:crash-{}", crash_key(c, i)),
                    origin: o.into(),
                    issue_id: issue.id.clone(),
                    issue_version: issue.version,
                    build_id: build_id.clone(),
                    test_id: test_id.clone(),
                    present: true,
                    comment: clean(&c.title),
                    misc: json!({
                        "crash_id": c.id,
                        "expected": c.expected,
                        "severity": c.severity,
                        "recovery_level": c.recovery_level,
                        "recovered": c.recovered,
                        "recovery_ms": c.recovery_ms,
                        "fate": c.fate,
                    }),
                });
                issues.entry(issue.id.clone()).or_insert(issue);
            }
        }
    }
    // Buckets no crash of these results points at (other shards' crashes folded in by
    // a merge still have their tests here; this is for results without crash rows).
    for b in &r.buckets {
        let issue = bucket_issue(o, b);
        issues.entry(issue.id.clone()).or_insert(issue);
    }
    out.issues = issues.into_values().collect();
    Ok(out)
}

/// The artifact files the output file URLs point at: each crash report of each test.
pub fn artifacts(r: &RunResults) -> Vec<Artifact> {
    let mut out = Vec::new();
    for k in &r.kernels {
        for t in &k.tests {
            for (i, c) in t.crashes.iter().enumerate() {
                out.push(Artifact {
                    path: artifact_path(k, t, c, i),
                    content: format!("{}\n[{}]\n\n{}", c.title, c.category.as_str(), c.report),
                });
            }
        }
    }
    out
}

/// Renders the submission as pretty JSON.
pub fn to_json(k: &Kcidb) -> String {
    let mut s = serde_json::to_string_pretty(k).expect("Kcidb serialises");
    s.push('\n');
    s
}

/// KCIDB's status for a test: crashes and failed assertions are the module's fault
/// (FAIL); the harness failing is never FAIL but ERROR (the test started) or MISS
/// (it never ran); a test skipped because its kernel aborted is MISS too.
pub fn status(k: &KernelResults, t: &TestResult) -> Status {
    match t.status {
        TestStatus::Passed => Status::Pass,
        TestStatus::Failed | TestStatus::Crashed => Status::Fail,
        TestStatus::Error if t.attempts == 0 => Status::Miss,
        TestStatus::Error => Status::Error,
        // The module did not build: the test never ran.
        TestStatus::BuildFailed => Status::Miss,
        // Isolated after crashing repeatedly: the module is at fault.
        TestStatus::Skipped if t.crashes.iter().any(|c| !c.expected) => Status::Fail,
        TestStatus::Skipped if k.harness_error.is_some() => Status::Miss,
        TestStatus::Skipped => Status::Skip,
    }
}

/// A KCIDB test path (`[a-zA-Z0-9_-]+` segments joined by dots): plan name, then test
/// name, other characters as `_`.
pub fn test_path(plan: &str, test: &str) -> String {
    format!("{}.{}", path_segment(plan), path_segment(test))
}

fn path_segment(s: &str) -> String {
    let seg: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if seg.is_empty() { "_".into() } else { seg }
}

/// Unique per run: plan and start time (a run id is 0 after a merge).
fn run_key(r: &RunResults) -> String {
    format!("{}-{}", path_segment(&r.plan), r.started_at_ms)
}

fn checkout(r: &RunResults, f: &Facts, id: &str) -> Checkout {
    let g = f.git.as_ref();
    Checkout {
        id: id.into(),
        origin: f.origin.clone(),
        tree_name: f.tree_name.as_deref().map(clean),
        git_repository_url: g.and_then(|g| g.url.clone()),
        git_commit_hash: g.map(|g| g.commit.clone()),
        git_commit_name: g.and_then(|g| g.describe.as_deref().map(clean)),
        git_repository_branch: g.and_then(|g| g.branch.as_deref().map(clean)),
        comment: Some(clean(&format!("vexfs crash harness, plan {}", r.plan))),
        start_time: rfc3339(r.started_at_ms),
        origin_builds_finish_time: rfc3339(r.started_at_ms),
        origin_tests_finish_time: rfc3339(r.finished_at_ms),
        valid: true,
        misc: json!({
            "plan": r.plan,
            "run_id": r.run_id,
            "shard": r.shard,
            "git_dirty": g.map(|g| g.dirty),
            "stats": r.stats,
        }),
    }
}

fn build(k: &KernelResults, f: &Facts, checkout_id: &str, id: &str) -> Build {
    let facts = f.builds.get(&k.kernel);
    // The module was built if any test got to run on it; otherwise unknown.
    let ran = k.tests.iter().any(|t| t.attempts > 0);
    Build {
        checkout_id: checkout_id.into(),
        id: id.into(),
        origin: f.origin.clone(),
        comment: clean(&format!("module built against linux-headers-{}", k.kernel)),
        architecture: "x86_64".into(),
        compiler: facts.and_then(|b| b.compiler.as_deref().map(clean)),
        config_name: config_name(&k.kernel),
        log_url: facts.and_then(|b| b.log_url.clone()),
        log_excerpt: facts.and_then(|b| b.log.as_deref().map(|l| excerpt_tail(&clean(l)))),
        status: ran.then_some(Status::Pass),
        misc: json!({
            "kernel_release": k.kernel,
            "kernel_package": format!("linux-image-{}", k.kernel),
            "accel": k.accel,
            "boot_ms": k.boot_ms,
            "harness_error": k.harness_error,
        }),
    }
}

/// Debian's config for the release's flavour: `6.1.0-57-cloud-amd64` → `debian-cloud-amd64`.
fn config_name(release: &str) -> String {
    let flavour = release
        .split('-')
        .skip_while(|p| !p.starts_with(|c: char| c.is_ascii_alphabetic()))
        .collect::<Vec<_>>()
        .join("-");
    if flavour.is_empty() {
        format!("debian-{}", clean(release))
    } else {
        format!("debian-{}", clean(&flavour))
    }
}

fn test(
    r: &RunResults,
    k: &KernelResults,
    t: &TestResult,
    f: &Facts,
    build_id: &str,
    id: &str,
) -> Test {
    let output_files = match &f.artifacts_url {
        Some(base) => t
            .crashes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let path = artifact_path(k, t, c, i);
                Resource {
                    name: path.rsplit('/').next().unwrap_or(&path).to_string(),
                    url: format!("{}/{}", base.trim_end_matches('/'), url_path(&path)),
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let metrics: serde_json::Map<String, Value> = t
        .metrics
        .iter()
        .map(|(n, v)| (n.clone(), json!(v)))
        .collect();
    Test {
        build_id: build_id.into(),
        id: id.into(),
        origin: f.origin.clone(),
        path: test_path(&r.plan, &t.name),
        comment: clean(&format!("{} on {}", t.name, k.kernel)),
        status: status(k, t),
        duration: t.duration_ms as f64 / 1000.0,
        log_excerpt: log_excerpt(k, t),
        output_files,
        environment: Environment {
            comment: clean(&format!("QEMU guest ({}), kernel {}", k.accel, k.kernel)),
            misc: json!({ "accel": k.accel, "kernel_release": k.kernel }),
        },
        misc: json!({
            "vexfs_status": t.status,
            "attempts": t.attempts,
            "expected_crash": t.expected_crash,
            "metrics": metrics,
        }),
    }
}

/// The message, the kernel's harness error, then each crash title and report.
fn log_excerpt(k: &KernelResults, t: &TestResult) -> Option<String> {
    let mut s = String::new();
    if !t.message.is_empty() {
        s.push_str(&t.message);
        s.push('\n');
    }
    if let Some(e) = &k.harness_error
        && !matches!(t.status, TestStatus::Passed)
    {
        s.push_str(&format!("harness: {e}\n"));
    }
    for c in &t.crashes {
        s.push_str(&format!(
            "\n{} [{}]\n{}",
            c.title,
            c.category.as_str(),
            c.report
        ));
        if !c.report.ends_with('\n') {
            s.push('\n');
        }
    }
    (!s.is_empty()).then(|| excerpt_head(&clean(&s)))
}

fn issue_for(origin: &str, c: &CrashSummary, t: &TestResult, buckets: &[Bucket]) -> Issue {
    let bucket = buckets
        .iter()
        .find(|b| b.category == c.category && b.title == c.title)
        .or_else(|| {
            buckets
                .iter()
                .find(|b| b.category == c.category && b.tests.contains(&t.name))
        });
    match bucket {
        Some(b) => bucket_issue(origin, b),
        None => Issue {
            id: format!("{origin}:{}:{}", c.category.as_str(), c.title),
            version: 1,
            origin: origin.into(),
            categories: vec![category(c.category.as_str())],
            report_subject: clean(&c.title),
            culprit: CODE,
            comment: clean(&format!("{} (not in the crash database)", c.title)),
            misc: json!({ "category": c.category }),
        },
    }
}

const CODE: Culprit = Culprit {
    code: true,
    tool: false,
    harness: false,
};

fn bucket_issue(origin: &str, b: &Bucket) -> Issue {
    Issue {
        id: format!("{origin}:{}", clean(&b.signature)),
        version: 1,
        origin: origin.into(),
        categories: vec![category(b.category.as_str())],
        report_subject: clean(&b.title),
        culprit: CODE,
        comment: clean(&format!("{} ({} crashes)", b.title, b.count)),
        misc: json!({
            "signature": b.signature,
            "count": b.count,
            "first_seen": rfc3339(b.first_seen_ms),
            "last_seen": rfc3339(b.last_seen_ms),
            "kernels": b.kernels,
            "tests": b.tests,
        }),
    }
}

fn category(c: &str) -> String {
    format!("runtime.{}", path_segment(c))
}

fn crash_key(c: &CrashSummary, i: usize) -> String {
    // Id 0: the crash never made it into the database; its place keeps it unique.
    if c.id > 0 {
        c.id.to_string()
    } else {
        format!("unrecorded-{i}")
    }
}

fn artifact_path(k: &KernelResults, t: &TestResult, c: &CrashSummary, i: usize) -> String {
    format!(
        "{}/{}/crash-{}.txt",
        path_segment(&k.kernel),
        path_segment(&t.name),
        crash_key(c, i)
    )
}

/// Percent-encodes what URLs do not carry as is (segments are already path-safe,
/// except `+` which some servers read as a space).
fn url_path(p: &str) -> String {
    p.replace('+', "%2B")
}

fn is_url(u: &str) -> bool {
    u.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            && !rest.is_empty()
            && !rest.contains(char::is_whitespace)
    })
}

/// RFC 3339 UTC of milliseconds since the epoch (none when out of range).
fn rfc3339(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_string())
}

/// KCIDB strings may not hold NUL.
fn clean(s: &str) -> String {
    s.replace('\0', "\\x00")
}

const CUT: &str = "\n[... cut ...]\n";

/// The first [`LOG_EXCERPT_MAX`] characters (a crash report's head says the most).
fn excerpt_head(s: &str) -> String {
    match s.char_indices().nth(LOG_EXCERPT_MAX - CUT.len()) {
        Some((at, _)) => format!("{}{CUT}", &s[..at]),
        None => s.to_string(),
    }
}

/// The last [`LOG_EXCERPT_MAX`] characters (a build log's errors are at its end).
fn excerpt_tail(s: &str) -> String {
    let n = s.chars().count();
    if n <= LOG_EXCERPT_MAX {
        return s.to_string();
    }
    let skip = n - (LOG_EXCERPT_MAX - CUT.len());
    let at = s.char_indices().nth(skip).map_or(0, |(i, _)| i);
    format!("{CUT}{}", &s[at..])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recovery::Fate;
    use crate::report::tests::sample;
    use crate::results::CrashSummary;
    use crate::scorecard::Stats;
    use std::path::PathBuf;

    /// The virtualenv scripts/setup.sh makes (kcidb-io, actionlint): `$VEXFS_VENV`,
    /// else `<cache>/venv`. Panics with the fix when it is missing: these tests check
    /// the output against the real schema and must not pass without it.
    pub(crate) fn venv() -> PathBuf {
        let dir = std::env::var_os("VEXFS_VENV")
            .map(PathBuf::from)
            .or_else(|| crate::report::kcidb_facts::cache_dir().map(|c| c.join("venv")))
            .expect("no VEXFS_VENV, VEXFS_CACHE or HOME to find the virtualenv");
        assert!(
            dir.join("bin/python").exists(),
            "no virtualenv at {}: run scripts/setup.sh (it installs kcidb-io and \
             actionlint there), or point VEXFS_VENV at one",
            dir.display()
        );
        dir
    }

    /// Validates KCIDB JSON with kcidb-io's newest schema; Err holds its message.
    pub(crate) fn validate(doc: &str) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kcidb.json");
        std::fs::write(&file, doc).unwrap();
        let out = std::process::Command::new(venv().join("bin/python"))
            .args([
                "-c",
                "import json, sys, kcidb_io\n\
                 s = kcidb_io.schema.LATEST\n\
                 s.validate(json.load(open(sys.argv[1])))\n\
                 print(f'v{s.major}.{s.minor}')",
            ])
            .arg(&file)
            .output()
            .expect("running the virtualenv's python");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }

    fn facts() -> Facts {
        let mut builds = BTreeMap::new();
        builds.insert(
            "6.12.57+deb12-amd64".to_string(),
            BuildFacts {
                compiler: Some("gcc (Debian 12.2.0-14+deb12u1) 12.2.0".into()),
                log: Some("  CC [M]  vexfs.o\n  LD [M]  vexfs.ko\n".into()),
                log_url: Some("https://ci.example.org/logs/build-6.12.log".into()),
            },
        );
        Facts {
            origin: "vexfs_ci".into(),
            tree_name: Some("vexfs".into()),
            git: Some(GitSource {
                url: Some("https://git.example.org/vexfs/harness.git".into()),
                commit: "0cdfe2d5d1e7f6a8b9c0d1e2f3a4b5c6d7e8f901".into(),
                describe: Some("0cdfe2d-dirty".into()),
                branch: Some("main".into()),
                dirty: true,
            }),
            builds,
            artifacts_url: Some("https://ci.example.org/artifacts/1".into()),
        }
    }

    fn category_of(name: &str) -> crate::classify::Category {
        serde_json::from_value(json!(name)).unwrap()
    }

    fn crash(id: i64, cat: &str, title: &str, expected: bool) -> CrashSummary {
        CrashSummary {
            id,
            category: category_of(cat),
            severity: category_of(cat).severity(),
            intact: true,
            title: title.into(),
            expected,
            recovery_level: 2,
            fate: Some(Fate::RestartRequired),
            recovery_ms: 3_400,
            recovered: true,
            report: format!("[   12.345678] {title}\n[   12.345700] CPU: 0 PID: 91 Comm: sh\0x\n"),
            data_loss: None,
        }
    }

    /// Results shaped like the demo's (plans/default.toml on 6.12 and 6.1): passing
    /// scenario tests with metrics, expected crashes of every kind, an unexpected
    /// crash, an isolated test, a harness error mid-run and the tests it left unrun.
    pub(crate) fn demo() -> RunResults {
        let t0 = 1_764_620_000_000;
        let t = |name: &str, status, ms, msg: &str, attempts| TestResult {
            name: name.into(),
            status,
            duration_ms: ms,
            message: msg.into(),
            expected_crash: None,
            crashes: vec![],
            attempts,
            steps: vec![],
            metrics: vec![],
            notes: Vec::new(),
        };
        let mut cycles = t("cycles-1000-sequential", TestStatus::Passed, 41_000, "", 1);
        cycles.metrics = vec![("mount_ms_p95".into(), 3.2), ("error_rate".into(), 0.0)];
        let expected = |name: &str, cat: &str, title: &str| {
            let mut r = t(name, TestStatus::Passed, 6_500, "", 1);
            r.expected_crash = Some(title.into());
            r.crashes = vec![crash(0, cat, title, true)];
            r
        };
        let mut null = expected(
            "crash-null-deref",
            "module_crash",
            "BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null",
        );
        null.crashes[0].id = 11;
        let mut panic = expected(
            "crash-panic",
            "kernel_panic",
            "kernel panic: vexfs: injected panic from vexfs_fault_panic",
        );
        panic.crashes[0].id = 12;
        let mut hang = expected(
            "crash-deadlock",
            "deadlock",
            "INFO: task hung in vexfs_fault_deadlock",
        );
        hang.crashes[0].id = 13;
        let mut corrupt = t(
            "corrupt-while-mounted",
            TestStatus::Crashed,
            9_000,
            "general protection fault in vexfs_readdir",
            1,
        );
        corrupt.crashes = vec![crash(
            14,
            "memory_corruption",
            "general protection fault in vexfs_readdir",
            false,
        )];
        let mut isolated = t(
            "corrupt-metadata-before-mount",
            TestStatus::Skipped,
            2_000,
            "isolated after 2 crashes: WARNING in vexfs_fill_super",
            2,
        );
        isolated.crashes = vec![crash(
            15,
            "module_crash",
            "WARNING in vexfs_fill_super",
            false,
        )];
        let k612 = KernelResults {
            kernel: "6.12.57+deb12-amd64".into(),
            accel: "tcg".into(),
            boot_ms: 3_500,
            duration_ms: 120_000,
            time_boot_ms: 14_000,
            time_tests_ms: 96_000,
            time_recovery_ms: 10_000,
            tests: vec![
                t("mount-missing-mountpoint", TestStatus::Passed, 800, "", 1),
                t(
                    "mount-unprivileged-user",
                    TestStatus::Failed,
                    700,
                    "exec `mount -t vexfs`: exit 0, expected 1",
                    1,
                ),
                cycles,
                corrupt,
                isolated,
                null,
                panic,
                hang,
            ],
            harness_error: None,
        };
        let mut lost = t(
            "crash-bug",
            TestStatus::Error,
            30_000,
            "recovery failed after kernel BUG in vexfs_fault_bug",
            1,
        );
        lost.crashes = vec![crash(
            16,
            "module_crash",
            "kernel BUG in vexfs_fault_bug",
            true,
        )];
        lost.crashes[0].recovered = false;
        let k61 = KernelResults {
            kernel: "6.1.0-41-amd64".into(),
            accel: "tcg".into(),
            boot_ms: 6_300,
            duration_ms: 60_000,
            time_boot_ms: 30_000,
            time_tests_ms: 30_000,
            time_recovery_ms: 0,
            tests: vec![
                t("mount-missing-mountpoint", TestStatus::Passed, 900, "", 1),
                lost,
                t(
                    "crash-warning",
                    TestStatus::Error,
                    0,
                    "recovery failed after kernel BUG in vexfs_fault_bug in crash-bug",
                    0,
                ),
                t("crash-panic", TestStatus::Skipped, 0, "kernel aborted", 0),
            ],
            harness_error: Some("recovery failed after kernel BUG in vexfs_fault_bug".into()),
        };
        let bucket = |id, sig: &str, title: &str, cat: &str, k: &str, test: &str| Bucket {
            id,
            signature: sig.into(),
            title: title.into(),
            category: category_of(cat),
            first_seen_ms: t0 + id * 1_000,
            last_seen_ms: t0 + id * 2_000,
            count: 1,
            kernels: vec![k.into()],
            tests: vec![test.into()],
        };
        let k1 = "6.12.57+deb12-amd64";
        RunResults {
            run_id: 3,
            plan: "vexfs-crash-scenarios".into(),
            shard: None,
            started_at_ms: t0,
            finished_at_ms: t0 + 180_000,
            kernels: vec![k612, k61],
            stats: Stats {
                crashes: 6,
                buckets: 5,
                recoveries: 6,
                recovered: 5,
                recovery_success_rate: 5.0 / 6.0,
                mean_recovery_ms: 3_400.0,
                p95_recovery_ms: 3_400.0,
                data_integrity: 1.0,
                test_continuity: 0.83,
            },
            buckets: vec![
                bucket(
                    1,
                    "module_crash:BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null",
                    "BUG: unable to handle kernel NULL pointer dereference in vexfs_fault_null",
                    "module_crash",
                    k1,
                    "crash-null-deref",
                ),
                bucket(
                    2,
                    "kernel_panic:kernel panic: vexfs: injected panic from vexfs_fault_panic",
                    "kernel panic: vexfs: injected panic from vexfs_fault_panic",
                    "kernel_panic",
                    k1,
                    "crash-panic",
                ),
                bucket(
                    3,
                    "deadlock:INFO: task hung in vexfs_fault_deadlock",
                    "INFO: task hung in vexfs_fault_deadlock",
                    "deadlock",
                    k1,
                    "crash-deadlock",
                ),
                bucket(
                    4,
                    "memory_corruption:general protection fault in vexfs_readdir",
                    "general protection fault in vexfs_readdir",
                    "memory_corruption",
                    k1,
                    "corrupt-while-mounted",
                ),
                bucket(
                    5,
                    "module_crash:kernel BUG in vexfs_fault_bug",
                    "kernel BUG in vexfs_fault_bug",
                    "module_crash",
                    "6.1.0-41-amd64",
                    "crash-bug",
                ),
            ],
            timeline: vec![],
        }
    }

    fn statuses(k: &Kcidb) -> Vec<(String, Status)> {
        k.tests
            .iter()
            .map(|t| (t.id.rsplit(':').next().unwrap().to_string(), t.status))
            .collect()
    }

    #[test]
    fn demo_results_validate_against_kcidb_io() {
        let r = demo();
        let mut f = facts();
        f.artifacts_url = Some("https://ci.example.org/artifacts/run-1/".into());
        let k = kcidb(&r, &f).unwrap();
        let doc = to_json(&k);
        assert_eq!(validate(&doc), Ok("v5.3".to_string()), "{doc}");
        assert_eq!(k.checkouts.len(), 1);
        assert_eq!(k.builds.len(), 2, "a build per kernel x module");
        assert_eq!(k.tests.len(), 12, "a test per (kernel, test)");
        assert_eq!(
            k.issues.len(),
            6,
            "the 5 buckets and the unbucketed WARNING"
        );
        assert_eq!(k.incidents.len(), 6, "an incident per crash");
        let c = &k.checkouts[0];
        assert_eq!(
            c.git_commit_hash.as_deref(),
            Some("0cdfe2d5d1e7f6a8b9c0d1e2f3a4b5c6d7e8f901")
        );
        assert_eq!(c.start_time.as_deref(), Some("2025-12-01T20:13:20Z"));
        let b = &k.builds[0];
        assert_eq!(b.config_name, "debian-amd64");
        assert_eq!(b.status, Some(Status::Pass));
        assert!(b.compiler.as_deref().unwrap().contains("12.2.0"));
        assert!(k.builds[1].compiler.is_none(), "unknown stays unknown");
        let crash = k
            .tests
            .iter()
            .find(|t| t.path == "vexfs-crash-scenarios.crash-null-deref")
            .unwrap();
        assert_eq!(crash.status, Status::Pass, "the expected crash happened");
        assert_eq!(crash.duration, 6.5);
        assert_eq!(
            crash.output_files,
            [Resource {
                name: "crash-11.txt".into(),
                url: "https://ci.example.org/artifacts/run-1/6_12_57_deb12-amd64/\
                      crash-null-deref/crash-11.txt"
                    .into()
            }]
        );
        let excerpt = crash.log_excerpt.as_deref().unwrap();
        assert!(
            excerpt.contains("vexfs_fault_null [module_crash]"),
            "{excerpt}"
        );
        assert!(!excerpt.contains('\0'));
        let inc = k.incidents.iter().find(|i| i.test_id == crash.id).unwrap();
        assert_eq!(
            inc.issue_id,
            "vexfs_ci:module_crash:BUG: unable to handle kernel NULL pointer dereference \
             in vexfs_fault_null"
        );
        assert!(k.issues.iter().any(|i| i.id == inc.issue_id));
    }

    #[test]
    fn harness_failures_are_error_or_miss_never_fail() {
        let k = kcidb(&demo(), &facts()).unwrap();
        let s = statuses(&k);
        let want = [
            ("mount-missing-mountpoint", Status::Pass),
            ("mount-unprivileged-user", Status::Fail),
            ("cycles-1000-sequential", Status::Pass),
            ("corrupt-while-mounted", Status::Fail),
            ("corrupt-metadata-before-mount", Status::Fail),
            ("crash-null-deref", Status::Pass),
            ("crash-panic", Status::Pass),
            ("crash-deadlock", Status::Pass),
            ("mount-missing-mountpoint", Status::Pass),
            ("crash-bug", Status::Error),
            ("crash-warning", Status::Miss),
            ("crash-panic", Status::Miss),
        ];
        let want: Vec<(String, Status)> = want.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        assert_eq!(s, want);
        // A plain skip (not applicable) stays SKIP.
        let mut r = demo();
        r.kernels[1].harness_error = None;
        let k = kcidb(&r, &facts()).unwrap();
        assert_eq!(k.tests.last().unwrap().status, Status::Skip);
    }

    #[test]
    fn sample_with_markup_and_no_git_validates() {
        let f = Facts {
            origin: "vexfs".into(),
            ..Facts::default()
        };
        let k = kcidb(&sample(), &f).unwrap();
        assert!(k.checkouts[0].git_commit_hash.is_none());
        assert!(k.tests.iter().all(|t| t.output_files.is_empty()));
        assert_eq!(validate(&to_json(&k)), Ok("v5.3".to_string()));
    }

    #[test]
    fn validator_rejects_what_breaks_the_schema() {
        // The check must be able to fail: a bad path and a NULL are refused.
        let mut k = kcidb(&demo(), &facts()).unwrap();
        k.tests[0].path = "vexfs.bad path".into();
        let e = validate(&to_json(&k)).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn bad_origin_and_artifacts_url_are_refused() {
        let mut f = facts();
        f.origin = "Vex-CI".into();
        assert_eq!(
            kcidb(&demo(), &f).unwrap_err(),
            KcidbError::Origin("Vex-CI".into())
        );
        let mut f = facts();
        f.artifacts_url = Some("ci/artifacts".into());
        assert!(matches!(
            kcidb(&demo(), &f),
            Err(KcidbError::ArtifactsUrl(_))
        ));
    }

    #[test]
    fn paths_config_names_and_excerpts() {
        assert_eq!(test_path("smoke", "a b/c.d"), "smoke.a_b_c_d");
        assert_eq!(test_path("", ""), "_._");
        assert_eq!(config_name("6.1.0-57-cloud-amd64"), "debian-cloud-amd64");
        assert_eq!(config_name("6.12.57+deb12-amd64"), "debian-amd64");
        assert_eq!(config_name("6.6.0"), "debian-6.6.0");
        let long = "é".repeat(LOG_EXCERPT_MAX * 2);
        let head = excerpt_head(&long);
        assert_eq!(head.chars().count(), LOG_EXCERPT_MAX);
        assert!(head.ends_with(CUT));
        let tail = excerpt_tail(&long);
        assert_eq!(tail.chars().count(), LOG_EXCERPT_MAX);
        assert!(tail.starts_with(CUT));
        assert_eq!(excerpt_tail("short"), "short");
    }

    #[test]
    fn artifacts_hold_each_crash_report() {
        let a = artifacts(&demo());
        assert_eq!(a.len(), 6);
        assert_eq!(
            a[0].path,
            "6_12_57_deb12-amd64/corrupt-while-mounted/crash-14.txt"
        );
        assert!(
            a[0].content
                .starts_with("general protection fault in vexfs_readdir\n")
        );
    }
}
