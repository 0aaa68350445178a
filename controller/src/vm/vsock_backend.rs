//! The vsock device of a VM: kernel vhost-vsock where `/dev/vhost-vsock` exists,
//! otherwise the `vhost-device-vsock` daemon (vhost-user) as a sidecar in its own
//! process group, reached from the host through hybrid vsock on its unix socket.
//! Never given forward-cid/forward-listen: those open host AF_VSOCK sockets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{ChildGroup, ProcessError};

/// Environment variable naming the vhost-device-vsock binary.
pub const DAEMON_ENV: &str = "VEXFS_VHOST_DEVICE_VSOCK";
/// How long the daemon gets to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// vsock backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No daemon binary was found.
    #[error(
        "vhost-device-vsock not found (set {DAEMON_ENV}, put it on PATH or in ~/.cargo/bin; scripts/setup.sh installs it)"
    )]
    DaemonMissing,
    /// The daemon could not be started.
    #[error(transparent)]
    Spawn(#[from] ProcessError),
    /// The daemon exited or never created its socket.
    #[error("vhost-device-vsock did not come up: {0}")]
    NotReady(String),
}

/// Which vsock device the VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VsockChoice {
    /// Kernel vhost-vsock when `/dev/vhost-vsock` exists, else the daemon.
    #[default]
    Auto,
    /// Kernel vhost-vsock (`-device vhost-vsock-pci`).
    Kernel,
    /// The vhost-device-vsock daemon.
    VhostUser,
    /// No vsock device.
    None,
}

/// The resolved vsock setup of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockPlan {
    /// Kernel vhost-vsock with this guest CID.
    Kernel {
        /// Guest context id.
        cid: u32,
    },
    /// vhost-user daemon with these sockets.
    VhostUser {
        /// Guest context id (as the daemon announces it).
        cid: u32,
        /// vhost-user control socket QEMU connects to.
        vhost_socket: PathBuf,
        /// Host-side hybrid vsock socket.
        uds_path: PathBuf,
    },
    /// No vsock.
    None,
}

impl VsockChoice {
    /// Decides the plan for a VM whose run dir is `run_dir`. `cid` 0 means automatic:
    /// 3 behind a private vhost-user daemon, a hashed per-run value with kernel
    /// vhost-vsock (CIDs are host-global there).
    pub fn resolve(self, run_dir: &Path, cid: u32) -> VsockPlan {
        let kernel = Path::new("/dev/vhost-vsock").exists();
        let (user_cid, kernel_cid) = if cid == 0 {
            (3, auto_cid(run_dir))
        } else {
            (cid, cid)
        };
        let vhost_user = || VsockPlan::VhostUser {
            cid: user_cid,
            vhost_socket: run_dir.join("vhost.sock"),
            uds_path: run_dir.join("vm.vsock"),
        };
        match self {
            VsockChoice::Auto if kernel => VsockPlan::Kernel { cid: kernel_cid },
            VsockChoice::Auto | VsockChoice::VhostUser => vhost_user(),
            VsockChoice::Kernel => VsockPlan::Kernel { cid: kernel_cid },
            VsockChoice::None => VsockPlan::None,
        }
    }
}

/// A guest CID in [1000, 2^31) derived from the (unique) run dir, so parallel VMs
/// under kernel vhost-vsock do not collide.
fn auto_cid(run_dir: &Path) -> u32 {
    let hash = run_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    1000 + (hash % (u64::from(u32::MAX / 2) - 1000)) as u32
}

/// Finds the daemon: `$VEXFS_VHOST_DEVICE_VSOCK`, then PATH, then `~/.cargo/bin`.
pub fn find_daemon() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(DAEMON_ENV) {
        return Some(PathBuf::from(p));
    }
    let name = "vhost-device-vsock";
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The daemon's argv (without the program): one VM, no forwarding.
pub fn daemon_args(cid: u32, vhost_socket: &Path, uds_path: &Path) -> Vec<OsString> {
    let mut vm = OsString::from(format!("guest-cid={cid},socket="));
    vm.push(vhost_socket);
    vm.push(",uds-path=");
    vm.push(uds_path);
    vec!["--vm".into(), vm]
}

/// A running vhost-device-vsock daemon (killed with its group on drop).
#[derive(Debug)]
pub struct VsockDaemon {
    group: ChildGroup,
}

impl VsockDaemon {
    /// Starts the daemon and waits until its vhost-user socket exists. Its output
    /// goes to `log`.
    pub async fn start(
        program: &Path,
        cid: u32,
        vhost_socket: &Path,
        uds_path: &Path,
        log: &Path,
    ) -> Result<Self, BackendError> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| BackendError::NotReady(format!("log {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| BackendError::NotReady(e.to_string()))?;
        let mut cmd = Command::new(program);
        cmd.args(daemon_args(cid, vhost_socket, uds_path))
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .env(
                "RUST_LOG",
                std::env::var("VEXFS_VSOCK_LOG").unwrap_or_else(|_| "error".into()),
            );
        let group = ChildGroup::spawn("vhost-device-vsock", cmd)?.group;
        let start = Instant::now();
        loop {
            if let Some(status) = group.try_status() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                return Err(BackendError::NotReady(format!(
                    "exited with {status}: {}",
                    tail.trim()
                )));
            }
            if vhost_socket.exists() {
                break;
            }
            if start.elapsed() > SOCKET_WAIT {
                return Err(BackendError::NotReady(format!(
                    "no socket {} after {SOCKET_WAIT:?}",
                    vhost_socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::debug!(pid = group.pid(), elapsed = ?start.elapsed(), "vsock daemon ready");
        Ok(Self { group })
    }

    /// The daemon's process guard.
    pub fn group(&self) -> &ChildGroup {
        &self.group
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_args_never_forward() {
        let args = daemon_args(3, Path::new("/r/vhost.sock"), Path::new("/r/vm.vsock"));
        assert_eq!(
            args,
            vec![
                OsString::from("--vm"),
                OsString::from("guest-cid=3,socket=/r/vhost.sock,uds-path=/r/vm.vsock")
            ]
        );
        assert!(!args.iter().any(|a| a.to_string_lossy().contains("forward")));
    }

    #[test]
    fn explicit_choices_resolve() {
        let dir = Path::new("/run/x");
        assert_eq!(
            VsockChoice::Kernel.resolve(dir, 7),
            VsockPlan::Kernel { cid: 7 }
        );
        assert_eq!(VsockChoice::None.resolve(dir, 7), VsockPlan::None);
        match VsockChoice::Kernel.resolve(dir, 0) {
            VsockPlan::Kernel { cid } => assert!((1000..1 << 31).contains(&cid)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            VsockChoice::VhostUser.resolve(dir, 0),
            VsockPlan::VhostUser { cid: 3, .. }
        ));
        assert_eq!(
            VsockChoice::VhostUser.resolve(dir, 3),
            VsockPlan::VhostUser {
                cid: 3,
                vhost_socket: dir.join("vhost.sock"),
                uds_path: dir.join("vm.vsock")
            }
        );
    }
}
