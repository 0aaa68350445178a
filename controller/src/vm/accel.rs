//! The accelerator: what the user asked for, and whether KVM works here (a short
//! probe boot, cached per host and guest kernel).

use std::path::PathBuf;
use std::str::FromStr;

use super::*;

/// Accelerator request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Always TCG.
    Tcg,
    /// Always KVM.
    Kvm,
    /// KVM when a short probe boot shows it works (cached), else TCG.
    #[default]
    Auto,
}

impl FromStr for AccelChoice {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcg" => Ok(AccelChoice::Tcg),
            "kvm" => Ok(AccelChoice::Kvm),
            "auto" => Ok(AccelChoice::Auto),
            other => Err(VmError::Config(format!(
                "accelerator {other:?} (tcg, kvm, auto)"
            ))),
        }
    }
}

impl AccelChoice {
    /// `$VEXFS_ACCEL` when set and valid, else `Auto`.
    pub fn from_env() -> Self {
        std::env::var(ACCEL_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }
}

/// Host kernel release, part of the probe cache key.
pub(crate) fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// FNV-1a: a hash that stays the same across Rust versions (cache file names).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The probe cache file for this host and guest kernel.
pub fn probe_cache_file(cfg: &VmConfig) -> PathBuf {
    let meta = std::fs::metadata(&cfg.kernel).ok();
    let (size, mtime) = meta
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.size(), m.mtime())
        })
        .unwrap_or_default();
    let key = format!("{}|{}|{size}|{mtime}", host_release(), cfg.kernel.display());
    let cache = cfg.cache_dir.clone().unwrap_or_else(image::cache_dir);
    cache
        .join("accel-probe")
        .join(format!("{:016x}", fnv1a(key.as_bytes())))
}

pub(crate) fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Picks the accelerator: an explicit choice (config, then `$VEXFS_ACCEL` when the
/// config says Auto), else the cached or freshly measured KVM probe result.
pub async fn resolve_accel(cfg: &VmConfig) -> Accel {
    let choice = match cfg.accel {
        AccelChoice::Auto => AccelChoice::from_env(),
        other => other,
    };
    match choice {
        AccelChoice::Tcg => return Accel::Tcg,
        AccelChoice::Kvm => return Accel::Kvm,
        AccelChoice::Auto => {}
    }
    if !kvm_usable() {
        return Accel::Tcg;
    }
    let cache = probe_cache_file(cfg);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        match text.trim() {
            "kvm" => return Accel::Kvm,
            "tcg" => return Accel::Tcg,
            _ => {}
        }
    }
    let accel = probe_kvm(cfg).await;
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&cache, accel.as_str()) {
        tracing::warn!(error = %e, "accel probe result not cached");
    }
    accel
}

/// Boots `cfg`'s kernel under KVM without vsock and reports KVM only when the guest
/// reaches userspace within `probe_timeout` without a `KVM internal error`.
pub async fn probe_kvm(cfg: &VmConfig) -> Accel {
    let mut probe = cfg.clone();
    probe.vsock = VsockChoice::None;
    probe.no_reboot = true;
    probe.keep_run_dir = false;
    probe.panic_action = PanicAction::ExitFailure;
    // "Run /init as init process" is KERN_INFO: make it reach the console.
    probe.extra_cmdline.push("loglevel=7".into());
    let start = Instant::now();
    let vm = match Vm::launch_with(&probe, Accel::Kvm).await {
        Ok(vm) => vm,
        Err(e) => {
            tracing::info!(error = %e, "kvm probe: launch failed; using tcg");
            return Accel::Tcg;
        }
    };
    let seen = vm
        .wait_for_console(probe.probe_timeout, |l| {
            l.text.contains("KVM internal error") || INIT_MARKERS.iter().any(|m| l.text.contains(m))
        })
        .await;
    let accel = match seen {
        Ok(Some(line)) if !line.text.contains("KVM internal error") => Accel::Kvm,
        Ok(Some(line)) => {
            tracing::info!(line = %line.text, "kvm probe failed");
            Accel::Tcg
        }
        Ok(None) => {
            tracing::info!(timeout = ?probe.probe_timeout, "kvm probe: no userspace in time");
            Accel::Tcg
        }
        Err(e) => {
            tracing::info!(error = %e, "kvm probe: qemu exited");
            Accel::Tcg
        }
    };
    vm.kill();
    tracing::info!(accel = accel.as_str(), elapsed = ?start.elapsed(), "kvm probe done");
    accel
}
