//! PID 1 duties in the guest initramfs: mount the pseudo filesystems, load the transport
//! modules, then run the agent as a child and reap every orphan. A separate child keeps
//! orphan reaping (waitpid(-1)) away from the agent's own exec children, and lets init
//! restart an agent that died: the controller then sees the same boot id come back.

use std::path::Path;
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitStatus, waitpid};

/// Environment marker for the agent child started by init.
pub const CHILD_ENV: &str = "VEXFS_AGENT_CHILD";
/// Transport modules to load before the agent listens, one absolute path a line.
pub const MODULES_LOAD: &str = "/etc/vexfs/modules-load";
/// Respawns in a row that fail fast before init gives up and powers off.
const MAX_FAST_FAILURES: u32 = 20;

/// True when this process is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// True when this process is the agent child started by init.
pub fn is_init_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

fn say(msg: &str) {
    eprintln!("vexfs-init: {msg}");
}

fn mount_fs(fstype: &str, target: &str, flags: MsFlags) {
    let _ = std::fs::create_dir_all(target);
    match mount(Some(fstype), target, Some(fstype), flags, None::<&str>) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => say(&format!("mount {fstype} on {target}: {e}")),
    }
}

/// Mounts /proc, /sys, /dev, debugfs and the tmpfs dirs.
pub fn mount_all() {
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", quiet);
    mount_fs("sysfs", "/sys", quiet);
    mount_fs("devtmpfs", "/dev", MsFlags::MS_NOSUID);
    mount_fs(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    );
    mount_fs("debugfs", "/sys/kernel/debug", quiet);
    mount_fs("tmpfs", "/tmp", MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
    mount_fs("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
}

/// Loads the modules listed in `list`, in order; already-loaded ones are fine.
pub fn load_listed_modules(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        return;
    };
    for path in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let result = std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                    Err(e) => Err(e.desc().to_string()),
                }
            });
        if let Err(e) = result {
            say(&format!("load {path}: {e}"));
        }
    }
}

/// Protects the agent from the OOM killer and from being paged out.
pub fn harden_self() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!("oom_score_adj: {e}");
    }
    // SAFETY: mlockall has no memory-safety preconditions. MCL_ONFAULT locks pages as
    // they are touched, so thread stacks are not populated up front.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 {
        tracing::warn!("mlockall: {}", std::io::Error::last_os_error());
    }
}

/// Runs as the guest's init: never returns; powers off if the agent cannot be kept up.
pub fn run() -> ! {
    mount_all();
    load_listed_modules(Path::new(MODULES_LOAD));
    // virtio_blk (loaded just above) probes its disks synchronously.
    crate::disks::link_by_name(
        Path::new("/sys/block"),
        Path::new("/dev"),
        Path::new(crate::disks::BY_NAME),
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut fast_failures = 0;
    loop {
        let started = std::time::Instant::now();
        let child = std::process::Command::new("/proc/self/exe")
            .args(&args)
            .env(CHILD_ENV, "1")
            .spawn();
        let pid = match child {
            Ok(c) => c.id(),
            Err(e) => {
                say(&format!("cannot start the agent: {e}"));
                0
            }
        };
        // Reap everything; the agent child's exit ends this inner loop.
        if pid != 0 {
            loop {
                match waitpid(None, None) {
                    Ok(WaitStatus::Exited(p, code)) if p.as_raw() as u32 == pid => {
                        say(&format!("agent exited with status {code}; restarting"));
                        break;
                    }
                    Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() as u32 == pid => {
                        say(&format!("agent killed by {sig}; restarting"));
                        break;
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        }
        if started.elapsed() < Duration::from_secs(5) {
            fast_failures += 1;
        } else {
            fast_failures = 0;
        }
        if fast_failures >= MAX_FAST_FAILURES {
            say("agent keeps failing; powering off");
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
