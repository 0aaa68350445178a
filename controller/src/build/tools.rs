//! Guest tools (`[[guest.tools]]`): C sources built static on the host with gcc
//! (cached by a hash of the file and flags), host binaries checked; the image build
//! copies a host binary with its shared libraries.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, cache_key, first_errors, run_logged};
use crate::plan::{ToolOrigin, ToolSpec};

/// A tool ready for the image: a host file and where it goes in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestTool {
    /// The host file (a static build, or the host binary itself).
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
    /// Whether the image build must copy its shared libraries (a host binary).
    pub needs_libs: bool,
}

/// `p` as given when absolute, else relative to `base` (the plan's folder).
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Prepares every tool of the plan: builds sources, checks binaries.
pub fn prepare(
    tools: &[ToolSpec],
    plan_dir: &Path,
    cache: &Path,
) -> Result<Vec<GuestTool>, BuildError> {
    tools
        .iter()
        .map(|t| match &t.origin {
            ToolOrigin::Binary(b) => {
                let host = resolve(plan_dir, b);
                if !is_executable(&host) {
                    return Err(BuildError::ToolMissing {
                        path: host,
                        hint: " or is not executable (install the package that ships it, \
                               e.g. util-linux for mkfs.minix)"
                            .into(),
                    });
                }
                Ok(GuestTool {
                    host,
                    guest: t.path.clone(),
                    needs_libs: true,
                })
            }
            ToolOrigin::Source(s) => {
                let src = resolve(plan_dir, s);
                build_static(&src, &t.cflags, &t.path, cache).map(|host| GuestTool {
                    host,
                    guest: t.path.clone(),
                    needs_libs: false,
                })
            }
        })
        .collect()
}

/// Builds one C file static with gcc into the cache (`tools/<key>/<name>`).
fn build_static(
    src: &Path,
    cflags: &[String],
    guest: &str,
    cache: &Path,
) -> Result<PathBuf, BuildError> {
    if !src.is_file() {
        return Err(BuildError::ToolMissing {
            path: src.to_path_buf(),
            hint: " (a tool's source is relative to the plan file)".into(),
        });
    }
    let (dir, file) = match (src.parent(), src.file_name()) {
        (Some(d), Some(f)) => (d, PathBuf::from(f)),
        _ => {
            return Err(BuildError::ToolMissing {
                path: src.to_path_buf(),
                hint: String::new(),
            });
        }
    };
    let mut extra = vec!["tool".to_string()];
    extra.extend(cflags.iter().map(|f| format!("cflag={f}")));
    let key = cache_key(dir, &[file], &extra)?;
    let name = Path::new(guest).file_name().unwrap_or_default();
    let out_dir = cache.join("tools").join(&key[..16]);
    let out = out_dir.join(name);
    if is_executable(&out) {
        return Ok(out);
    }
    let tmp = out_dir.join(".building");
    let mut gcc = Command::new("gcc");
    gcc.args(["-static", "-O2"])
        .args(cflags)
        .arg("-o")
        .arg(&tmp)
        .arg(src);
    let log = out_dir.join("build.log");
    if !run_logged(gcc, &log, "gcc (package gcc, libc6-dev)")? {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(BuildError::Failed {
            what: format!("guest tool {}", src.display()),
            release: "the host".into(),
            errors: first_errors(&text, 8),
            log,
        });
    }
    std::fs::rename(&tmp, &out).map_err(|source| BuildError::Io {
        what: format!("rename to {}", out.display()),
        source,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(origin: ToolOrigin, path: &str) -> ToolSpec {
        ToolSpec {
            origin,
            path: path.into(),
            cflags: vec![],
        }
    }

    #[test]
    fn missing_tools_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = prepare(
            &[spec(
                ToolOrigin::Binary("/no/such/mkfs.x".into()),
                "/sbin/x",
            )],
            d.path(),
            d.path(),
        )
        .unwrap_err();
        assert!(matches!(e, BuildError::ToolMissing { .. }), "{e}");
        assert!(
            e.to_string().contains("/no/such/mkfs.x does not exist"),
            "{e}"
        );
        let e = prepare(
            &[spec(ToolOrigin::Source("tools/mkfs.c".into()), "/sbin/x")],
            d.path(),
            d.path(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("tools/mkfs.c does not exist")
                && e.to_string().contains("relative to the plan"),
            "{e}"
        );
    }

    #[test]
    fn a_c_tool_builds_static_and_is_cached_and_a_broken_one_shows_its_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("hi.c"),
            "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n",
        )
        .unwrap();
        let t = [spec(ToolOrigin::Source("hi.c".into()), "/sbin/hi")];
        let got = prepare(&t, d.path(), &d.path().join("c")).unwrap();
        assert!(!got[0].needs_libs);
        let out = Command::new(&got[0].host).output().unwrap();
        assert_eq!(out.stdout, b"hi\n");
        // Static: no PT_INTERP (3) program header.
        let elf = std::fs::read(&got[0].host).unwrap();
        let at = |o: usize, n: usize| {
            elf[o..o + n]
                .iter()
                .rev()
                .fold(0usize, |v, &b| (v << 8) | b as usize)
        };
        let (phoff, phsize, phnum) = (at(0x20, 8), at(0x36, 2), at(0x38, 2));
        assert!(phnum > 0);
        assert!((0..phnum).all(|i| at(phoff + i * phsize, 4) != 3));
        assert_eq!(prepare(&t, d.path(), &d.path().join("c")).unwrap(), got);
        std::fs::write(d.path().join("bad.c"), "int main(void) { return nope; }\n").unwrap();
        let e = prepare(
            &[spec(ToolOrigin::Source("bad.c".into()), "/sbin/bad")],
            d.path(),
            &d.path().join("c"),
        )
        .unwrap_err();
        let errs = e.first_errors().unwrap();
        assert!(
            errs[0].contains("bad.c:1") && errs[0].contains("nope"),
            "{e}"
        );
    }
}
