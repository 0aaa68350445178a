//! Run directories: one per VM, unique, and cleaned of those whose controller died.

use std::path::{Path, PathBuf};

use super::*;

/// Removes run dirs (`vexfs-vm-<pid>-...`) left by controllers that died without
/// cleaning up (SIGKILL): their pid no longer exists. Their QEMUs died with them
/// (PDEATHSIG), so only files remain.
pub(crate) fn remove_stale_run_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vexfs-vm-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::debug!(dir = %entry.path().display(), "removing stale run dir");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) fn unique_run_dir(parent: &Path) -> Result<PathBuf, VmError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(parent).map_err(|source| VmError::Io {
        what: format!("create {}", parent.display()),
        source,
    })?;
    remove_stale_run_dirs(parent);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = parent.join(format!("vexfs-vm-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(VmError::Io {
                    what: format!("create {}", dir.display()),
                    source,
                });
            }
        }
    }
}
