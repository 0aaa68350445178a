//! Kernels beyond Debian's packages: a kernel selector names a Debian release
//! (`6.12.117+deb12-amd64`, `latest-6.1`), a debug or guest kernel built from Debian's
//! linux-source (`debug-6.12`, `guest-6.1`; guest-image/build-kernel.sh) or a built
//! kernel tree (`/path/to/linux`). The last two get their guest image made from the
//! tree (guest-image/build-image.sh TREE) when missing, so the runner finds them like
//! any other image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::guest_image_dir;
use crate::plan::KernelConfig;
use crate::vm::image::{Manifest, read_manifest};

/// Why a kernel could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The selector names no kernel this harness can build.
    #[error("{0}")]
    BadSelector(String),
    /// A script could not be started.
    #[error("cannot run {script}: {source}")]
    Spawn {
        /// The script.
        script: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A script failed; `message` is the end of what it said.
    #[error("{script} failed:\n{message}")]
    Script {
        /// The script and its argument.
        script: String,
        /// Its last lines of output.
        message: String,
    },
    /// The image was built but its manifest is unreadable.
    #[error(transparent)]
    Manifest(#[from] crate::vm::image::ImageError),
}

/// Which fragments a built kernel gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltKind {
    /// guest.config + debug.config (KASAN, lockdep, kmemleak, fault injection, ...).
    Debug,
    /// guest.config only.
    Guest,
}

/// Debian's linux-source series a kernel is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// linux-source-6.1 (bookworm).
    V6_1,
    /// linux-source-6.12 (bookworm backports / security).
    V6_12,
}

/// What a `--kernel` value (or a plan's `kernels` entry) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSelector {
    /// A Debian kernel: release, prefix or `latest-SERIES` (images as before).
    Debian(String),
    /// A kernel built by guest-image/build-kernel.sh.
    Built(BuiltKind, Series),
    /// A kernel build tree.
    Tree(PathBuf),
}

impl KernelSelector {
    /// Parses a selector: a path (holds `/` or starts with `.`) is a tree,
    /// `debug-`/`guest-` + series a built kernel, anything else a Debian selector.
    pub fn parse(s: &str) -> Result<Self, KernelError> {
        if s.contains('/') || s.starts_with('.') {
            return Ok(KernelSelector::Tree(PathBuf::from(s)));
        }
        let kind = match s.split_once('-') {
            Some(("debug", rest)) => Some((BuiltKind::Debug, rest)),
            Some(("guest", rest)) => Some((BuiltKind::Guest, rest)),
            _ => None,
        };
        let Some((kind, series)) = kind else {
            return Ok(KernelSelector::Debian(s.to_string()));
        };
        let series = match series {
            "6.1" => Series::V6_1,
            "6.12" => Series::V6_12,
            other => {
                return Err(KernelError::BadSelector(format!(
                    "kernel {s:?}: no linux-source series {other:?} (debug-6.12, debug-6.1, guest-6.12, guest-6.1)"
                )));
            }
        };
        Ok(KernelSelector::Built(kind, series))
    }

    /// The build-kernel.sh name of a built kernel (`debug-6.12`).
    pub fn build_name(&self) -> Option<String> {
        let KernelSelector::Built(kind, series) = self else {
            return None;
        };
        let kind = match kind {
            BuiltKind::Debug => "debug",
            BuiltKind::Guest => "guest",
        };
        let series = match series {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        };
        Some(format!("{kind}-{series}"))
    }
}

/// Makes the kernel `selector` names ready and returns what to look its image up by:
/// a Debian selector unchanged; for a built kernel or a tree, the release of the image
/// made in `images_dir` (building the kernel first when it is not cached: that can
/// take long, its progress goes to stderr).
pub fn prepare(selector: &str, cache: &Path, images_dir: &Path) -> Result<String, KernelError> {
    let tree = match KernelSelector::parse(selector)? {
        KernelSelector::Debian(s) => return Ok(s),
        KernelSelector::Tree(p) => p,
        sel @ KernelSelector::Built(..) => {
            let name = sel.build_name().unwrap_or_default();
            let out = script("build-kernel.sh", &[name.as_str()], cache, true)?;
            PathBuf::from(out)
        }
    };
    if !tree.is_dir() {
        return Err(KernelError::BadSelector(format!(
            "kernel tree {}: no such folder",
            tree.display()
        )));
    }
    let release = std::fs::read_to_string(tree.join("include/config/kernel.release"))
        .map(|s| s.trim().to_string())
        .map_err(|e| KernelError::Script {
            script: format!("kernel tree {}", tree.display()),
            message: format!("not built: include/config/kernel.release: {e}"),
        })?;
    let out_dir = images_dir.join(&release);
    let mut args = vec!["-q".to_string(), "--out".to_string()];
    args.push(out_dir.display().to_string());
    args.push(tree.display().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    script("build-image.sh", &refs, cache, false)?;
    Ok(read_manifest(&out_dir.join("manifest.json"))?.kernel_release)
}

/// Runs a guest-image script; returns its last stdout line. With `progress` its
/// stderr goes to ours as it comes (a kernel build talks for minutes).
fn script(name: &str, args: &[&str], cache: &Path, progress: bool) -> Result<String, KernelError> {
    let what = format!("guest-image/{name} {}", args.last().copied().unwrap_or(""));
    let done = Command::new(guest_image_dir().join(name))
        .args(args)
        .env("VEXFS_CACHE", cache)
        .stdin(Stdio::null())
        .stderr(if progress {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .output()
        .map_err(|source| KernelError::Spawn {
            script: what.clone(),
            source,
        })?;
    if !done.status.success() {
        return Err(KernelError::Script {
            script: what,
            message: super::stderr_tail(&done.stderr),
        });
    }
    let out = String::from_utf8_lossy(&done.stdout);
    Ok(out.lines().last().unwrap_or("").trim().to_string())
}

/// The kernel config an image recorded (`kernel.config` beside its initramfs), or
/// `None` for an image built before configs were kept.
pub fn image_config(m: &Manifest) -> Option<KernelConfig> {
    let path = m.initramfs.parent()?.join("kernel.config");
    std::fs::read_to_string(path)
        .ok()
        .map(|t| KernelConfig::parse(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_name_trees_built_and_debian_kernels() {
        use KernelSelector::*;
        let p = |s: &str| KernelSelector::parse(s).unwrap();
        assert_eq!(p("debug-6.12"), Built(BuiltKind::Debug, Series::V6_12));
        assert_eq!(p("guest-6.1"), Built(BuiltKind::Guest, Series::V6_1));
        assert_eq!(p("debug-6.12").build_name().unwrap(), "debug-6.12");
        assert_eq!(p("guest-6.1").build_name().unwrap(), "guest-6.1");
        assert_eq!(p("/src/linux"), Tree("/src/linux".into()));
        assert_eq!(p("./linux"), Tree("./linux".into()));
        assert_eq!(p("linux/"), Tree("linux/".into()));
        for d in [
            "latest-6.12",
            "6.1",
            "6.12.117+deb12-amd64",
            "linux-image-6.1.0-57-amd64",
        ] {
            assert_eq!(p(d), Debian(d.into()));
            assert_eq!(p(d).build_name(), None);
        }
        let e = KernelSelector::parse("debug-5.10").unwrap_err().to_string();
        assert!(e.contains("debug-6.12") && e.contains("5.10"), "{e}");
    }

    #[test]
    fn debian_selectors_pass_through_and_bad_trees_are_named() {
        let cache = Path::new("/nonexistent-cache");
        assert_eq!(prepare("latest-6.1", cache, cache).unwrap(), "latest-6.1");
        let e = prepare("/nonexistent/linux", cache, cache)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/linux") && e.contains("no such folder"),
            "{e}"
        );
        let tmp = std::env::temp_dir();
        let e = prepare(tmp.to_str().unwrap(), cache, cache)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not built"), "{e}");
    }

    #[test]
    fn image_config_is_read_beside_the_initramfs() {
        let dir = std::env::temp_dir().join(format!("vexfs-kcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Manifest {
            kernel_release: "6.12.117-vexfs-debug".into(),
            package: String::new(),
            kernel: dir.join("vmlinux"),
            kernel_format: crate::vm::image::KernelFormat::Elf,
            initramfs: dir.join("initramfs.cpio.gz"),
            module_path_in_guest: String::new(),
            module_name: String::new(),
            kfence: true,
            cmdline: String::new(),
            agent_port: 5000,
        };
        assert_eq!(image_config(&m), None);
        std::fs::write(dir.join("kernel.config"), "CONFIG_KASAN=y\n").unwrap();
        let c = image_config(&m).unwrap();
        assert!(c.has(&crate::plan::ConfigOption::new("CONFIG_KASAN").unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake tree, complete except for what `files` leaves out, with `config`.
    fn fake_tree(tag: &str, files: &[&str], config: &str) -> PathBuf {
        let t = std::env::temp_dir().join(format!("vexfs-tree-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        for f in files {
            let p = t.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        std::fs::create_dir_all(t.join("include/config")).unwrap();
        std::fs::write(t.join("include/config/kernel.release"), "6.12.0-fake\n").unwrap();
        std::fs::write(t.join(".config"), config).unwrap();
        t
    }

    #[test]
    fn build_image_names_what_a_tree_lacks() {
        let cache = std::env::temp_dir().join(format!("vexfs-tree-cache-{}", std::process::id()));
        let unbuilt = fake_tree(
            "unbuilt",
            &["Makefile", "Module.symvers"],
            "CONFIG_MODULES=y\n",
        );
        let e = prepare(unbuilt.to_str().unwrap(), &cache, &cache)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not built: no arch/x86/boot/bzImage"), "{e}");
        let bare = fake_tree(
            "bare",
            &["Makefile", "Module.symvers", "arch/x86/boot/bzImage"],
            "CONFIG_MODULES=y\nCONFIG_VIRTIO_PCI=m\nCONFIG_VSOCKETS=y\n",
        );
        let e = prepare(bare.to_str().unwrap(), &cache, &cache)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lacks what the guest needs"), "{e}");
        for o in [
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_PVPANIC_PCI",
            "CONFIG_BLK_DEV_INITRD=y",
        ] {
            assert!(e.contains(o), "{o} not named in {e}");
        }
        assert!(
            !e.contains("CONFIG_VIRTIO_PCI ") && !e.contains("CONFIG_VSOCKETS "),
            "{e}"
        );
        for d in [unbuilt, bare, cache] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
