//! What a guest is launched with.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// Everything needed to launch one guest.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// QEMU `-name`.
    pub name: String,
    /// `-kernel`.
    pub kernel: PathBuf,
    /// `-initrd`.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (console and agent port are added when missing).
    pub cmdline: String,
    /// Words appended to the command line.
    pub extra_cmdline: Vec<String>,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Accelerator request.
    pub accel: AccelChoice,
    /// vsock device request.
    pub vsock: VsockChoice,
    /// Guest CID; 0 picks one (3 behind vhost-user, per-run with kernel vhost-vsock).
    pub guest_cid: u32,
    /// The agent's vsock port (also put on the command line when missing).
    pub agent_port: Option<u32>,
    /// Parent of the per-VM run directory (default: the system temp dir). Keep it
    /// short: unix socket paths are limited to 107 bytes.
    pub run_parent: Option<PathBuf>,
    /// Keep the run directory (logs) after the VM is gone.
    pub keep_run_dir: bool,
    /// What a guest panic does.
    pub panic_action: PanicAction,
    /// Add `-device pvpanic-pci`.
    pub pvpanic: bool,
    /// `-no-reboot`: a guest reboot makes QEMU exit.
    pub no_reboot: bool,
    /// QEMU binary.
    pub qemu_binary: PathBuf,
    /// Extra QEMU arguments, appended last.
    pub extra_qemu_args: Vec<String>,
    /// How long the KVM probe boot may take to reach userspace.
    pub probe_timeout: Duration,
    /// Where the probe result is cached (default: the vexfs cache dir).
    pub cache_dir: Option<PathBuf>,
    /// Where the vsock device sits: `RootPort` makes the VM snapshottable (see
    /// [`snapshot`]); the default keeps the plain layout.
    pub vsock_slot: VsockSlot,
    /// virtio-blk disks (see [`disks::fresh_for_test`]); kept across relaunches of
    /// the same config, so a restarted guest sees what the crash left.
    pub disks: Vec<disks::Disk>,
}

impl VmConfig {
    /// Defaults around a kernel and command line: 512 MiB, 1 CPU, auto accel and vsock.
    pub fn new(kernel: impl Into<PathBuf>, cmdline: impl Into<String>) -> Self {
        Self {
            name: "vexfs".into(),
            kernel: kernel.into(),
            initramfs: None,
            cmdline: cmdline.into(),
            extra_cmdline: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            accel: AccelChoice::Auto,
            vsock: VsockChoice::Auto,
            guest_cid: 0,
            agent_port: None,
            run_parent: None,
            keep_run_dir: false,
            panic_action: PanicAction::Pause,
            pvpanic: true,
            no_reboot: false,
            qemu_binary: "qemu-system-x86_64".into(),
            extra_qemu_args: Vec::new(),
            probe_timeout: Duration::from_secs(5),
            cache_dir: None,
            vsock_slot: VsockSlot::Builtin,
            disks: Vec::new(),
        }
    }

    /// A configuration for a cached guest image.
    pub fn from_manifest(m: &Manifest) -> Self {
        let mut c = Self::new(&m.kernel, m.cmdline.clone());
        c.initramfs = Some(m.initramfs.clone());
        c.agent_port = Some(m.agent_port);
        c.name = format!("vexfs-{}", m.kernel_release);
        c
    }
}

/// The agent port the guest will use: `vexfs.agent.port=` on the final command line.
pub(crate) fn cmdline_port(cmdline: &str) -> Option<u32> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("vexfs.agent.port="))
        .next_back()
        .and_then(|p| p.parse().ok())
}
