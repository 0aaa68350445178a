//! Guest images in the cache (`<cache>/images/<kernel-release>/manifest.json`), as
//! written by the image build: parsing and choosing one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Image lookup failures.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading a manifest or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is not valid JSON of the expected shape.
    #[error("{path}: bad manifest: {source}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// No image matches.
    #[error("no guest image {wanted} in {dir} (build one with scripts/setup.sh)")]
    NotFound {
        /// What was asked for.
        wanted: String,
        /// Where we looked.
        dir: PathBuf,
    },
}

/// How the kernel file is packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    /// Uncompressed vmlinux booted through PVH.
    Elf,
    /// Compressed bzImage.
    Bzimage,
}

/// `manifest.json` of one guest image (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Debian package it came from.
    #[serde(default)]
    pub package: String,
    /// Absolute path for `-kernel`.
    pub kernel: PathBuf,
    /// Kernel packaging.
    #[serde(default = "default_format")]
    pub kernel_format: KernelFormat,
    /// Absolute path for `-initrd`.
    pub initramfs: PathBuf,
    /// Where the test module sits inside the guest.
    #[serde(default)]
    pub module_path_in_guest: String,
    /// The test module's name.
    #[serde(default)]
    pub module_name: String,
    /// Whether KFENCE is available.
    #[serde(default)]
    pub kfence: bool,
    /// Recommended kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// vsock port the agent listens on.
    #[serde(default = "default_port")]
    pub agent_port: u32,
}

fn default_format() -> KernelFormat {
    KernelFormat::Bzimage
}

fn default_port() -> u32 {
    5000
}

/// The cache root: `$VEXFS_CACHE`, else `$XDG_CACHE_HOME/vexfs`, else `~/.cache/vexfs`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("VEXFS_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("vexfs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/vexfs")
}

/// The default images directory, `<cache>/images`.
pub fn default_images_dir() -> PathBuf {
    cache_dir().join("images")
}

/// Reads one manifest.
pub fn read_manifest(path: &Path) -> Result<Manifest, ImageError> {
    let text = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ImageError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Every image under `images_dir` with a readable manifest; broken ones are logged
/// and skipped.
pub fn list_images(images_dir: &Path) -> Result<Vec<Manifest>, ImageError> {
    let entries = std::fs::read_dir(images_dir).map_err(|source| ImageError::Io {
        path: images_dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("manifest.json");
        if !path.is_file() {
            continue;
        }
        match read_manifest(&path) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(error = %e, "skipping image"),
        }
    }
    out.sort_by_key(|m| version_key(&m.kernel_release));
    Ok(out)
}

/// Numeric components of a kernel release, for ordering ("6.12.117+deb12-amd64" ->
/// [6, 12, 117, 12]).
pub fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Whether `release` matches the user's `wanted` ("6.12", "6.1.0-57", or the full
/// release): equal, or a prefix ending at a component boundary.
pub fn release_matches(release: &str, wanted: &str) -> bool {
    release == wanted
        || release
            .strip_prefix(wanted)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| matches!(c, '.' | '-' | '+'))
}

/// Picks an image: the newest matching `wanted`, or when `None` the newest 6.12 (or
/// the newest of all when there is no 6.12).
pub fn select_image(images_dir: &Path, wanted: Option<&str>) -> Result<Manifest, ImageError> {
    let images = list_images(images_dir)?;
    let pick = |w: &str| {
        images
            .iter()
            .rev()
            .find(|m| release_matches(&m.kernel_release, w))
            .cloned()
    };
    let found = match wanted {
        Some(w) => pick(w),
        None => pick("6.12").or_else(|| images.last().cloned()),
    };
    found.ok_or_else(|| ImageError::NotFound {
        wanted: wanted.unwrap_or("(newest 6.12)").to_string(),
        dir: images_dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, release: &str) {
        let d = dir.join(release);
        std::fs::create_dir_all(&d).unwrap();
        let m = serde_json::json!({
            "kernel_release": release, "package": format!("linux-image-{release}"),
            "kernel": format!("/c/{release}/vmlinux"), "kernel_format": "elf",
            "initramfs": format!("/c/{release}/initramfs.cpio.gz"),
            "module_path_in_guest": "/lib/modules/vexfs/vexfs.ko", "module_name": "vexfs",
            "kfence": true, "cmdline": "console=ttyS0", "agent_port": 5000, "future_field": [1]
        });
        std::fs::write(d.join("manifest.json"), m.to_string()).unwrap();
    }

    #[test]
    fn selects_newest_612_by_default_and_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for r in [
            "6.1.0-57-amd64",
            "6.12.9+deb12-amd64",
            "6.12.117+deb12-amd64",
            "6.1.0-9-amd64",
        ] {
            write(dir.path(), r);
        }
        std::fs::create_dir(dir.path().join("broken")).unwrap();
        std::fs::write(dir.path().join("broken/manifest.json"), "{").unwrap();
        let m = select_image(dir.path(), None).unwrap();
        assert_eq!(m.kernel_release, "6.12.117+deb12-amd64");
        assert_eq!(m.kernel_format, KernelFormat::Elf);
        assert!(m.kfence);
        assert_eq!(
            select_image(dir.path(), Some("6.1"))
                .unwrap()
                .kernel_release,
            "6.1.0-57-amd64"
        );
        assert_eq!(
            select_image(dir.path(), Some("6.12.9"))
                .unwrap()
                .kernel_release,
            "6.12.9+deb12-amd64"
        );
        assert!(matches!(
            select_image(dir.path(), Some("5.10")),
            Err(ImageError::NotFound { .. })
        ));
    }

    #[test]
    fn release_prefix_stops_at_boundaries() {
        assert!(release_matches("6.12.117+deb12-amd64", "6.12"));
        assert!(!release_matches("6.12.117+deb12-amd64", "6.1"));
        assert!(release_matches("6.1.0-57-amd64", "6.1"));
        assert!(release_matches("6.1.0-57-amd64", "6.1.0-57-amd64"));
    }
}
