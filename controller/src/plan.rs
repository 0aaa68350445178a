//! Test plans: a TOML file naming kernels, the module under test, guest settings and
//! tests; each test a sequence of steps run in the guest through the agent.
//!
//! ```toml
//! name = "smoke"
//! kernels = ["latest-6.12"]
//! [guest]
//! memory_mib = 512
//! [[test]]
//! name = "mount-and-write"
//! timeout_s = 60
//! steps = [
//!   "load",
//!   { mount = { target = "/mnt/a" } },
//!   { exec = { cmd = "echo hi > /mnt/a/f && cat /mnt/a/f", stdout = "hi" } },
//!   { unmount = "/mnt/a" },
//! ]
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors of plan loading and checking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read plan {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong shape; the message names line and column.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The plan parses but makes no sense.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A test plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Plan name (reports, JUnit suite names).
    pub name: String,
    /// Kernels: releases (`6.12.117+deb12-amd64`), prefixes (`6.1`) or `latest-6.12`.
    #[serde(default = "default_kernels")]
    pub kernels: Vec<String>,
    /// The module under test.
    #[serde(default)]
    pub module: ModuleConfig,
    /// Guest settings.
    #[serde(default)]
    pub guest: GuestConfig,
    /// A test that crashes this many times in a run is isolated (skipped).
    #[serde(default = "default_isolate_after")]
    pub isolate_after: u32,
    /// The tests, in order.
    #[serde(default, rename = "test")]
    pub tests: Vec<Test>,
}

fn default_kernels() -> Vec<String> {
    vec!["latest-6.12".into()]
}

fn default_isolate_after() -> u32 {
    2
}

/// The module under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// Module name as in /proc/modules.
    #[serde(default = "default_module_name")]
    pub name: String,
    /// Path inside the guest image (the image build puts the module there).
    #[serde(default = "default_module_path")]
    pub path: String,
    /// Load parameters.
    #[serde(default)]
    pub params: String,
    /// Filesystem type it registers (smoke tests mount it); empty for none.
    #[serde(default = "default_fstype")]
    pub fstype: String,
}

fn default_module_name() -> String {
    "vexfs".into()
}
fn default_module_path() -> String {
    "/lib/modules/vexfs/vexfs.ko".into()
}
fn default_fstype() -> String {
    "vexfs".into()
}

impl Default for ModuleConfig {
    fn default() -> Self {
        Self {
            name: default_module_name(),
            path: default_module_path(),
            params: String::new(),
            fstype: default_fstype(),
        }
    }
}

/// Guest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// RAM, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Extra kernel command line words.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Agent silence (s) after which the guest is judged hung.
    #[serde(default = "default_silence")]
    pub silence_s: u64,
    /// When tests get a brand-new VM (restored from the booted snapshot).
    #[serde(default)]
    pub fresh_vm: FreshVm,
}

/// When tests get a brand-new VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreshVm {
    /// Only when recovery restarts the guest (`"on_crash"`, the default).
    #[default]
    OnCrash,
    /// Before every test (`"per_test"`): no state carried between tests.
    PerTest,
}

fn default_memory() -> u32 {
    512
}
fn default_cpus() -> u32 {
    1
}
fn default_silence() -> u64 {
    10
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            memory_mib: default_memory(),
            cpus: default_cpus(),
            cmdline: Vec::new(),
            silence_s: default_silence(),
            fresh_vm: FreshVm::default(),
        }
    }
}

/// One test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Test {
    /// Unique name.
    pub name: String,
    /// Wall-clock limit of the whole test, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// The crash this test must produce: a category (`module_crash`) or a title
    /// fragment (`NULL pointer dereference in vexfs_fault_null`).
    #[serde(default)]
    pub expect_crash: Option<String>,
    /// Kernels this test runs on (default: all of the plan's); `6.12` matches prefixes.
    #[serde(default)]
    pub only_kernels: Vec<String>,
    /// The steps.
    pub steps: Vec<Step>,
}

fn default_timeout() -> u64 {
    120
}

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
    /// Fire a fault through the module's debugfs trigger (the test then waits for the
    /// crash it expects).
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

fn exit_zero() -> Exit {
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
}

fn yes() -> bool {
    true
}

fn default_source() -> String {
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

fn one() -> u32 {
    1
}
fn default_slowdown() -> f64 {
    3.0
}
fn default_samples() -> u32 {
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

fn default_max_kb() -> u64 {
    512
}

/// 1-based line and column (in characters, as editors count) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // The offset comes from the TOML parser: never slice inside a character.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses and checks a plan's text; `path` is for messages.
pub fn parse(text: &str, path: &str) -> Result<Plan, Error> {
    let plan: Plan = toml::from_str(text).map_err(|e| {
        // An error without a place is about the whole document: its start.
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        Error::Parse {
            path: path.into(),
            line,
            column,
            message: e.message().to_string(),
        }
    })?;
    check(&plan).map_err(|message| Error::Invalid {
        path: path.into(),
        message,
    })?;
    Ok(plan)
}

/// Reads, parses and checks a plan file.
pub fn load(path: &Path) -> Result<Plan, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// The default plan shipped with vexctl: the crash scenario suite.
pub const DEFAULT_PLAN: &str = include_str!("../../plans/default.toml");

fn check(plan: &Plan) -> Result<(), String> {
    if plan.kernels.is_empty() {
        return Err("kernels: at least one kernel is needed".into());
    }
    if plan.tests.is_empty() {
        return Err("no [[test]] in the plan".into());
    }
    let mut names = std::collections::HashSet::new();
    for t in &plan.tests {
        if t.name.is_empty() || t.name.contains(['/', '\n']) {
            return Err(format!(
                "test name {:?} is empty or holds '/' or a newline",
                t.name
            ));
        }
        if !names.insert(&t.name) {
            return Err(format!("test {:?} appears twice", t.name));
        }
        if t.timeout_s == 0 {
            return Err(format!("test {:?}: timeout_s must be above zero", t.name));
        }
        if t.steps.is_empty() {
            return Err(format!("test {:?} has no steps", t.name));
        }
        let triggers = t
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Trigger(_)))
            .count();
        if triggers > 0 && t.expect_crash.is_none() {
            return Err(format!(
                "test {:?} triggers a fault but has no expect_crash",
                t.name
            ));
        }
        let mut labels = std::collections::HashSet::new();
        for s in &t.steps {
            match s {
                Step::Sample(l) => {
                    labels.insert(l.as_str());
                }
                Step::NoLeakSince(c) if !labels.contains(c.since.as_str()) => {
                    return Err(format!(
                        "test {:?}: no_leak_since {:?} comes before any sample with that label",
                        t.name, c.since
                    ));
                }
                Step::Cycles(c) if c.count == 0 || c.threads == 0 => {
                    return Err(format!(
                        "test {:?}: cycles need count and threads above zero",
                        t.name
                    ));
                }
                Step::Sleep(s) if !(0.0..=3600.0).contains(s) => {
                    return Err(format!("test {:?}: sleep {s} is out of range", t.name));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text gives a plan or an error with a position inside the text, never a
        /// panic.
        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
            if let Err(Error::Parse { line, .. }) = parse(&text, "p") {
                prop_assert!(line <= text.lines().count() + 1);
            }
        }

        #[test]
        fn mangled_default_plan_never_panics(cut in 0usize..4000, junk in "[\\[\\]{}=\",a-z0-9 \n]{0,8}") {
            let mut text = DEFAULT_PLAN.to_string();
            let at = text.char_indices().map(|(i, _)| i).nth(cut % DEFAULT_PLAN.len()).unwrap_or(0);
            text.insert_str(at, &junk);
            let _ = parse(&text, "p");
        }
    }

    #[test]
    fn default_plan_is_valid() {
        let p = parse(DEFAULT_PLAN, "default.toml").unwrap();
        assert!(p.tests.len() >= 10);
        assert!(p.tests.iter().any(|t| t.expect_crash.is_some()));
    }

    #[test]
    fn fresh_vm_parses_and_defaults_to_on_crash() {
        let test = "[[test]]\nname = \"a\"\nsteps = [\"load\"]\n";
        let p = parse(&format!("name = \"x\"\n{test}"), "p.toml").unwrap();
        assert_eq!(p.guest.fresh_vm, FreshVm::OnCrash);
        let text = format!("name = \"x\"\n[guest]\nfresh_vm = \"per_test\"\n{test}");
        assert_eq!(
            parse(&text, "p.toml").unwrap().guest.fresh_vm,
            FreshVm::PerTest
        );
        let text = format!("name = \"x\"\n[guest]\nfresh_vm = \"always\"\n{test}");
        let e = parse(&text, "p.toml").unwrap_err();
        assert!(matches!(e, Error::Parse { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("per_test"), "{e}");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let text = "name = \"x\"\n[[test]]\nname = \"a\"\nsteps = [\"load\", { bogus = 1 }]\n";
        let e = parse(text, "p.toml").unwrap_err();
        let Error::Parse { line, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*line, 4, "{e}");
        assert!(e.to_string().starts_with("p.toml:4:"), "{e}");
        let e = parse("name = \"x\"\ntimeout = [\n", "p.toml").unwrap_err();
        assert!(matches!(e, Error::Parse { line: 2..=3, .. }), "{e}");
        let e = parse(
            "name = \"x\"\n[[test]]\nname = \"a\"\nsteps = []\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("no steps"), "{e}");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("ab\ncdé f", 9), (2, 6));
        // Inside a character: the character's start.
        assert_eq!(line_col("é", 1), (1, 1));
        assert_eq!(line_col("x", 99), (1, 2));
        let e = parse("name = \"ééé\" x\n", "p.toml").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Parse {
                    line: 1,
                    column: 14,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn semantic_checks() {
        let base =
            |steps: &str| format!("name = \"x\"\n[[test]]\nname = \"a\"\nsteps = [{steps}]\n");
        assert!(
            parse(&base("{ trigger = \"null\" }"), "p")
                .unwrap_err()
                .to_string()
                .contains("expect_crash")
        );
        assert!(parse(&base("{ no_leak_since = { since = \"b\" } }"), "p").is_err());
        assert!(
            parse(
                &base("{ sample = \"b\" }, { no_leak_since = { since = \"b\" } }"),
                "p"
            )
            .is_ok()
        );
        let dup = "name = \"x\"\n[[test]]\nname = \"a\"\nsteps = [\"load\"]\n[[test]]\nname = \"a\"\nsteps = [\"load\"]\n";
        assert!(parse(dup, "p").unwrap_err().to_string().contains("twice"));
        assert!(Exit::Word("nonzero".into()).accepts(1));
        assert!(!Exit::Word("nonzero".into()).accepts(0));
        assert!(Exit::Code(3).accepts(3));
    }
}
