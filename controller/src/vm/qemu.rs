//! The QEMU command line, built from a [`VmConfig`](super::VmConfig) as plain data so
//! it can be unit-tested. No network, no display, serial console on stdio (a pipe the
//! controller reads), QMP on a unix socket, pvpanic, and the vsock device.

use std::ffi::OsString;
use std::path::Path;

use super::VmConfig;
use super::vsock_backend::VsockPlan;

/// Accelerator actually used for a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl Accel {
    /// The `-accel` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// What QEMU does when the guest panics (pvpanic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanicAction {
    /// Pause the guest: QMP reports GUEST_PANICKED, state stays inspectable.
    #[default]
    Pause,
    /// QEMU exits with status 1.
    ExitFailure,
    /// Shut the guest down (QEMU exits unless `-no-shutdown`).
    Shutdown,
    /// Let the guest do what its kernel says (reboot or halt).
    None,
}

impl PanicAction {
    /// The `-action panic=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            PanicAction::Pause => "pause",
            PanicAction::ExitFailure => "exit-failure",
            PanicAction::Shutdown => "shutdown",
            PanicAction::None => "none",
        }
    }
}

/// Where the vsock device sits, which decides whether a snapshot can be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VsockSlot {
    /// On the root bus, given on the command line (cannot be unplugged: no snapshot).
    #[default]
    Builtin,
    /// On a hot-pluggable PCIe root port ([`ROOT_PORT_ID`]), with id [`VSOCK_DEVICE_ID`]:
    /// it can be unplugged, which makes the VM migratable (snapshots).
    RootPort,
    /// A restore target: the root port without the device (added after the incoming
    /// migration) and `-incoming defer`.
    Incoming,
}

/// QOM id of the PCIe root port the vsock device sits on when it can be unplugged.
pub const ROOT_PORT_ID: &str = "rp0";
/// QOM id of the vsock device on the root port.
pub const VSOCK_DEVICE_ID: &str = "vsock";
/// Chardev id of the vhost-user vsock socket.
pub const VSOCK_CHARDEV_ID: &str = "vsock0";

/// The kernel command line actually passed: the configured one plus the serial
/// console and the agent port when the configuration lacks them.
pub fn kernel_cmdline(cfg: &VmConfig) -> String {
    let mut cmdline = cfg.cmdline.trim().to_string();
    let has = |key: &str| cfg.cmdline.split_whitespace().any(|w| w.starts_with(key));
    if !has("console=") {
        cmdline.push_str(" console=ttyS0");
    }
    if let Some(port) = cfg.agent_port
        && !has("vexfs.agent.port=")
    {
        cmdline.push_str(&format!(" vexfs.agent.port={port}"));
    }
    for extra in &cfg.extra_cmdline {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline.trim().to_string()
}

/// The QEMU argv (without the program) for `cfg` under `accel`.
pub fn build_argv(
    cfg: &VmConfig,
    accel: Accel,
    vsock: &VsockPlan,
    qmp_socket: &Path,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-name", &cfg.name]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-nic",
        "none",
    ]);
    let vhost_user = matches!(vsock, VsockPlan::VhostUser { .. });
    if vhost_user {
        // vhost-user needs guest RAM in a shareable memfd.
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib
            ),
        ]);
        push(&["-machine", "q35,memory-backend=mem"]);
    } else {
        push(&["-machine", "q35"]);
    }
    push(&["-accel", accel.as_str()]);
    if accel == Accel::Kvm {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-m",
        &format!("{}M", cfg.memory_mib),
        "-smp",
        &cfg.cpus.to_string(),
    ]);
    a.push("-kernel".into());
    a.push(cfg.kernel.clone().into_os_string());
    if let Some(initrd) = &cfg.initramfs {
        a.push("-initrd".into());
        a.push(initrd.clone().into_os_string());
    }
    a.push("-append".into());
    a.push(kernel_cmdline(cfg).into());
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    // The serial console is QEMU's stdout: a pipe, so nothing is lost before we read.
    push(&[
        "-chardev",
        "stdio,id=ser0,signal=off",
        "-serial",
        "chardev:ser0",
    ]);
    let mut qmp = OsString::from("unix:");
    qmp.push(qmp_socket);
    qmp.push(",server=on,wait=off");
    a.push("-qmp".into());
    a.push(qmp);
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    if cfg.pvpanic {
        push(&["-device", "pvpanic-pci"]);
    }
    // The guest's fw_cfg driver hands the kernel's VMCOREINFO note to QEMU, which puts
    // it in guest memory dumps so tools find the kernel's symbols.
    push(&["-device", "vmcoreinfo"]);
    push(&["-action", &format!("panic={}", cfg.panic_action.as_str())]);
    if cfg.no_reboot {
        push(&["-no-reboot"]);
    }
    if cfg.vsock_slot != VsockSlot::Builtin {
        push(&[
            "-device",
            &format!("pcie-root-port,id={ROOT_PORT_ID},chassis=1,slot=1"),
        ]);
    }
    if cfg.vsock_slot == VsockSlot::Incoming {
        push(&["-incoming", "defer"]);
    }
    // On the root port the device gets a bus and an id, so it can be unplugged.
    let slot = match cfg.vsock_slot {
        VsockSlot::Builtin => String::new(),
        _ => format!(",bus={ROOT_PORT_ID},id={VSOCK_DEVICE_ID}"),
    };
    let vsock = match cfg.vsock_slot {
        VsockSlot::Incoming => &VsockPlan::None,
        _ => vsock,
    };
    match vsock {
        VsockPlan::Kernel { cid } => {
            push(&["-device", &format!("vhost-vsock-pci,guest-cid={cid}{slot}")])
        }
        VsockPlan::VhostUser { vhost_socket, .. } => {
            let mut chardev = OsString::from(format!("socket,id={VSOCK_CHARDEV_ID},path="));
            chardev.push(vhost_socket);
            a.push("-chardev".into());
            a.push(chardev);
            a.push("-device".into());
            a.push(format!("vhost-user-vsock-pci,chardev={VSOCK_CHARDEV_ID}{slot}").into());
        }
        VsockPlan::None => {}
    }
    a.extend(
        super::disks::qemu_args(&cfg.disks)
            .into_iter()
            .map(OsString::from),
    );
    a.extend(cfg.extra_qemu_args.iter().map(OsString::from));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg() -> VmConfig {
        let mut c = VmConfig::new("/img/vmlinuz", "console=ttyS0 quiet");
        c.initramfs = Some(PathBuf::from("/img/initramfs.cpio.gz"));
        c.agent_port = Some(5000);
        c.name = "vexfs-test".into();
        c
    }

    fn strings(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn value_after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn vhost_user_tcg_argv() {
        let run = PathBuf::from("/run/vm1");
        let plan = VsockPlan::VhostUser {
            cid: 3,
            vhost_socket: run.join("vhost.sock"),
            uds_path: run.join("vm.vsock"),
        };
        let argv = strings(&build_argv(
            &cfg(),
            Accel::Tcg,
            &plan,
            &run.join("qmp.sock"),
        ));
        assert_eq!(value_after(&argv, "-accel"), ["tcg"]);
        assert_eq!(value_after(&argv, "-nic"), ["none"]);
        assert!(argv.contains(&"-nodefaults".to_string()));
        assert_eq!(value_after(&argv, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(
            value_after(&argv, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(value_after(&argv, "-m"), ["512M"]);
        assert_eq!(value_after(&argv, "-kernel"), ["/img/vmlinuz"]);
        assert_eq!(value_after(&argv, "-initrd"), ["/img/initramfs.cpio.gz"]);
        assert_eq!(
            value_after(&argv, "-append"),
            ["console=ttyS0 quiet vexfs.agent.port=5000"]
        );
        assert_eq!(
            value_after(&argv, "-qmp"),
            ["unix:/run/vm1/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            value_after(&argv, "-chardev"),
            [
                "stdio,id=ser0,signal=off",
                "socket,id=vsock0,path=/run/vm1/vhost.sock"
            ]
        );
        assert_eq!(
            value_after(&argv, "-device"),
            [
                "pvpanic-pci",
                "vmcoreinfo",
                "vhost-user-vsock-pci,chardev=vsock0"
            ]
        );
        assert_eq!(value_after(&argv, "-action"), ["panic=pause"]);
        assert!(!argv.contains(&"-cpu".to_string()));
        assert!(
            !argv
                .iter()
                .any(|a| a.contains("netdev") || a.contains("forward"))
        );
    }

    #[test]
    fn kernel_vsock_kvm_argv() {
        let mut c = cfg();
        c.panic_action = PanicAction::ExitFailure;
        c.pvpanic = false;
        c.no_reboot = true;
        c.cpus = 2;
        let argv = strings(&build_argv(
            &c,
            Accel::Kvm,
            &VsockPlan::Kernel { cid: 42 },
            Path::new("/q.sock"),
        ));
        assert_eq!(value_after(&argv, "-accel"), ["kvm"]);
        assert_eq!(value_after(&argv, "-cpu"), ["host"]);
        assert_eq!(value_after(&argv, "-machine"), ["q35"]);
        assert!(value_after(&argv, "-object").is_empty());
        assert_eq!(
            value_after(&argv, "-device"),
            ["vmcoreinfo", "vhost-vsock-pci,guest-cid=42"]
        );
        assert_eq!(value_after(&argv, "-action"), ["panic=exit-failure"]);
        assert_eq!(value_after(&argv, "-smp"), ["2"]);
        assert!(argv.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn vsock_on_root_port_and_incoming_restore_target() {
        let run = PathBuf::from("/run/vm1");
        let plan = VsockPlan::VhostUser {
            cid: 3,
            vhost_socket: run.join("vhost.sock"),
            uds_path: run.join("vm.vsock"),
        };
        let mut c = cfg();
        c.vsock_slot = VsockSlot::RootPort;
        let argv = strings(&build_argv(&c, Accel::Tcg, &plan, &run.join("q")));
        assert_eq!(
            value_after(&argv, "-device"),
            [
                "pvpanic-pci",
                "vmcoreinfo",
                "pcie-root-port,id=rp0,chassis=1,slot=1",
                "vhost-user-vsock-pci,chardev=vsock0,bus=rp0,id=vsock"
            ]
        );
        assert!(value_after(&argv, "-incoming").is_empty());
        c.vsock_slot = VsockSlot::Incoming;
        let incoming = strings(&build_argv(&c, Accel::Tcg, &plan, &run.join("q")));
        assert_eq!(
            value_after(&incoming, "-device"),
            [
                "pvpanic-pci",
                "vmcoreinfo",
                "pcie-root-port,id=rp0,chassis=1,slot=1"
            ]
        );
        assert_eq!(
            value_after(&incoming, "-chardev"),
            ["stdio,id=ser0,signal=off"]
        );
        assert_eq!(value_after(&incoming, "-incoming"), ["defer"]);
        // Memory stays a shareable memfd: the device comes back after the migration.
        assert_eq!(
            value_after(&incoming, "-machine"),
            ["q35,memory-backend=mem"]
        );
        c.vsock_slot = VsockSlot::RootPort;
        let kernel = strings(&build_argv(
            &c,
            Accel::Kvm,
            &VsockPlan::Kernel { cid: 9 },
            &run,
        ));
        assert!(kernel.contains(&"vhost-vsock-pci,guest-cid=9,bus=rp0,id=vsock".to_string()));
    }

    #[test]
    fn cmdline_gets_console_and_port_once() {
        let mut c = VmConfig::new("/k", "quiet");
        c.agent_port = Some(5000);
        c.extra_cmdline.push("loglevel=7".into());
        assert_eq!(
            kernel_cmdline(&c),
            "quiet console=ttyS0 vexfs.agent.port=5000 loglevel=7"
        );
        let mut c = VmConfig::new("/k", "console=ttyS0,115200 vexfs.agent.port=6000");
        c.agent_port = Some(5000);
        assert_eq!(
            kernel_cmdline(&c),
            "console=ttyS0,115200 vexfs.agent.port=6000"
        );
    }
}
