//! One folder of files per crash, `<db dir>/artifacts/<crash id>/`, beside the crash
//! database (no schema change): the console around the crash, the report, the report
//! with source lines, the forensics, the vmcore and the module .ko it ran. Each file is
//! written to a temporary name and renamed, so a reader never sees half a file.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::symbolize;

/// Console lines around the crash.
pub const CONSOLE: &str = "console.txt";
/// The classifier's report.
pub const REPORT: &str = "report.txt";
/// The report with source lines for the module's frames.
pub const SYMBOLIZED: &str = "report.symbolized.txt";
/// Sysrq dumps.
pub const FORENSICS: &str = "forensics.txt";

/// Artifact failures.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a file in the folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// [`CONSOLE`].
    Console,
    /// [`REPORT`].
    Report,
    /// [`SYMBOLIZED`].
    Symbolized,
    /// [`FORENSICS`].
    Forensics,
    /// A guest memory dump ([`crate::vm::dump::VMCORE`]).
    Vmcore,
    /// The module under test (`*.ko`).
    Module,
    /// Anything else put there.
    Other,
}

impl Kind {
    /// The kind of a file by its name.
    pub fn of(name: &str) -> Kind {
        match name {
            CONSOLE => Kind::Console,
            REPORT => Kind::Report,
            SYMBOLIZED => Kind::Symbolized,
            FORENSICS => Kind::Forensics,
            crate::vm::dump::VMCORE => Kind::Vmcore,
            n if n.ends_with(".ko") => Kind::Module,
            _ => Kind::Other,
        }
    }
}

/// One file of a crash's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// What it is.
    pub kind: Kind,
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// What to keep of one crash.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// Console excerpt.
    pub console: &'a str,
    /// Report text.
    pub report: &'a str,
    /// Forensics text.
    pub forensics: &'a str,
    /// The unstripped module the guest ran (copied; also used for source lines).
    pub module_ko: Option<&'a Path>,
}

/// The folder of crash `crash_id` for the database at `db_path`.
pub fn dir(db_path: &Path, crash_id: i64) -> PathBuf {
    db_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("artifacts")
        .join(crash_id.to_string())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `dir/name` through a temporary file and a rename.
pub fn put(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, ArtifactError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

/// Writes the folder of crash `crash_id` (empty texts are skipped; a report whose
/// frames cannot be resolved gets no symbolized file, with a warning) and returns
/// what it holds.
pub fn write(
    db_path: &Path,
    crash_id: i64,
    inputs: &Inputs<'_>,
) -> Result<Vec<Artifact>, ArtifactError> {
    let dir = dir(db_path, crash_id);
    for (name, text) in [
        (CONSOLE, inputs.console),
        (REPORT, inputs.report),
        (FORENSICS, inputs.forensics),
    ] {
        if !text.is_empty() {
            put(&dir, name, text.as_bytes())?;
        }
    }
    if let Some(ko) = inputs.module_ko {
        let name = ko
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module.ko");
        let data = std::fs::read(ko).map_err(io(ko))?;
        let kept = put(&dir, name, &data)?;
        let text = format!("{}{}", inputs.report, inputs.forensics);
        match symbolize::report(&text, &kept) {
            Ok(s) if !s.frames.is_empty() => {
                put(&dir, SYMBOLIZED, s.text.as_bytes())?;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(crash_id, "no source lines: {e}"),
        }
    }
    list(db_path, crash_id)
}

/// The files of crash `crash_id`, by name (none when it has no folder).
pub fn list(db_path: &Path, crash_id: i64) -> Result<Vec<Artifact>, ArtifactError> {
    let dir = dir(db_path, crash_id);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata().map_err(io(&entry.path()))?;
        if meta.is_file() {
            out.push(Artifact {
                kind: Kind::of(&name),
                path: entry.path(),
                bytes: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The .ko to resolve crash `crash_id`'s frames with: the copy in its folder, else the
/// module of the cached guest image for `kernel` (`module_host_path` in its manifest).
pub fn module_ko(db_path: &Path, crash_id: i64, kernel: &str, module: &str) -> Option<PathBuf> {
    let kept = list(db_path, crash_id).ok()?;
    if let Some(a) = kept.into_iter().find(|a| a.kind == Kind::Module) {
        return Some(a.path);
    }
    image_module_ko(&crate::vm::image::default_images_dir(), kernel, module)
}

/// The module .ko of the image for `kernel` under `images_dir`: the manifest's
/// `module_host_path`, else `<image>/<module>.ko`.
pub fn image_module_ko(images_dir: &Path, kernel: &str, module: &str) -> Option<PathBuf> {
    if kernel.is_empty() || kernel.contains('/') {
        return None;
    }
    let image = images_dir.join(kernel);
    let from_manifest = std::fs::read(image.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("module_host_path")?.as_str().map(PathBuf::from));
    let path = from_manifest.unwrap_or_else(|| image.join(format!("{module}.ko")));
    path.is_file().then_some(path)
}

/// Of the vmcores `have` (crash id, path), those past the newest `keep` by crash id,
/// oldest first.
pub fn vmcores_to_drop(mut have: Vec<(i64, PathBuf)>, keep: usize) -> Vec<PathBuf> {
    have.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    let mut drop: Vec<PathBuf> = have.into_iter().skip(keep).map(|(_, p)| p).collect();
    drop.reverse();
    drop
}

/// Deletes the vmcores of the database at `db_path` past the newest `keep` (they are
/// the large files; every other artifact stays) and returns what it deleted.
pub fn prune_vmcores(db_path: &Path, keep: u32) -> Result<Vec<PathBuf>, ArtifactError> {
    let root = dir(db_path, 0);
    let root = root.parent().unwrap_or(&root);
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root)(e)),
    };
    let mut have = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(root))?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let core = entry.path().join(crate::vm::dump::VMCORE);
        if core.is_file() {
            have.push((id, core));
        }
    }
    let drop = vmcores_to_drop(have, usize::try_from(keep).unwrap_or(usize::MAX));
    for p in &drop {
        std::fs::remove_file(p).map_err(io(p))?;
    }
    Ok(drop)
}

/// Source lines and artifact links for every crash of `r` recorded in the database at
/// `db_path`, for [`crate::report::html::html_with`]. Links are relative to `html_dir`
/// when the artifacts are below it, else absolute.
pub fn html_extras(
    db_path: &Path,
    r: &crate::results::RunResults,
    html_dir: Option<&Path>,
) -> std::collections::HashMap<i64, crate::report::html::CrashExtras> {
    let mut out = std::collections::HashMap::new();
    for k in &r.kernels {
        for c in k.tests.iter().flat_map(|t| &t.crashes) {
            let source_lines = module_ko(db_path, c.id, &k.kernel, "")
                .and_then(|ko| symbolize::report(&c.report, &ko).ok())
                .filter(|s| !s.frames.is_empty())
                .map(|s| s.text);
            let artifacts = list(db_path, c.id)
                .unwrap_or_default()
                .into_iter()
                .map(|a| {
                    let name = a
                        .path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let href = html_dir
                        .and_then(|d| a.path.strip_prefix(d).ok())
                        .unwrap_or(&a.path)
                        .display()
                        .to_string();
                    (format!("{name} ({} bytes)", a.bytes), href)
                })
                .collect();
            out.insert(
                c.id,
                crate::report::html::CrashExtras {
                    source_lines,
                    artifacts,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KO: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/symbolize/6.12.117+deb12-amd64/vexfs.ko"
    );

    #[test]
    fn folder_holds_texts_module_and_symbolized_report() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("crashes.db");
        assert!(list(&db, 7).unwrap().is_empty());
        let got = write(
            &db,
            7,
            &Inputs {
                console: "[ 1.0] boot\n",
                report: "RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs]\n",
                forensics: "",
                module_ko: Some(Path::new(KO)),
            },
        )
        .unwrap();
        let kinds: Vec<Kind> = got.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Console, Kind::Symbolized, Kind::Report, Kind::Module]
        );
        assert!(got[0].path.starts_with(tmp.path().join("artifacts/7")));
        let sym = std::fs::read_to_string(&got[1].path).unwrap();
        assert!(sym.contains("vexfs.c:715"), "{sym}");
        // The folder's .ko comes before any image's.
        assert_eq!(
            module_ko(&db, 7, "no-such-kernel", "vexfs"),
            Some(got[3].path.clone())
        );
    }

    #[test]
    fn only_the_newest_vmcores_are_kept() {
        let p = |n: &str| PathBuf::from(n);
        assert_eq!(
            vmcores_to_drop(vec![(3, p("c")), (1, p("a")), (10, p("j")), (2, p("b"))], 2),
            [p("a"), p("b")]
        );
        assert!(vmcores_to_drop(vec![(1, p("a"))], 3).is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("crashes.db");
        assert!(prune_vmcores(&db, 1).unwrap().is_empty());
        for id in [2, 9, 11] {
            put(&dir(&db, id), crate::vm::dump::VMCORE, b"core").unwrap();
            put(&dir(&db, id), REPORT, b"report").unwrap();
        }
        std::fs::create_dir_all(tmp.path().join("artifacts/not-a-crash")).unwrap();
        let gone = prune_vmcores(&db, 1).unwrap();
        assert_eq!(gone.len(), 2);
        assert!(dir(&db, 11).join(crate::vm::dump::VMCORE).is_file());
        assert!(!dir(&db, 9).join(crate::vm::dump::VMCORE).exists());
        // The reports stay.
        assert!(dir(&db, 2).join(REPORT).is_file());
    }

    #[test]
    fn image_module_from_the_manifest_or_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("6.1.0-1-amd64");
        std::fs::create_dir_all(&img).unwrap();
        assert_eq!(image_module_ko(tmp.path(), "6.1.0-1-amd64", "vexfs"), None);
        std::fs::write(img.join("vexfs.ko"), b"x").unwrap();
        assert_eq!(
            image_module_ko(tmp.path(), "6.1.0-1-amd64", "vexfs"),
            Some(img.join("vexfs.ko"))
        );
        let elsewhere = tmp.path().join("m.ko");
        std::fs::write(&elsewhere, b"x").unwrap();
        std::fs::write(
            img.join("manifest.json"),
            serde_json::json!({ "module_host_path": elsewhere }).to_string(),
        )
        .unwrap();
        assert_eq!(
            image_module_ko(tmp.path(), "6.1.0-1-amd64", "vexfs"),
            Some(elsewhere)
        );
        assert_eq!(image_module_ko(tmp.path(), "../etc", "vexfs"), None);
    }
}
