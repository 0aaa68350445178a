//! The module under test built from a Kbuild/Makefile source tree against one kernel's
//! headers: the tree is copied (build products left out) into a per-kernel build
//! folder in the cache and built there with `make -C <headers> M=<copy>`, so the
//! user's tree is never written. Cached by a hash of the tree's files, the kernel
//! release and the make arguments; the unstripped .ko stays in the cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{BuildError, cache_key, copy_tree, first_errors, list_tree, run_logged};

/// One module build: a tree, a kernel, make arguments.
#[derive(Debug, Clone)]
pub struct ModuleBuild {
    /// The source tree (absolute, or relative to the working directory).
    pub source: PathBuf,
    /// `uname -r` of the target kernel.
    pub release: String,
    /// Extra `make` arguments.
    pub make_args: Vec<String>,
    /// The module name wanted when the tree builds several (`[module] name`).
    pub name: Option<String>,
    /// The vexfs cache root.
    pub cache: PathBuf,
}

/// A built module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltModule {
    /// The unstripped .ko on the host (keeps its DWARF for forensics).
    pub ko: PathBuf,
    /// Its name as in /proc/modules (modinfo `name`).
    pub name: String,
    /// Its vermagic (starts with the kernel release).
    pub vermagic: String,
    /// The kernel it was built for.
    pub release: String,
    /// Taken from the cache, not built now.
    pub cached: bool,
    /// Time spent (building, or finding it in the cache).
    pub took: Duration,
}

/// Where `/init`'s image puts a built module: `/lib/modules/vexfs/<name>.ko`.
pub fn guest_path(name: &str) -> String {
    format!("/lib/modules/vexfs/{name}.ko")
}

/// Checks that `dir` is a buildable tree: a directory with a Kbuild or Makefile.
pub fn check_tree(dir: &Path) -> Result<(), BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::SourceMissing {
            path: dir.to_path_buf(),
        });
    }
    if !dir.join("Kbuild").is_file() && !dir.join("Makefile").is_file() {
        return Err(BuildError::NotKbuild {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Chooses the module among the .ko files a build produced: the only one, or the one
/// named `wanted` (file name or modinfo name, `-` and `_` alike).
pub fn choose_ko(found: &[(PathBuf, String)], wanted: Option<&str>) -> Result<usize, String> {
    let norm = |s: &str| s.replace('-', "_");
    match (found.len(), wanted) {
        (0, _) => Err("the build produced no .ko file".into()),
        (1, None) => Ok(0),
        (_, Some(w)) => found
            .iter()
            .position(|(p, n)| {
                norm(n) == norm(w)
                    || p.file_stem().and_then(|s| s.to_str()).map(norm) == Some(norm(w))
            })
            .ok_or_else(|| {
                format!(
                    "no built module is named {w:?} (built: {})",
                    names(found).join(", ")
                )
            }),
        (_, None) => Err(format!(
            "the build produced several modules ({}): set [module] name",
            names(found).join(", ")
        )),
    }
}

/// Every `.ko` under `dir` (build products, which [`list_tree`] leaves out), sorted.
fn find_kos(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "ko") => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn names(found: &[(PathBuf, String)]) -> Vec<String> {
    found.iter().map(|(_, n)| n.clone()).collect()
}

fn modinfo(ko: &Path, field: &str) -> Result<String, BuildError> {
    let out = Command::new("modinfo")
        .args(["-F", field])
        .arg(ko)
        .output()
        .map_err(|source| BuildError::Tool {
            tool: "modinfo (package kmod)".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BuildError::Modinfo {
            path: ko.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The kbuild folder of `release`'s headers, fetched into the cache when missing
/// (guest-image/fetch-kernel.sh).
pub fn headers(release: &str) -> Result<PathBuf, BuildError> {
    let script = super::guest_image_dir().join("fetch-kernel.sh");
    let out = Command::new(&script)
        .args(["headers", release])
        .output()
        .map_err(|source| BuildError::Tool {
            tool: script.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(BuildError::Headers {
            release: release.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    Ok(PathBuf::from(dir).join(format!("usr/src/linux-headers-{release}")))
}

impl ModuleBuild {
    /// Builds the module (or takes it from the cache). A compiler failure is
    /// [`BuildError::Failed`] with the first error lines.
    pub fn build(&self) -> Result<BuiltModule, BuildError> {
        let started = Instant::now();
        check_tree(&self.source)?;
        let files = list_tree(&self.source)?;
        let mut extra = vec![format!("release={}", self.release)];
        extra.extend(self.make_args.iter().map(|a| format!("make_arg={a}")));
        let key = cache_key(&self.source, &files, &extra)?;
        let dir = self
            .cache
            .join("modbuild")
            .join(&self.release)
            .join(&key[..16]);
        let ready = dir.join("ready.json");
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(r) = serde_json::from_str::<Ready>(&text)
            && r.ko.is_file()
        {
            tracing::debug!(ko = %r.ko.display(), "module build cached");
            return Ok(BuiltModule {
                ko: r.ko,
                name: r.name,
                vermagic: r.vermagic,
                release: self.release.clone(),
                cached: true,
                took: started.elapsed(),
            });
        }
        let kbuild = headers(&self.release)?;
        let tree = dir.join("tree");
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(&self.source, &files, &tree)?;
        let log = dir.join("build.log");
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut make = Command::new("make");
        make.arg("-C")
            .arg(&kbuild)
            .arg(format!("M={}", tree.display()))
            .arg(format!("-j{jobs}"))
            // No pahole here: skip BTF for the module (it loads fine without it).
            .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
            .args(&self.make_args)
            .arg("modules");
        let ok = run_logged(make, &log, "make (package make)")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !ok {
            // Errors name the user's files, not the copy built.
            let (copy, user) = (
                tree.display().to_string(),
                self.source.display().to_string(),
            );
            return Err(BuildError::Failed {
                what: format!("module {}", self.source.display()),
                release: self.release.clone(),
                errors: first_errors(&text, 8)
                    .iter()
                    .map(|l| l.replace(&copy, &user))
                    .collect(),
                log,
            });
        }
        let mut found = Vec::new();
        for ko in find_kos(&tree) {
            let name = modinfo(&ko, "name")?;
            found.push((ko, name));
        }
        let i = choose_ko(&found, self.name.as_deref()).map_err(|why| BuildError::NoModule {
            release: self.release.clone(),
            why,
            log: log.clone(),
        })?;
        let (ko, name) = found.swap_remove(i);
        let vermagic = modinfo(&ko, "vermagic")?;
        let r = Ready { ko, name, vermagic };
        let json = serde_json::to_string(&r).unwrap_or_default();
        std::fs::write(&ready, json).map_err(|source| BuildError::Io {
            what: format!("write {}", ready.display()),
            source,
        })?;
        tracing::info!(ko = %r.ko.display(), release = %self.release, "module built");
        Ok(BuiltModule {
            ko: r.ko,
            name: r.name,
            vermagic: r.vermagic,
            release: self.release.clone(),
            cached: false,
            took: started.elapsed(),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Ready {
    ko: PathBuf,
    name: String,
    vermagic: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_tree_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let b = ModuleBuild {
            source: dir.path().join("nope"),
            release: "6.1.0-57-amd64".into(),
            make_args: vec![],
            name: None,
            cache: dir.path().join("cache"),
        };
        let e = b.build().unwrap_err();
        assert!(matches!(e, BuildError::SourceMissing { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::create_dir(dir.path().join("nope")).unwrap();
        std::fs::write(dir.path().join("nope/x.c"), "int x;").unwrap();
        let e = b.build().unwrap_err();
        assert!(e.to_string().contains("no Kbuild or Makefile"), "{e}");
        // Nothing was written anywhere.
        assert!(!dir.path().join("cache").exists());
    }

    #[test]
    fn choosing_the_module() {
        let f = |p: &str, n: &str| (PathBuf::from(p), n.to_string());
        assert_eq!(choose_ko(&[f("a/minix.ko", "minix")], None), Ok(0));
        let two = [f("a/foo-core.ko", "foo_core"), f("b/bar.ko", "bar")];
        assert!(choose_ko(&two, None).unwrap_err().contains("foo_core, bar"));
        assert_eq!(choose_ko(&two, Some("foo-core")), Ok(0));
        assert_eq!(choose_ko(&two, Some("bar")), Ok(1));
        assert!(choose_ko(&two, Some("baz")).unwrap_err().contains("baz"));
        assert!(choose_ko(&[], None).unwrap_err().contains("no .ko"));
        assert_eq!(guest_path("minix"), "/lib/modules/vexfs/minix.ko");
    }
}
