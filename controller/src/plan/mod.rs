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

mod forensics;
mod guest;
mod requires;
mod steps;

pub use forensics::*;
pub use guest::*;
pub use requires::*;
pub use steps::*;

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
    /// Vmcores: which crashes get one, how many are kept (`[forensics]`).
    #[serde(default)]
    pub forensics: ForensicsConfig,
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
    /// What the recovery smoke test mounts: `none` for an in-memory filesystem, else a
    /// device path in the guest.
    #[serde(default = "default_source")]
    pub smoke_source: String,
    /// The file `trigger` steps write a fault name to (default
    /// `/sys/kernel/debug/NAME/trigger`).
    #[serde(default)]
    pub trigger: Option<String>,
    /// Unreclaimable slab (kB) that may stay above a test's baseline after the module
    /// is unloaded before recovery's leak check fails.
    #[serde(default = "default_leak_bound")]
    pub leak_bound_kb: u64,
    /// A Kbuild/Makefile source tree (relative to the plan file) built against each
    /// kernel's headers; the module name is then read from the built .ko unless `name`
    /// is set to something other than the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Extra `make` arguments for the source build (`CONFIG_MINIX_FS=m`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub make_args: Vec<String>,
    /// Steps run after every VM restart of a test, before it goes on (fsck, mount,
    /// read back what was synced), unless the test has its own `after_restart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_restart: Vec<Step>,
}

fn default_leak_bound() -> u64 {
    1024
}

impl ModuleConfig {
    /// The file `trigger` steps write to.
    pub fn trigger_path(&self) -> String {
        self.trigger
            .clone()
            .unwrap_or_else(|| format!("/sys/kernel/debug/{}/trigger", self.name))
    }
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
            smoke_source: default_source(),
            trigger: None,
            leak_bound_kb: default_leak_bound(),
            source: None,
            make_args: Vec::new(),
            after_restart: Vec::new(),
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
    /// After an unexpected crash that a graceful recovery (level 1) got over, the
    /// crashed step is run again this many times, with backoff.
    #[serde(default = "one")]
    pub retries: u32,
    /// After a VM restart (level 2): go on from the step after the crash, or run the
    /// test again from its first step.
    #[serde(default)]
    pub on_restart: OnRestart,
    /// The steps.
    pub steps: Vec<Step>,
    /// Steps after each VM restart of this test (default: `[module] after_restart`;
    /// `[]` runs none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_restart: Option<Vec<Step>>,
    /// The test damages the disk on purpose (a torn write before a crash): it passes
    /// when its `after_restart` checks catch the damage, and fails when they do not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expect_data_loss: bool,
    /// Kernel config options the test needs (`["CONFIG_KASAN"]`); on a kernel without
    /// one the test is skipped with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<ConfigOption>,
}

impl Plan {
    /// The steps to run after a VM restart during `test`: its own, else the module's.
    pub fn after_restart<'a>(&'a self, test: &'a Test) -> &'a [Step] {
        test.after_restart
            .as_deref()
            .unwrap_or(&self.module.after_restart)
    }
}

/// Where a test goes on after its VM was restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRestart {
    /// From the step after the one that crashed.
    #[default]
    Continue,
    /// From the first step.
    Rerun,
}

fn default_timeout() -> u64 {
    120
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
pub const DEFAULT_PLAN: &str = include_str!("../../../plans/default.toml");

fn check(plan: &Plan) -> Result<(), String> {
    if plan.kernels.is_empty() {
        return Err("kernels: at least one kernel is needed".into());
    }
    if plan.tests.is_empty() {
        return Err("no [[test]] in the plan".into());
    }
    check_guest(plan)?;
    plan.forensics.check()?;
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
                Step::Mount(MountStep {
                    device: Some(d), ..
                }) if !d.starts_with('/') && !plan.guest.disks.iter().any(|k| &k.name == d) => {
                    return Err(format!(
                        "test {:?}: mount device {d:?} is not a [[guest.disks]] name",
                        t.name
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The `[module]` and `[guest]` additions: unique disk names and tool paths, module
/// names `modprobe` could know.
fn check_guest(plan: &Plan) -> Result<(), String> {
    let mut disks = std::collections::HashSet::new();
    for d in &plan.guest.disks {
        if !disks.insert(&d.name) {
            return Err(format!("disk {:?} appears twice", d.name));
        }
    }
    let mut paths = std::collections::HashSet::new();
    for t in &plan.guest.tools {
        if !paths.insert(&t.path) {
            return Err(format!("two guest tools install to {:?}", t.path));
        }
    }
    for m in &plan.guest.kernel_modules {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if m.is_empty() || !m.chars().all(ok) {
            return Err(format!(
                "kernel_modules: {m:?} is not a module name (like \"loop\")"
            ));
        }
    }
    let checks = std::iter::once(("[module]".to_string(), &plan.module.after_restart)).chain(
        plan.tests.iter().filter_map(|t| {
            t.after_restart
                .as_ref()
                .map(|a| (format!("test {:?}", t.name), a))
        }),
    );
    for (place, steps) in checks {
        if let Some(bad) = steps
            .iter()
            .find(|s| matches!(s, Step::Trigger(_) | Step::NoLeakSince(_) | Step::Cycles(_)))
        {
            return Err(format!(
                "{place}: after_restart checks the disk after a crash; {bad:?} cannot be one of its steps"
            ));
        }
    }
    if let Some(t) = plan
        .tests
        .iter()
        .find(|t| t.expect_data_loss && plan.after_restart(t).is_empty())
    {
        return Err(format!(
            "test {:?}: expect_data_loss needs after_restart checks to catch it",
            t.name
        ));
    }
    if plan.module.source.as_deref() == Some("") {
        return Err("[module] source is empty".into());
    }
    if !plan.module.make_args.is_empty() && plan.module.source.is_none() {
        return Err("[module] make_args need a source".into());
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

    const BYO: &str = r#"name = "minix"
kernels = ["latest-6.1"]
[module]
source = "linux/fs/minix"
make_args = ["CONFIG_MINIX_FS=m"]
fstype = "minix"
[guest]
kernel_modules = ["loop"]
[[guest.tools]]
binary = "/sbin/mkfs.minix"
[[guest.tools]]
source = "tools/mkfs.x.c"
cflags = ["-O2"]
[[guest.disks]]
name = "data"
size_mib = 64
[[test]]
name = "mount"
steps = ["load", { mount = { target = "/mnt/m", device = "data" } }]
"#;

    #[test]
    fn bring_your_own_module_fields() {
        let p = parse(BYO, "m.toml").unwrap();
        assert_eq!(p.module.source.as_deref(), Some("linux/fs/minix"));
        assert_eq!(p.module.make_args, ["CONFIG_MINIX_FS=m"]);
        assert_eq!(p.guest.kernel_modules, ["loop"]);
        assert_eq!(
            p.guest.tools[0],
            ToolSpec {
                origin: ToolOrigin::Binary("/sbin/mkfs.minix".into()),
                path: "/sbin/mkfs.minix".into(),
                cflags: vec![],
            }
        );
        assert_eq!(p.guest.tools[1].path, "/sbin/mkfs.x");
        assert_eq!(p.guest.tools[1].cflags, ["-O2"]);
        assert_eq!(
            p.guest.disks,
            [DiskSpec {
                name: "data".into(),
                size_mib: 64,
                image: None
            }]
        );
        let Step::Mount(m) = &p.tests[0].steps[1] else {
            panic!()
        };
        assert_eq!(m.source_arg(), "/dev/disk/by-name/data");
        // The shipped default still parses to the in-memory module.
        assert!(parse(DEFAULT_PLAN, "d").unwrap().module.source.is_none());
        // A written plan reads back the same.
        let back = parse(&toml::to_string(&p).unwrap(), "m2").unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bring_your_own_module_errors_name_the_place() {
        let at = |from: &str, to: &str| {
            let text = BYO.replacen(from, to, 1);
            parse(&text, "m.toml").unwrap_err()
        };
        // Shape errors: line and column of the offending table.
        let e = at("binary = \"/sbin/mkfs.minix\"", "path = \"/sbin/x\"");
        assert!(
            matches!(e, Error::Parse { line: 9..=11, .. }) && e.to_string().contains("exactly one"),
            "{e}"
        );
        let e = at("name = \"data\"", "name = \"a-very-long-disk-name-x\"");
        assert!(
            matches!(e, Error::Parse { line: 14..=16, .. })
                && e.to_string().contains("virtio serial"),
            "{e}"
        );
        let e = at("size_mib = 64", "");
        assert!(e.to_string().contains("size_mib above zero"), "{e}");
        let e = at("cflags = [\"-O2\"]", "cflags = [\"-O2\"]\nbogus = 1");
        assert!(
            matches!(e, Error::Parse { .. }) && e.to_string().contains("bogus"),
            "{e}"
        );
        let e = at("make_args = [\"CONFIG_MINIX_FS=m\"]", "make_args = \"x\"");
        assert!(matches!(e, Error::Parse { line: 5, .. }), "{e}");
        let e = at(
            "source = \"tools/mkfs.x.c\"",
            "source = \"t.c\"\npath = \"sbin/x\"",
        );
        assert!(e.to_string().contains("absolute"), "{e}");
        // Semantic errors.
        let e = at("device = \"data\"", "device = \"nodisk\"");
        assert!(e.to_string().contains("not a [[guest.disks]] name"), "{e}");
        let e = at(
            "kernel_modules = [\"loop\"]",
            "kernel_modules = [\"lo op\"]",
        );
        assert!(e.to_string().contains("not a module name"), "{e}");
        let e = at("source = \"linux/fs/minix\"", "");
        assert!(e.to_string().contains("make_args need a source"), "{e}");
        let e = at(
            "source = \"tools/mkfs.x.c\"",
            "source = \"tools/mkfs.x.c\"\npath = \"/sbin/mkfs.minix\"",
        );
        assert!(e.to_string().contains("two guest tools"), "{e}");
        let twice = BYO.replace(
            "[[test]]",
            "[[guest.disks]]\nname = \"data\"\nsize_mib = 1\n[[test]]",
        );
        assert!(
            parse(&twice, "m")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn after_restart_defaults_to_the_modules() {
        let text = BYO.replace(
            "fstype = \"minix\"",
            "fstype = \"minix\"\nafter_restart = [{ exec = { cmd = \"fsck.minix /dev/disk/by-name/data\" } }]",
        ) + "[[test]]\nname = \"own\"\nafter_restart = []\nsteps = [\"load\"]\n";
        let p = parse(&text, "m").unwrap();
        assert!(
            matches!(p.after_restart(&p.tests[0]), [Step::Exec(e)] if e.cmd.starts_with("fsck"))
        );
        assert!(p.after_restart(&p.tests[1]).is_empty());
        let bad = text.replace(
            "after_restart = []",
            "after_restart = [{ trigger = \"null\" }]",
        );
        let e = parse(&bad, "m").unwrap_err();
        assert!(e.to_string().contains("cannot be one of its steps"), "{e}");
        let bogus = text.replace("after_restart = []", "after_restart = [{ bogus = 1 }]");
        let e = parse(&bogus, "m").unwrap_err();
        assert!(matches!(e, Error::Parse { .. }), "{e}");
        let torn = text.replace(
            "name = \"own\"\n",
            "name = \"own\"\nexpect_data_loss = true\n",
        );
        let e = parse(&torn, "m").unwrap_err();
        assert!(e.to_string().contains("expect_data_loss needs"), "{e}");
        let ok = torn.replace("after_restart = []\n", "");
        assert!(parse(&ok, "m").unwrap().tests[1].expect_data_loss);
    }
}
