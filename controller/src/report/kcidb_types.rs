//! The KCIDB v5.3 schema as serde types (what `kcidb` writes) and the facts the
//! conversion takes in.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// The schema version written (the newest `kcidb-io` validates).
pub const VERSION: Version = Version { major: 5, minor: 3 };

/// KCIDB's limit on `log_excerpt`, in characters.
pub const LOG_EXCERPT_MAX: usize = 16_384;

/// A whole KCIDB submission.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kcidb {
    /// Schema version.
    pub version: Version,
    /// Source checkouts.
    pub checkouts: Vec<Checkout>,
    /// Builds.
    pub builds: Vec<Build>,
    /// Test runs.
    pub tests: Vec<Test>,
    /// Issues (one per crash bucket).
    pub issues: Vec<Issue>,
    /// Incidents (one per crash).
    pub incidents: Vec<Incident>,
}

/// Schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

/// A KCIDB status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The tested code is faulty.
    Fail,
    /// The test did not complete; the code's status is unknown.
    Error,
    /// The harness failed before the test ran.
    Miss,
    /// The tested code is correct.
    Pass,
    /// Completed without a verdict.
    Done,
    /// Not applicable.
    Skip,
}

/// A named file at a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// File name (no directories).
    pub name: String,
    /// Where to download it.
    pub url: String,
}

/// The source checkout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checkout {
    /// `origin:...`.
    pub id: String,
    /// Submitting CI system.
    pub origin: String,
    /// Name of the tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_name: Option<String>,
    /// https URL of the git repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repository_url: Option<String>,
    /// Full commit hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit_hash: Option<String>,
    /// `git describe` name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit_name: Option<String>,
    /// Branch checked out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repository_branch: Option<String>,
    /// Human-readable comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Run start (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Run end: all builds done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_builds_finish_time: Option<String>,
    /// Run end: all tests done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_tests_finish_time: Option<String>,
    /// The checkout worked.
    pub valid: bool,
    /// Extra data.
    pub misc: Value,
}

/// One build: the module against one kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Build {
    /// The checkout built.
    pub checkout_id: String,
    /// `origin:...`.
    pub id: String,
    /// Submitting CI system.
    pub origin: String,
    /// Human-readable comment.
    pub comment: String,
    /// Target architecture.
    pub architecture: String,
    /// Compiler name and version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiler: Option<String>,
    /// Kernel configuration name.
    pub config_name: String,
    /// Build log URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// The end of the build log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    /// Outcome, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Extra data.
    pub misc: Value,
}

/// One test run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Test {
    /// The build tested.
    pub build_id: String,
    /// `origin:...`.
    pub id: String,
    /// Submitting CI system.
    pub origin: String,
    /// Dot-separated test path.
    pub path: String,
    /// Human-readable comment.
    pub comment: String,
    /// Outcome.
    pub status: Status,
    /// Seconds.
    pub duration: f64,
    /// The message and crash reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    /// Crash reports and other outputs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<Resource>,
    /// Where it ran.
    pub environment: Environment,
    /// Extra data.
    pub misc: Value,
}

/// A test's environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Environment {
    /// Human-readable description.
    pub comment: String,
    /// Extra data.
    pub misc: Value,
}

/// An issue: one crash bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    /// `origin:...`, stable across runs (from the bucket signature).
    pub id: String,
    /// Modification version.
    pub version: u32,
    /// Submitting CI system.
    pub origin: String,
    /// Category paths.
    pub categories: Vec<String>,
    /// The crash title.
    pub report_subject: String,
    /// Who is to blame.
    pub culprit: Culprit,
    /// Human-readable comment.
    pub comment: String,
    /// Extra data.
    pub misc: Value,
}

/// Layers responsible for an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Culprit {
    /// The tested code.
    pub code: bool,
    /// The test.
    pub tool: bool,
    /// The harness.
    pub harness: bool,
}

/// An incident: one crash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// `origin:...`.
    pub id: String,
    /// Submitting CI system.
    pub origin: String,
    /// The issue.
    pub issue_id: String,
    /// The issue's version.
    pub issue_version: u32,
    /// The build.
    pub build_id: String,
    /// The test.
    pub test_id: String,
    /// The issue occurred.
    pub present: bool,
    /// Human-readable comment.
    pub comment: String,
    /// Extra data.
    pub misc: Value,
}

/// Where the module source came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitSource {
    /// https URL of the repository (credentials stripped), when it has one.
    pub url: Option<String>,
    /// Full commit hash (40 hex digits).
    pub commit: String,
    /// `git describe --always --dirty`.
    pub describe: Option<String>,
    /// Branch name.
    pub branch: Option<String>,
    /// The tree had uncommitted changes.
    pub dirty: bool,
}

/// What is known about the module build for one kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFacts {
    /// Compiler as recorded in the module (`GCC: (Debian 12.2.0-14) 12.2.0`).
    pub compiler: Option<String>,
    /// The build log's text.
    pub log: Option<String>,
    /// URL of the build log, when published.
    pub log_url: Option<String>,
}

/// Everything the conversion needs besides the results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// KCIDB origin (`[a-z0-9_]+`).
    pub origin: String,
    /// Tree name for the checkout.
    pub tree_name: Option<String>,
    /// Git facts of the module source, when it is a git tree.
    pub git: Option<GitSource>,
    /// Per kernel release.
    pub builds: BTreeMap<String, BuildFacts>,
    /// Base URL where the artifact files ([`artifacts`]) are published; none: no
    /// output files are listed.
    pub artifacts_url: Option<String>,
}

/// Errors of the conversion.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KcidbError {
    /// The origin breaks KCIDB's pattern.
    #[error("invalid KCIDB origin {0:?}: use lower-case letters, digits and '_' only")]
    Origin(String),
    /// The artifacts URL is not a URL.
    #[error("invalid artifacts URL {0:?}: give an absolute URL such as https://host/path")]
    ArtifactsUrl(String),
}

/// A file to write next to the KCIDB JSON so the output files' URLs resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Path relative to the artifacts folder (and URL).
    pub path: String,
    /// Content.
    pub content: String,
}
