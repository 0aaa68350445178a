//! The `[guest]` section: VM size, command line, tools, kernel modules and disks.

use serde::{Deserialize, Serialize};

#[allow(unused_imports)]
use super::*;

/// Guest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// RAM, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Extra kernel command line words.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Agent silence (s) after which the guest is judged hung.
    #[serde(default = "default_silence")]
    pub silence_s: u64,
    /// Userland programs put into the image (`[[guest.tools]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Extra modules from the kernel package (dependencies resolved), loaded at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<String>,
    /// virtio-blk disks (`[[guest.disks]]`), fresh for each test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// When tests get a brand-new VM (restored from the booted snapshot).
    #[serde(default)]
    pub fresh_vm: FreshVm,
    /// Restart guests from a booted snapshot (`true`, the default) or always cold
    /// boot them (`false`).
    #[serde(default = "default_snapshot")]
    pub snapshot: bool,
}

/// When tests get a brand-new VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreshVm {
    /// Only when recovery restarts the guest (`"on_crash"`, the default).
    #[default]
    OnCrash,
    /// Before every test (`"per_test"`): no state carried between tests.
    PerTest,
}

pub(super) fn default_memory() -> u32 {
    512
}
pub(super) fn default_cpus() -> u32 {
    1
}
pub(super) fn default_silence() -> u64 {
    10
}
pub(super) fn default_snapshot() -> bool {
    true
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            memory_mib: default_memory(),
            cpus: default_cpus(),
            cmdline: Vec::new(),
            silence_s: default_silence(),
            tools: Vec::new(),
            kernel_modules: Vec::new(),
            disks: Vec::new(),
            fresh_vm: FreshVm::default(),
            snapshot: default_snapshot(),
        }
    }
}

/// Where a guest tool comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOrigin {
    /// A C file (relative to the plan) built static on the host with gcc.
    Source(String),
    /// A host executable, copied with the shared libraries it needs.
    Binary(String),
}

/// A userland program in the guest image: `{ source = "mkfs.x.c", path = "/sbin/mkfs.x" }`
/// or `{ binary = "/sbin/mkfs.minix" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTool")]
pub struct ToolSpec {
    /// Source file or host binary.
    #[serde(flatten)]
    pub origin: ToolOrigin,
    /// Absolute path in the guest (default: the host path of a binary, or
    /// `/sbin/<file stem>` for a source).
    pub path: String,
    /// Extra gcc flags for a source tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cflags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    source: Option<String>,
    binary: Option<String>,
    path: Option<String>,
    #[serde(default)]
    cflags: Vec<String>,
}

impl TryFrom<RawTool> for ToolSpec {
    type Error = String;
    fn try_from(r: RawTool) -> Result<Self, String> {
        let origin = match (r.source, r.binary) {
            (Some(s), None) => ToolOrigin::Source(s),
            (None, Some(b)) => ToolOrigin::Binary(b),
            _ => return Err("a guest tool needs exactly one of `source` or `binary`".into()),
        };
        if !r.cflags.is_empty() && matches!(origin, ToolOrigin::Binary(_)) {
            return Err("`cflags` only apply to a tool built from `source`".into());
        }
        let path = match (r.path, &origin) {
            (Some(p), _) => p,
            (None, ToolOrigin::Binary(b)) => b.clone(),
            (None, ToolOrigin::Source(s)) => {
                let stem = Path::new(s).file_stem().and_then(|f| f.to_str());
                format!("/sbin/{}", stem.unwrap_or(s))
            }
        };
        if !path.starts_with('/') || path.ends_with('/') || path.contains("/../") {
            return Err(format!(
                "guest tool path {path:?} must be an absolute file path"
            ));
        }
        Ok(ToolSpec {
            origin,
            path,
            cflags: r.cflags,
        })
    }
}

/// A virtio-blk disk: `{ name = "data", size_mib = 64 }`, optionally starting from a
/// raw `image` (relative to the plan). The guest sees it as `/dev/disk/by-name/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawDisk")]
pub struct DiskSpec {
    /// Name: the virtio serial, 1-20 characters of `[A-Za-z0-9_-]`.
    pub name: String,
    /// Size, MiB (an `image` is grown to it when smaller); 0 keeps the image's size.
    pub size_mib: u64,
    /// A raw image the disk starts from, copied fresh for each test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: String,
    #[serde(default)]
    size_mib: u64,
    image: Option<String>,
}

/// Longest virtio-blk serial the guest sees (VIRTIO_BLK_ID_BYTES).
pub const DISK_NAME_MAX: usize = 20;

impl TryFrom<RawDisk> for DiskSpec {
    type Error = String;
    fn try_from(r: RawDisk) -> Result<Self, String> {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if r.name.is_empty() || r.name.len() > DISK_NAME_MAX || !r.name.chars().all(ok) {
            return Err(format!(
                "disk name {:?} must be 1-{DISK_NAME_MAX} characters of A-Z a-z 0-9 - _ (it is the virtio serial)",
                r.name
            ));
        }
        if r.size_mib == 0 && r.image.is_none() {
            return Err(format!(
                "disk {:?} needs size_mib above zero or an image",
                r.name
            ));
        }
        if r.size_mib > 1 << 20 {
            return Err(format!(
                "disk {:?}: size_mib {} is over 1 TiB",
                r.name, r.size_mib
            ));
        }
        Ok(DiskSpec {
            name: r.name,
            size_mib: r.size_mib,
            image: r.image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_default_on_and_can_be_turned_off() {
        let test = "[[test]]\nname = \"a\"\nsteps = [\"load\"]\n";
        let p = parse(&format!("name = \"x\"\n{test}"), "p.toml").unwrap();
        assert!(p.guest.snapshot);
        let text = format!("name = \"x\"\n[guest]\nsnapshot = false\n{test}");
        assert!(!parse(&text, "p.toml").unwrap().guest.snapshot);
        let text = format!("name = \"x\"\n[guest]\nsnapshot = \"no\"\n{test}");
        let e = parse(&text, "p.toml").unwrap_err();
        assert!(matches!(e, Error::Parse { line: 3, .. }), "{e}");
    }
}
