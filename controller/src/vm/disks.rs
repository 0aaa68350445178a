//! virtio-blk disks for a guest (`[[guest.disks]]`): raw files in the run folder, made
//! fresh for each test and kept attached across that test's VM restarts (the same
//! [`Disk`] list stays in the `VmConfig`), so a restarted guest sees the disk as the
//! crash left it. The guest agent links each as `/dev/disk/by-name/NAME` from its
//! virtio serial.

use std::path::{Path, PathBuf};

use crate::plan::DiskSpec;

/// Disk preparation failures.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The starting image is not there.
    #[error("disk {name}: image {path} does not exist (an image is relative to the plan file)")]
    ImageMissing {
        /// The disk.
        name: String,
        /// The image looked for.
        path: PathBuf,
    },
    /// Creating or copying the file failed.
    #[error("disk {name}: {what}: {source}")]
    Io {
        /// The disk.
        name: String,
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One attached disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Name, also the virtio serial.
    pub name: String,
    /// The raw file on the host.
    pub path: PathBuf,
}

/// A file name made of safe characters (test names may hold spaces and such).
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Fresh disk files for one test in `<run_dir>/disks/<test>/<name>.img`: empty sparse
/// files of `size_mib`, or a copy of `image` grown to `size_mib`. Files left by an
/// earlier attempt of the same test are replaced.
pub fn fresh_for_test(
    run_dir: &Path,
    test: &str,
    specs: &[DiskSpec],
    plan_dir: &Path,
) -> Result<Vec<Disk>, DiskError> {
    let dir = run_dir.join("disks").join(safe(test));
    specs
        .iter()
        .map(|s| {
            let io = |what: &str| {
                let (name, what) = (s.name.clone(), what.to_string());
                move |source| DiskError::Io { name, what, source }
            };
            std::fs::create_dir_all(&dir).map_err(io("create folder"))?;
            let path = dir.join(format!("{}.img", s.name));
            let _ = std::fs::remove_file(&path);
            if let Some(image) = &s.image {
                let src = crate::build::tools::resolve(plan_dir, image);
                if !src.is_file() {
                    return Err(DiskError::ImageMissing {
                        name: s.name.clone(),
                        path: src,
                    });
                }
                std::fs::copy(&src, &path).map_err(io("copy the image"))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io("create"))?;
            let want = s.size_mib << 20;
            let have = f.metadata().map_err(io("stat"))?.len();
            if want > have {
                f.set_len(want).map_err(io("set size"))?;
            }
            Ok(Disk {
                name: s.name.clone(),
                path,
            })
        })
        .collect()
}

/// QEMU option values escape `,` by doubling it.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The QEMU arguments attaching `disks` as virtio-blk devices with their names as
/// serials.
pub fn qemu_args(disks: &[Disk]) -> Vec<String> {
    let mut a = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "file={},if=none,format=raw,id=disk{i}",
            qemu_escape(&d.path.to_string_lossy())
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-blk-pci,drive=disk{i},serial={}",
            qemu_escape(&d.name)
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, size_mib: u64, image: Option<&str>) -> DiskSpec {
        DiskSpec {
            name: name.into(),
            size_mib,
            image: image.map(Into::into),
        }
    }

    #[test]
    fn disks_are_fresh_per_test_and_start_from_images() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("seed.img"), b"SEED").unwrap();
        let specs = [spec("data", 4, None), spec("seeded", 1, Some("seed.img"))];
        let disks = fresh_for_test(d.path(), "my test/1", &specs, d.path()).unwrap();
        assert_eq!(disks[0].path, d.path().join("disks/my_test_1/data.img"));
        assert_eq!(std::fs::metadata(&disks[0].path).unwrap().len(), 4 << 20);
        let seeded = std::fs::read(&disks[1].path).unwrap();
        assert_eq!(seeded.len(), 1 << 20);
        assert_eq!(&seeded[..4], b"SEED");
        // What a test wrote is gone for the next attempt.
        std::fs::write(&disks[0].path, b"dirty").unwrap();
        let again = fresh_for_test(d.path(), "my test/1", &specs, d.path()).unwrap();
        assert_eq!(again, disks);
        let data = std::fs::read(&again[0].path).unwrap();
        assert_eq!(data.len(), 4 << 20);
        assert!(data.iter().all(|&b| b == 0));
        let e =
            fresh_for_test(d.path(), "t", &[spec("x", 1, Some("none.img"))], d.path()).unwrap_err();
        assert!(e.to_string().contains("none.img does not exist"), "{e}");
    }

    #[test]
    fn qemu_args_attach_by_serial() {
        let disks = [Disk {
            name: "data".into(),
            path: "/run/a,b/data.img".into(),
        }];
        assert_eq!(
            qemu_args(&disks),
            [
                "-drive",
                "file=/run/a,,b/data.img,if=none,format=raw,id=disk0",
                "-device",
                "virtio-blk-pci,drive=disk0,serial=data"
            ]
        );
    }
}
