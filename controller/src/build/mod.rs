//! Building what a plan brings: the module under test from source per kernel
//! ([`module`]), guest tools ([`tools`]) and the plan's guest image ([`image`]).
//! Everything lands in the vexfs cache; nothing is written into the user's trees.

pub mod image;
pub mod kernel;
pub mod module;
pub mod tools;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Build failures, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The source tree is not there.
    #[error(
        "module source tree {path} does not exist ([module] source is relative to the plan file)"
    )]
    SourceMissing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The folder is not a Kbuild tree.
    #[error("module source tree {path} has no Kbuild or Makefile")]
    NotKbuild {
        /// The folder.
        path: PathBuf,
    },
    /// A guest tool's source or binary is not there.
    #[error("guest tool {path} does not exist{hint}")]
    ToolMissing {
        /// The path looked at.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// The kernel headers could not be fetched.
    #[error("headers for {release}: {message}")]
    Headers {
        /// The kernel.
        release: String,
        /// The fetch script's message.
        message: String,
    },
    /// A compiler or make failed; `errors` are its first error lines.
    #[error("{what} failed to build for {release}:\n{}\n(full log: {})", errors.join("\n"), log.display())]
    Failed {
        /// What was built.
        what: String,
        /// The kernel (or "host" for tools).
        release: String,
        /// The first error lines.
        errors: Vec<String>,
        /// The full build log.
        log: PathBuf,
    },
    /// The build succeeded but gave no usable .ko.
    #[error("module build for {release}: {why} (log: {})", log.display())]
    NoModule {
        /// The kernel.
        release: String,
        /// What is wrong.
        why: String,
        /// The build log.
        log: PathBuf,
    },
    /// modinfo could not read a built module.
    #[error("modinfo {path}: {message}")]
    Modinfo {
        /// The .ko.
        path: PathBuf,
        /// modinfo's message.
        message: String,
    },
    /// The guest image build failed.
    #[error("guest image for {release}: {message}")]
    Image {
        /// The kernel.
        release: String,
        /// The script's last lines.
        message: String,
    },
    /// A needed program could not be started.
    #[error("cannot run {tool}: {source}")]
    Tool {
        /// The program (and its package).
        tool: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// File trouble in the cache or a tree.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// The compiler's first error lines, when this is a failed build.
    pub fn first_errors(&self) -> Option<&[String]> {
        match self {
            BuildError::Failed { errors, .. } => Some(errors),
            _ => None,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// The repository's guest-image/ folder (scripts): `$VEXFS_GUEST_IMAGE_DIR`, else the
/// one beside this crate's sources.
pub fn guest_image_dir() -> PathBuf {
    std::env::var_os("VEXFS_GUEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-image"))
}

/// Whether a file name is a build product (never copied nor hashed: a stale `.o` from
/// another kernel would otherwise be linked in) or version-control data.
pub fn is_build_product(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".o", ".ko", ".mod", ".mod.c", ".cmd", ".a", ".order", ".symvers", ".dwo",
    ];
    matches!(name, ".git" | ".tmp_versions" | ".cache.mk")
        || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Every regular file under `root` (relative paths, sorted), build products left out.
pub fn list_tree(root: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(io(format!("read {}", dir.display())))?;
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if is_build_product(n) {
                continue;
            }
            let ft = e.file_type().map_err(io(format!("stat {n}")))?;
            // Symlinks are followed: a tree may link shared sources in.
            let ft = if ft.is_symlink() {
                std::fs::metadata(e.path())
                    .map_err(io(format!("stat {}", e.path().display())))?
                    .file_type()
            } else {
                ft
            };
            if ft.is_dir() {
                stack.push(rel.join(n));
            } else if ft.is_file() {
                out.push(rel.join(n));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies `files` (relative to `from`) into `to`.
pub fn copy_tree(from: &Path, files: &[PathBuf], to: &Path) -> Result<(), BuildError> {
    for f in files {
        let dst = to.join(f);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        std::fs::copy(from.join(f), &dst).map_err(io(format!("copy {}", f.display())))?;
    }
    Ok(())
}

/// SHA-256 (hex, from coreutils' `sha256sum`) of the files' names and contents plus
/// `extra` words: the cache key of a build.
pub fn cache_key(root: &Path, files: &[PathBuf], extra: &[String]) -> Result<String, BuildError> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::Tool {
            tool: "sha256sum (package coreutils)".into(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let fed = (|| -> std::io::Result<()> {
        for e in extra {
            writeln!(stdin, "{e}")?;
        }
        for f in files {
            let data = std::fs::read(root.join(f))?;
            // Name and length first: no two trees feed the same bytes.
            write!(stdin, "\0{}\0{}\0", f.display(), data.len())?;
            stdin.write_all(&data)?;
        }
        Ok(())
    })();
    drop(stdin);
    let out = child.wait_with_output().map_err(io("sha256sum"))?;
    fed.map_err(io(format!("hash {}", root.display())))?;
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if hex.len() != 64 {
        return Err(BuildError::Io {
            what: "sha256sum".into(),
            source: std::io::Error::other("no digest"),
        });
    }
    Ok(hex)
}

/// Runs `cmd` with stdout and stderr into `log`; whether it succeeded.
pub fn run_logged(mut cmd: Command, log: &Path, tool: &str) -> Result<bool, BuildError> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    let f = std::fs::File::create(log).map_err(io(format!("create {}", log.display())))?;
    let f2 = f.try_clone().map_err(io("dup log"))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .status()
        .map_err(|source| BuildError::Tool {
            tool: tool.into(),
            source,
        })?;
    Ok(status.success())
}

/// The first `n` error lines of a compiler/make log (gcc `error:`, `fatal error:`,
/// make `***`, linker `undefined reference`), else its last `n` lines.
pub fn first_errors(log: &str, n: usize) -> Vec<String> {
    let is_error = |l: &str| {
        l.contains("error:")
            || l.contains("Error ")
            || l.contains("*** ")
            || l.contains("undefined reference")
            || l.contains("ERROR:")
    };
    let errors: Vec<String> = log
        .lines()
        .filter(|l| is_error(l))
        .take(n)
        .map(str::to_string)
        .collect();
    if !errors.is_empty() {
        return errors;
    }
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Lines of a failed script's stderr kept in its error: the end says why it failed.
const STDERR_TAIL_LINES: usize = 15;

/// The last lines of a failed script's stderr, for its error message.
pub(crate) fn stderr_tail(stderr: &[u8]) -> String {
    let err = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = err.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_errors_are_the_compilers() {
        let log = "make: Entering directory '/k'\n  CC [M]  /t/a.o\n/t/a.c:3:1: error: unknown type name 'foo'\n    3 | foo x;\n/t/a.c:9:2: error: expected ';'\nmake[2]: *** [scripts/Makefile.build:250: /t/a.o] Error 1\n";
        assert_eq!(
            first_errors(log, 2),
            [
                "/t/a.c:3:1: error: unknown type name 'foo'",
                "/t/a.c:9:2: error: expected ';'"
            ]
        );
        assert_eq!(first_errors(log, 8).len(), 3);
        assert_eq!(first_errors("a\n\nb\nc\n", 2), ["b", "c"]);
    }

    #[test]
    fn trees_are_listed_without_build_products_and_hashed() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("src/inc")).unwrap();
        std::fs::create_dir_all(t.join(".git")).unwrap();
        for f in [
            "Kbuild",
            "src/a.c",
            "src/inc/a.h",
            "src/a.o",
            ".a.o.cmd",
            "x.ko",
            ".git/HEAD",
        ] {
            std::fs::write(t.join(f), f).unwrap();
        }
        let files = list_tree(t).unwrap();
        let names: Vec<_> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["Kbuild", "src/a.c", "src/inc/a.h"]);
        let k1 = cache_key(t, &files, &["release=a".into()]).unwrap();
        assert_eq!(k1.len(), 64);
        assert_eq!(k1, cache_key(t, &files, &["release=a".into()]).unwrap());
        assert_ne!(k1, cache_key(t, &files, &["release=b".into()]).unwrap());
        // A build product changing does not change the key; a source does.
        std::fs::write(t.join("src/a.o"), "other").unwrap();
        assert_eq!(
            k1,
            cache_key(t, &list_tree(t).unwrap(), &["release=a".into()]).unwrap()
        );
        std::fs::write(t.join("src/a.c"), "changed").unwrap();
        assert_ne!(
            k1,
            cache_key(t, &list_tree(t).unwrap(), &["release=a".into()]).unwrap()
        );
        let out = tempfile::tempdir().unwrap();
        copy_tree(t, &files, out.path()).unwrap();
        assert_eq!(list_tree(out.path()).unwrap(), files);
    }
}
