//! Throw-away QEMU guests: configuration, launch (QEMU and the vsock daemon each in
//! its own process group), serial console capture, QMP, the KVM probe, and waiting
//! for the agent. Dropping a [`Vm`] kills everything it started.
//!
//! Lifecycle: [`Vm::launch`] (accelerator from the config, `$VEXFS_ACCEL`, or the
//! cached KVM probe) -> [`Vm::wait_for_agent`] -> use the [`AgentClient`], watch
//! [`Vm::exit_watch`] (QEMU gone, noticed in ~10 ms) and [`Vm::guest_events`] (QMP:
//! panicked, resets) -> [`Vm::shutdown`] or [`Vm::kill`] or drop.
//!
//! Measured caveats of vhost-device-vsock 0.3 (the backend on hosts without
//! /dev/vhost-vsock): a stream open across a guest reset never ends (no reset
//! reaches the host side), so watch `guest_events().resets` or heartbeats; and a
//! connection made between the reset and the new kernel's vsock setup hangs the
//! backend, which is why `wait_for_agent` first waits for the agent's vsock marker.

mod accel;
mod config;
pub mod console;
pub mod disks;
pub mod dump;
mod events;
pub mod image;
pub mod migration;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod restart;
mod rundir;
pub mod snapshot;
pub mod vsock_backend;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::{AgentClient, ClientError};
use crate::transport::Address;
use console::{Console, ConsoleLine, Source};
use image::Manifest;
use process::{ChildGroup, ProcessError};
pub use qemu::{Accel, PanicAction, VsockSlot};
use qmp::{Qmp, QmpError};
use vsock_backend::{BackendError, VsockChoice, VsockDaemon, VsockPlan};

use accel::*;
pub use accel::{AccelChoice, probe_cache_file, probe_kvm, resolve_accel};
pub use config::VmConfig;
use config::*;
pub use events::GuestEvents;
use rundir::*;

/// Environment variable overriding the accelerator choice (`tcg`, `kvm`, `auto`).
pub const ACCEL_ENV: &str = "VEXFS_ACCEL";
/// Console lines that show the guest reached userspace (probe and boot markers).
pub const INIT_MARKERS: &[&str] = &[
    "Run /init as init process",
    "VEXFS-INIT-READY",
    "vexfs-agent",
];

/// VM failures.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Run directory or log file trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error(transparent)]
    Spawn(#[from] ProcessError),
    /// The vsock backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// QEMU exited (early, or while we waited for something).
    #[error("qemu exited with {status} while {during}; last output:\n{tail}")]
    Exited {
        /// Exit status.
        status: ExitStatus,
        /// What we were waiting for.
        during: &'static str,
        /// Last console and stderr lines.
        tail: String,
    },
    /// The agent did not answer.
    #[error(transparent)]
    Agent(#[from] ClientError),
    /// The guest kernel panicked (pvpanic) before the agent answered.
    #[error("guest panicked; last output:\n{tail}")]
    GuestPanicked {
        /// Last console lines.
        tail: String,
    },
    /// The guest kernel panicked while booting, before the agent came up (a bad
    /// command line, no init, a broken initramfs): no retry can help.
    #[error("guest kernel panicked while booting: {line}; last output:\n{tail}")]
    BootPanicked {
        /// The panic line.
        line: String,
        /// Last console lines.
        tail: String,
    },
    /// The agent never reported listening within the boot timeout.
    #[error(
        "guest did not boot within {waited:?}: the agent never said it listens on vsock; last output:\n{tail}"
    )]
    NeverBooted {
        /// How long we waited.
        waited: Duration,
        /// Last console lines.
        tail: String,
    },
    /// The VM has no vsock device, so no agent address.
    #[error("vm has no vsock device")]
    NoVsock,
    /// Bad configuration value.
    #[error("invalid {0}")]
    Config(String),
}

/// A running guest. Dropping it kills QEMU and the vsock daemon (process groups)
/// and removes the run directory unless asked to keep it.
pub struct Vm {
    run_dir: PathBuf,
    keep_run_dir: bool,
    accel: Accel,
    started: Instant,
    console: Console,
    agent_addr: Option<Address>,
    qmp: Option<Arc<Qmp>>,
    guest: watch::Receiver<GuestEvents>,
    guest_task: Option<tokio::task::JoinHandle<()>>,
    qemu: Option<ChildGroup>,
    daemon: Option<VsockDaemon>,
    /// Restored from a snapshot: the agent's "listening" line is in the snapshot's
    /// past, not on this console (until the guest resets).
    restored: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("run_dir", &self.run_dir)
            .field("accel", &self.accel)
            .field("agent_addr", &self.agent_addr)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Resolves the accelerator (probing KVM when `Auto`) and launches the guest.
    pub async fn launch(cfg: &VmConfig) -> Result<Vm, VmError> {
        let accel = resolve_accel(cfg).await;
        Self::launch_with(cfg, accel).await
    }

    /// Launches the guest with the given accelerator.
    pub async fn launch_with(cfg: &VmConfig, accel: Accel) -> Result<Vm, VmError> {
        let parent = cfg.run_parent.clone().unwrap_or_else(std::env::temp_dir);
        let run_dir = unique_run_dir(&parent)?;
        // From here on, dropping `vm` cleans up whatever was started.
        let mut vm = Vm {
            run_dir: run_dir.clone(),
            keep_run_dir: cfg.keep_run_dir,
            accel,
            started: Instant::now(),
            console: Console::new(Instant::now()),
            agent_addr: None,
            qmp: None,
            guest: watch::channel(GuestEvents::default()).1,
            guest_task: None,
            qemu: None,
            daemon: None,
            restored: false,
        };
        let plan = cfg.vsock.resolve(&run_dir, cfg.guest_cid);
        let port = cmdline_port(&qemu::kernel_cmdline(cfg));
        if let VsockPlan::VhostUser {
            cid,
            vhost_socket,
            uds_path,
        } = &plan
        {
            let program = vsock_backend::find_daemon().ok_or(BackendError::DaemonMissing)?;
            vm.daemon = Some(
                VsockDaemon::start(
                    &program,
                    *cid,
                    vhost_socket,
                    uds_path,
                    &run_dir.join("vsock-daemon.log"),
                )
                .await?,
            );
        }
        vm.agent_addr = match (&plan, port) {
            (VsockPlan::VhostUser { uds_path, .. }, Some(port)) => Some(Address::Hvsock {
                path: uds_path.clone(),
                port,
            }),
            (VsockPlan::Kernel { cid }, Some(port)) => Some(Address::Vsock { cid: *cid, port }),
            _ => None,
        };
        let qmp_path = run_dir.join("qmp.sock");
        let argv = qemu::build_argv(cfg, accel, &plan, &qmp_path);
        std::fs::write(
            run_dir.join("qemu.cmdline"),
            argv.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .map_err(|source| VmError::Io {
            what: "write qemu.cmdline".into(),
            source,
        })?;
        let mut cmd = Command::new(&cfg.qemu_binary);
        cmd.args(&argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        vm.started = Instant::now();
        vm.console = Console::new(vm.started);
        let spawned = ChildGroup::spawn("qemu", cmd)?;
        tracing::info!(pid = spawned.group.pid(), accel = accel.as_str(), run_dir = %run_dir.display(), "qemu started");
        vm.qemu = Some(spawned.group);
        let pipe = |fd: std::os::fd::OwnedFd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|source| VmError::Io {
                what: "qemu pipe".into(),
                source,
            })
        };
        if let Some(out) = spawned.stdout {
            let rx = pipe(out.into())?;
            vm.console
                .attach(Source::Serial, rx, &run_dir.join("console.log"))
                .map_err(|source| VmError::Io {
                    what: "console.log".into(),
                    source,
                })?;
        }
        if let Some(err) = spawned.stderr {
            let rx = pipe(err.into())?;
            vm.console
                .attach(Source::QemuStderr, rx, &run_dir.join("qemu.log"))
                .map_err(|source| VmError::Io {
                    what: "qemu.log".into(),
                    source,
                })?;
        }
        let qmp = vm
            .until_exit(
                "connecting QMP",
                Qmp::connect(&qmp_path, Duration::from_secs(10)),
            )
            .await??;
        // Track guest state from QMP events from the first moment on.
        let (tx, rx) = watch::channel(GuestEvents::default());
        let mut events = qmp.subscribe();
        let started = vm.started;
        vm.guest = rx;
        vm.guest_task = Some(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => tx.send_modify(|g| {
                        g.record(&ev.name);
                        if ev.name == "RESET" {
                            g.last_reset_at = Some(ev.received.saturating_duration_since(started));
                        }
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        }));
        vm.qmp = Some(Arc::new(qmp));
        Ok(vm)
    }

    /// Runs `fut` unless QEMU exits first.
    async fn until_exit<T>(
        &self,
        during: &'static str,
        fut: impl Future<Output = T>,
    ) -> Result<T, VmError> {
        let Some(qemu) = &self.qemu else {
            return Ok(fut.await);
        };
        tokio::select! {
            out = fut => Ok(out),
            status = qemu.wait() => {
                // Let the pipe readers capture the last lines (EOF follows exit).
                self.console.drained(Duration::from_secs(1)).await;
                Err(VmError::Exited { status, during, tail: self.output_tail(30) })
            }
        }
    }

    /// The last `n` captured console/stderr lines, joined.
    pub fn output_tail(&self, n: usize) -> String {
        let h = self.console.history();
        h[h.len().saturating_sub(n)..]
            .iter()
            .map(|l| match l.source {
                Source::Serial => l.text.clone(),
                Source::QemuStderr => format!("qemu: {}", l.text),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The per-VM run directory (console.log, qemu.log, sockets). Unique per VM, so
    /// it also identifies the VM's processes by command line.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The console hub (serial lines and QEMU stderr).
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// The QMP connection.
    pub fn qmp(&self) -> &Qmp {
        self.qmp.as_ref().expect("qmp is set once launched")
    }

    /// A shared handle on the QMP connection, for tasks that outlive a borrow.
    pub fn qmp_handle(&self) -> Arc<Qmp> {
        self.qmp.clone().expect("qmp is set once launched")
    }

    /// The agent's address, when the VM has vsock and a known agent port.
    pub fn agent_address(&self) -> Option<&Address> {
        self.agent_addr.as_ref()
    }

    /// QEMU's pid.
    pub fn qemu_pid(&self) -> Option<i32> {
        self.qemu.as_ref().map(ChildGroup::pid)
    }

    /// The vsock daemon's pid, when there is one.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|d| d.group().pid())
    }

    /// A receiver that turns `Some(status)` the moment the vsock daemon exits (never,
    /// when the guest has no daemon).
    pub fn daemon_exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        match &self.daemon {
            Some(d) => d.group().exit_watch(),
            None => watch::channel(None).1,
        }
    }

    /// A receiver that turns `Some(status)` the moment QEMU exits.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        match &self.qemu {
            Some(q) => q.exit_watch(),
            None => watch::channel(None).1,
        }
    }

    /// QEMU's exit status, if it has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.qemu.as_ref().and_then(ChildGroup::try_status)
    }

    /// What QMP events said about the guest so far (panic, shutdown, resets).
    pub fn guest_events(&self) -> watch::Receiver<GuestEvents> {
        self.guest.clone()
    }

    /// Waits until the agent answers Health (or QEMU exits, the guest panics, or
    /// `timeout` passes).
    pub async fn wait_for_agent(
        &self,
        timeout: Duration,
    ) -> Result<(AgentClient, vexfs_proto::HealthReply), VmError> {
        let addr = self.agent_addr.clone().ok_or(VmError::NoVsock)?;
        let start = Instant::now();
        self.until_exit(
            "waiting for the agent to listen on vsock",
            self.await_agent_listening(timeout),
        )
        .await??;
        let timeout = timeout.saturating_sub(start.elapsed());
        let mut guest = self.guest.clone();
        let healthy = AgentClient::connect_healthy(&addr, timeout);
        let panicked = guest.wait_for(|g| g.panicked);
        let raced = async {
            tokio::select! {
                r = healthy => Ok(r),
                p = panicked => Err(p.is_ok()),
            }
        };
        match self.until_exit("waiting for the agent", raced).await? {
            Ok(r) => Ok(r?),
            Err(true) => {
                // Let the console reader catch up with the panic text (QEMU is
                // paused, not exited, so there is no EOF to wait for).
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(VmError::GuestPanicked {
                    tail: self.output_tail(40),
                })
            }
            // The event task ended (QMP closed): QEMU is exiting; report that.
            Err(false) => {
                let status = self.wait_exit(Duration::from_secs(2)).await;
                Err(VmError::Exited {
                    status: status
                        .unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(0)),
                    during: "waiting for the agent",
                    tail: self.output_tail(30),
                })
            }
        }
    }

    /// vhost-device-vsock 0.3: a hybrid connection attempted before the guest kernel
    /// has set up its vsock queues (after a reset, and on a first boot too) hangs, and
    /// so does every later one (measured). So wait for the agent's "listening on
    /// vsock" console line before the first connect.
    async fn await_agent_listening(&self, timeout: Duration) -> Result<(), VmError> {
        if self.daemon.is_none() || (self.restored && self.guest.borrow().resets == 0) {
            return Ok(());
        }
        // The first boot is no different: a CONNECT that reaches the daemon before the
        // guest's vsock is up hangs it the same way (seen twice in ~60 boots), so on
        // every boot wait for the agent's own "listening on vsock" line first. A panic
        // on the way (pvpanic is not loaded yet) ends the wait at once.
        let since = self.guest.borrow().last_reset_at.unwrap_or(Duration::ZERO);
        let line = self
            .console
            .wait_for(timeout, |l| {
                l.source == Source::Serial
                    && l.since_start >= since
                    && (l.text.contains(vexfs_proto::READY_MARKER)
                        || l.text.contains(console::PANIC_LINE))
            })
            .await;
        match line {
            Some(l) if l.text.contains(vexfs_proto::READY_MARKER) => Ok(()),
            Some(l) => {
                // Let the console reader catch the rest of the panic report.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(VmError::BootPanicked {
                    line: l.text.trim().to_string(),
                    tail: self.output_tail(30),
                })
            }
            None => Err(VmError::NeverBooted {
                waited: timeout,
                tail: self.output_tail(30),
            }),
        }
    }

    /// Waits until a console line satisfies `pred` (or QEMU exits, or `timeout`).
    pub async fn wait_for_console<F>(
        &self,
        timeout: Duration,
        pred: F,
    ) -> Result<Option<ConsoleLine>, VmError>
    where
        F: Fn(&ConsoleLine) -> bool,
    {
        self.until_exit(
            "waiting for console output",
            self.console.wait_for(timeout, pred),
        )
        .await
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let qemu = self.qemu.as_ref()?;
        tokio::time::timeout(timeout, qemu.wait()).await.ok()
    }

    /// Asks QEMU to quit over QMP, waits up to `timeout`, then kills what is left.
    pub async fn shutdown(mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.try_exit_status().is_none()
            && let Some(qmp) = &self.qmp
            && let Err(e) = qmp.quit().await
        {
            tracing::debug!(error = %e, "qmp quit failed; killing");
        }
        let status = match self.wait_exit(timeout).await {
            Some(s) => Some(s),
            None => self.qemu.as_ref().and_then(ChildGroup::kill),
        };
        self.teardown();
        status
    }

    /// Kills QEMU and the daemon now (SIGKILL to their groups) and reaps them.
    pub fn kill(mut self) -> Option<ExitStatus> {
        let status = self.qemu.as_ref().and_then(ChildGroup::kill);
        self.teardown();
        status
    }

    fn teardown(&mut self) {
        if let Some(task) = self.guest_task.take() {
            task.abort();
        }
        self.qmp = None;
        // QEMU first: the daemon outlives its VM otherwise logs a disconnect.
        drop(self.qemu.take());
        drop(self.daemon.take());
        if !self.keep_run_dir && !self.run_dir.as_os_str().is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
                tracing::debug!(error = %e, dir = %self.run_dir.display(), "run dir not removed");
            }
            self.run_dir = PathBuf::new();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_run_dirs_of_dead_controllers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let stale = dir.path().join("vexfs-vm-99999999-0-abc");
        let mine = dir
            .path()
            .join(format!("vexfs-vm-{}-0-abc", std::process::id()));
        let other = dir.path().join("unrelated-99999999");
        for d in [&stale, &mine, &other] {
            std::fs::create_dir(d).unwrap();
        }
        let fresh = unique_run_dir(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(mine.exists() && other.exists() && fresh.exists());
    }

    #[test]
    fn accel_choice_parses() {
        assert_eq!("tcg".parse::<AccelChoice>().unwrap(), AccelChoice::Tcg);
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Kvm);
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert!("hvf".parse::<AccelChoice>().is_err());
    }

    #[test]
    fn port_comes_from_the_last_cmdline_word() {
        assert_eq!(cmdline_port("a vexfs.agent.port=5000 b"), Some(5000));
        assert_eq!(
            cmdline_port("vexfs.agent.port=1 vexfs.agent.port=2"),
            Some(2)
        );
        assert_eq!(cmdline_port("quiet"), None);
    }

    #[test]
    fn probe_cache_key_depends_on_kernel() {
        let mut a = VmConfig::new("/k/a", "");
        a.cache_dir = Some("/c".into());
        let mut b = a.clone();
        b.kernel = "/k/b".into();
        assert_ne!(probe_cache_file(&a), probe_cache_file(&b));
        assert!(probe_cache_file(&a).starts_with("/c/accel-probe"));
    }

    fn scratch_config(dir: &Path, qemu: &str) -> VmConfig {
        let mut c = VmConfig::new("/nonexistent/kernel", "quiet");
        c.qemu_binary = qemu.into();
        c.vsock = VsockChoice::None;
        c.run_parent = Some(dir.to_path_buf());
        c
    }

    #[tokio::test]
    async fn missing_qemu_is_a_spawn_error_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let err = Vm::launch_with(&scratch_config(dir.path(), "/nonexistent/qemu"), Accel::Tcg)
            .await
            .unwrap_err();
        assert!(matches!(err, VmError::Spawn(_)), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "run dir removed"
        );
    }

    #[tokio::test]
    async fn early_qemu_exit_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        // A "QEMU" that prints like a guest and on stderr, then fails.
        let fake = dir.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'Linux version 0.0'\necho 'KVM internal error' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let parent = dir.path().join("runs");
        let start = Instant::now();
        let err = Vm::launch_with(&scratch_config(&parent, fake.to_str().unwrap()), Accel::Tcg)
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        match err {
            VmError::Exited { status, tail, .. } => {
                assert_eq!(status.code(), Some(1));
                assert!(tail.contains("Linux version 0.0"), "{tail}");
                assert!(tail.contains("qemu: KVM internal error"), "{tail}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            std::fs::read_dir(&parent).unwrap().count(),
            0,
            "run dir removed"
        );
    }

    #[tokio::test]
    async fn explicit_accel_skips_probe() {
        let mut c = VmConfig::new("/nonexistent", "");
        c.accel = AccelChoice::Tcg;
        assert_eq!(resolve_accel(&c).await, Accel::Tcg);
        c.accel = AccelChoice::Kvm;
        assert_eq!(resolve_accel(&c).await, Accel::Kvm);
    }
}
