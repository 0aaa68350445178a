//! Guest memory dumps (vmcores) through QMP `dump-guest-memory`, taken while a
//! panicked guest is paused (`-action panic=pause`, the default) and before the VM is
//! killed. The dump is kdump-compressed (zero pages dropped, each page compressed), so
//! `makedumpfile --dump-dmesg` and `crash` read it; `-device vmcoreinfo` plus the
//! guest's `qemu_fw_cfg` driver put the kernel's VMCOREINFO note in it. Bounded in time
//! (the QMP call's deadline) and size (free space checked first, an oversized result
//! removed), written to a temporary name and renamed, so a failed dump leaves nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::qmp::{Qmp, QmpError};

/// File name of the dump in a crash's artifacts folder.
pub const VMCORE: &str = "vmcore";

/// Dump failures.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// QMP failed (including the time bound: [`QmpError::Timeout`]).
    #[error("dump-guest-memory: {0}")]
    Qmp(#[from] QmpError),
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not enough free space for the worst case (an incompressible guest).
    #[error(
        "{dir}: {free} bytes free, a dump may need {need}: not dumping (the disk is nearly full)"
    )]
    NoSpace {
        /// The target folder.
        dir: PathBuf,
        /// Bytes available.
        free: u64,
        /// Bytes a dump may need.
        need: u64,
    },
    /// The dump came out larger than the limit and was removed.
    #[error("the dump was {bytes} bytes, over the {limit}-byte limit: removed")]
    TooBig {
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// QEMU offers no format the tools read.
    #[error("QEMU offers no kdump or ELF dump format (has {0:?})")]
    NoFormat(Vec<String>),
    /// QEMU is not running (or its QMP does not answer): there is no memory to dump.
    #[error("no running QEMU to dump: {0}")]
    NoVm(String),
}

/// Dump file formats, in order of preference (fast compression first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DumpFormat {
    /// kdump-compressed, LZO pages.
    KdumpLzo,
    /// kdump-compressed, snappy pages.
    KdumpSnappy,
    /// kdump-compressed, zlib pages (always built into QEMU).
    KdumpZlib,
    /// Plain ELF core (as large as guest RAM).
    Elf,
}

impl DumpFormat {
    /// All, preferred first.
    pub const PREFERENCE: [DumpFormat; 4] = [
        DumpFormat::KdumpLzo,
        DumpFormat::KdumpSnappy,
        DumpFormat::KdumpZlib,
        DumpFormat::Elf,
    ];

    /// The QMP `format` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DumpFormat::KdumpLzo => "kdump-lzo",
            DumpFormat::KdumpSnappy => "kdump-snappy",
            DumpFormat::KdumpZlib => "kdump-zlib",
            DumpFormat::Elf => "elf",
        }
    }

    /// The preferred format among QEMU's `query-dump-guest-memory-capability` list.
    pub fn choose(offered: &[String]) -> Option<DumpFormat> {
        Self::PREFERENCE
            .into_iter()
            .find(|f| offered.iter().any(|o| o == f.as_str()))
    }
}

/// Bounds of one dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpLimits {
    /// Longest the dump may take.
    pub time: Duration,
    /// Largest dump kept.
    pub max_bytes: u64,
}

impl Default for DumpLimits {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(60),
            max_bytes: 1 << 30,
        }
    }
}

/// A dump on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dump {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: DumpFormat,
    /// Its size.
    pub bytes: u64,
    /// Time the dump took.
    pub duration: Duration,
}

/// Bytes a dump of `ram_mib` of guest RAM may need at worst: every page plus headers.
pub fn worst_case_bytes(ram_mib: u32) -> u64 {
    u64::from(ram_mib) * 1024 * 1024 + 16 * 1024 * 1024
}

/// Whether a dump may be attempted into a folder with `free` bytes available.
pub fn check_space(
    dir: &Path,
    free: u64,
    ram_mib: u32,
    limits: &DumpLimits,
) -> Result<(), DumpError> {
    let need = worst_case_bytes(ram_mib).min(limits.max_bytes);
    if free < need {
        return Err(DumpError::NoSpace {
            dir: dir.to_path_buf(),
            free,
            need,
        });
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> Result<u64, DumpError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| DumpError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    Ok(st.blocks_available() * st.fragment_size())
}

/// The formats QEMU can write.
pub async fn formats(qmp: &Qmp) -> Result<Vec<String>, QmpError> {
    let v = qmp
        .execute("query-dump-guest-memory-capability", None)
        .await?;
    Ok(v.get("formats")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Dumps the guest's memory into `dir/vmcore` (the guest may be paused or running;
/// QEMU stops it for the dump). `ram_mib` is the guest's RAM, for the space check.
pub async fn capture(
    qmp: &Qmp,
    dir: &Path,
    ram_mib: u32,
    limits: DumpLimits,
) -> Result<Dump, DumpError> {
    let started = Instant::now();
    prepare(dir, ram_mib, &limits)?;
    let offered = formats(qmp).await?;
    let format = DumpFormat::choose(&offered).ok_or(DumpError::NoFormat(offered))?;
    capture_as(qmp, dir, format, limits, started).await
}

/// [`capture`] in a given format. ELF is what `makedumpfile --dump-dmesg` reads
/// (version 1.7.2 refuses kdump-compressed input) and what `makedumpfile -c -d 31`
/// turns into a small filtered kdump file.
pub async fn capture_in(
    qmp: &Qmp,
    dir: &Path,
    ram_mib: u32,
    format: DumpFormat,
    limits: DumpLimits,
) -> Result<Dump, DumpError> {
    let started = Instant::now();
    prepare(dir, ram_mib, &limits)?;
    capture_as(qmp, dir, format, limits, started).await
}

/// Creates the dump's folder and checks it has room for the worst case.
fn prepare(dir: &Path, ram_mib: u32, limits: &DumpLimits) -> Result<(), DumpError> {
    std::fs::create_dir_all(dir).map_err(|source| DumpError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    check_space(dir, free_bytes(dir)?, ram_mib, limits)
}

async fn capture_as(
    qmp: &Qmp,
    dir: &Path,
    format: DumpFormat,
    limits: DumpLimits,
    started: Instant,
) -> Result<Dump, DumpError> {
    let path = dir.join(VMCORE);
    let tmp = dir.join(format!("{VMCORE}.partial"));
    let _ = std::fs::remove_file(&tmp);
    let args = json!({
        "paging": false,
        "protocol": format!("file:{}", tmp.display()),
        "detach": false,
        "format": format.as_str(),
    });
    let left = limits.time.saturating_sub(started.elapsed());
    if let Err(e) = qmp
        .execute_timeout("dump-guest-memory", Some(args), left)
        .await
    {
        // QEMU may still be writing: unlinking leaves it a file nobody sees.
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let bytes = std::fs::metadata(&tmp)
        .map_err(|source| DumpError::Io {
            path: tmp.clone(),
            source,
        })?
        .len();
    if bytes > limits.max_bytes {
        let _ = std::fs::remove_file(&tmp);
        return Err(DumpError::TooBig {
            bytes,
            limit: limits.max_bytes,
        });
    }
    std::fs::rename(&tmp, &path).map_err(|source| DumpError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Dump {
        path,
        format,
        bytes,
        duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_fast_kdump_formats() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            DumpFormat::choose(&s(&["elf", "kdump-zlib", "kdump-lzo", "win-dmp"])),
            Some(DumpFormat::KdumpLzo)
        );
        assert_eq!(
            DumpFormat::choose(&s(&["elf", "kdump-zlib"])),
            Some(DumpFormat::KdumpZlib)
        );
        assert_eq!(DumpFormat::choose(&s(&["win-dmp"])), None);
    }

    #[test]
    fn space_check_uses_the_worst_case_capped_by_the_limit() {
        let l = DumpLimits::default();
        let dir = Path::new("/x");
        assert!(check_space(dir, 600 << 20, 512, &l).is_ok());
        let e = check_space(dir, 100 << 20, 512, &l).unwrap_err();
        assert!(e.to_string().contains("nearly full"), "{e}");
        let small = DumpLimits {
            max_bytes: 64 << 20,
            ..l
        };
        assert!(check_space(dir, 100 << 20, 512, &small).is_ok());
    }
}
