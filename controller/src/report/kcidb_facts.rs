//! What the KCIDB conversion needs from the machine: the module source's git facts
//! (through the `git` tool), the compiler recorded in each built module and its build
//! log (from the image cache), and the HTTP submission (through `curl`, which brings
//! TLS and proxies without linking a TLS stack into vexctl).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::kcidb::{BuildFacts, GitSource};

/// Errors of submitting.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The token variable is unset or empty.
    #[error("no token: set the environment variable {0} to the KCIDB submission token")]
    NoToken(String),
    /// The URL is not http(s).
    #[error("cannot submit to {0:?}: give an http:// or https:// URL")]
    Url(String),
    /// curl could not be started.
    #[error("running curl (install the curl package): {0}")]
    Spawn(std::io::Error),
    /// The server refused it, or it could not be reached.
    #[error("submitting to {url} failed: {reason}")]
    Failed {
        /// Where.
        url: String,
        /// curl's message and the server's answer.
        reason: String,
    },
}

/// Git facts of the tree holding `dir`, or None when it is not in a git work tree (or
/// git is missing).
pub fn git_source(dir: &Path) -> Option<GitSource> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let describe = git(&["describe", "--always", "--dirty"]);
    let dirty = git(&["status", "--porcelain", "--", "."]).is_some();
    Some(GitSource {
        url: git(&["remote", "get-url", "origin"])
            .as_deref()
            .and_then(https_url),
        commit: commit.to_ascii_lowercase(),
        describe,
        branch: git(&["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD"),
        dirty,
    })
}

/// The https form of a git remote (KCIDB takes only https URLs): `https://` kept
/// without credentials, `git@host:path` and `ssh://[user@]host/path` rewritten; local
/// paths and other schemes give None.
pub fn https_url(remote: &str) -> Option<String> {
    let (host, path) = if let Some(rest) = remote.strip_prefix("https://") {
        rest.split_once('/')?
    } else if let Some(rest) = remote.strip_prefix("ssh://") {
        rest.split_once('/')?
    } else if let Some((user_host, path)) = remote.split_once(':')
        && !user_host.contains('/')
        && user_host.contains('@')
    {
        (user_host, path)
    } else {
        return None;
    };
    let host = host.rsplit('@').next()?;
    // An ssh port is not the https port.
    let host = host.split(':').next()?;
    if host.is_empty() || path.is_empty() {
        return None;
    }
    Some(format!("https://{host}/{}", path.trim_start_matches('/')))
}

/// The compiler string a GCC-built object records in its `.comment` section.
pub fn compiler_of(object: &[u8]) -> Option<String> {
    let at = memchr::memmem::find(object, b"GCC: (")?;
    let rest = &object[at..];
    let end = memchr::memchr(0, rest).unwrap_or(rest.len()).min(256);
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    let version = s.strip_prefix("GCC: ")?.trim();
    (!version.is_empty()).then(|| format!("gcc {version}"))
}

/// Build facts of one kernel from the image cache: the module the image holds
/// (`images/<release>/<module>.ko`, for its compiler) and the build log
/// (`build/<release>/vexfs/build.log`). Missing files leave fields empty.
pub fn build_facts(cache: &Path, release: &str) -> BuildFacts {
    let image = cache.join("images").join(release);
    let module = module_in(&image);
    BuildFacts {
        compiler: module
            .and_then(|m| std::fs::read(m).ok())
            .and_then(|b| compiler_of(&b)),
        log: std::fs::read_to_string(cache.join("build").join(release).join("vexfs/build.log"))
            .ok()
            .filter(|l| !l.trim().is_empty()),
        log_url: None,
    }
}

fn module_in(image: &Path) -> Option<PathBuf> {
    let manifest = std::fs::read_to_string(image.join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&manifest).ok()?;
    let p = v.get("module_host_path")?.as_str()?;
    Some(PathBuf::from(p))
}

/// The cache folder the set-up fills: `$VEXFS_CACHE`, else `$XDG_CACHE_HOME/vexfs`,
/// else `~/.cache/vexfs`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |n| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("VEXFS_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("vexfs")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/vexfs")))
}

/// The submission token from the environment variable `var`.
pub fn token_from_env(var: &str) -> Result<String, SubmitError> {
    std::env::var(var)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| SubmitError::NoToken(var.to_string()))
}

/// POSTs `body` (JSON) to `url` with `Authorization: Bearer <token>` and returns the
/// server's answer. The token goes to curl on its standard input, never on its
/// command line (which other users can read).
pub fn submit(url: &str, token: &str, body: &[u8]) -> Result<String, SubmitError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(SubmitError::Url(url.to_string()));
    }
    let dir = tempfile::tempdir().map_err(SubmitError::Spawn)?;
    let data = dir.path().join("kcidb.json");
    std::fs::write(&data, body).map_err(SubmitError::Spawn)?;
    let mut child = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail-with-body",
            "--max-time",
            "120",
        ])
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            "@-",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", data.display()))
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(SubmitError::Spawn)?;
    let header = format!("Authorization: Bearer {token}\n");
    let wrote = child
        .stdin
        .take()
        .map(|mut s| s.write_all(header.as_bytes()));
    let out = child.wait_with_output().map_err(SubmitError::Spawn)?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && matches!(wrote, Some(Ok(()))) {
        return Ok(answer);
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(SubmitError::Failed {
        url: url.to_string(),
        reason: [err, answer]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_become_https_without_credentials() {
        let h = |r| https_url(r);
        assert_eq!(
            h("https://user:pw@git.example.org/a/b.git").as_deref(),
            Some("https://git.example.org/a/b.git")
        );
        assert_eq!(
            h("git@github.com:vexfs/harness.git").as_deref(),
            Some("https://github.com/vexfs/harness.git")
        );
        assert_eq!(
            h("ssh://git@host.example:2222/x/y").as_deref(),
            Some("https://host.example/x/y")
        );
        assert_eq!(h("/srv/git/vexfs.git"), None);
        assert_eq!(h("../vexfs"), None);
        assert_eq!(h("http://plain.example/x"), None);
    }

    #[test]
    fn compiler_comes_from_the_comment_section() {
        let obj = b"\x7fELF....\0GCC: (Debian 12.2.0-14+deb12u1) 12.2.0\0\0.shstrtab";
        assert_eq!(
            compiler_of(obj).as_deref(),
            Some("gcc (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        assert_eq!(compiler_of(b"\x7fELF no comment"), None);
        assert_eq!(compiler_of(b"GCC: (\0"), Some("gcc (".into()));
    }

    #[test]
    fn build_facts_read_the_image_cache() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "6.1.0-41-amd64";
        let image = dir.path().join("images").join(rel);
        std::fs::create_dir_all(&image).unwrap();
        let ko = image.join("vexfs.ko");
        std::fs::write(&ko, b"\x7fELF\0GCC: (Debian 12.2.0-14) 12.2.0\0").unwrap();
        std::fs::write(
            image.join("manifest.json"),
            serde_json::json!({ "module_host_path": ko }).to_string(),
        )
        .unwrap();
        let log = dir.path().join("build").join(rel).join("vexfs");
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join("build.log"), "  CC [M]  vexfs.o\n").unwrap();
        let f = build_facts(dir.path(), rel);
        assert_eq!(f.compiler.as_deref(), Some("gcc (Debian 12.2.0-14) 12.2.0"));
        assert_eq!(f.log.as_deref(), Some("  CC [M]  vexfs.o\n"));
        assert_eq!(
            build_facts(dir.path(), "6.12.1-amd64"),
            BuildFacts::default()
        );
    }

    #[test]
    fn git_facts_of_this_repository() {
        let g = git_source(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("a git tree");
        assert_eq!(g.commit.len(), 40);
        let not_git = tempfile::tempdir().unwrap();
        assert_eq!(git_source(not_git.path()), None);
    }
}
