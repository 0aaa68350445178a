//! Child processes (QEMU, the vsock daemon) each in its own process group, killed as a
//! group (SIGKILL) and reaped when the guard drops, so no orphan outlives the
//! controller's handle. Children also get `PR_SET_PDEATHSIG(SIGKILL)` so a controller
//! killed with SIGKILL takes them along.

use std::collections::HashSet;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// How long drop waits for a killed group leader to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// Process spawning failures.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// fork/exec failed.
    #[error("spawn {name}: {source}")]
    Spawn {
        /// The program.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Process groups alive right now (by leader pid), for [`kill_all`].
fn registry() -> &'static Mutex<HashSet<i32>> {
    static REGISTRY: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashSet::new()))
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// PDEATHSIG fires when the *thread* that forked exits, so all children are forked
/// from one thread that lives as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("vexfs-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // ETXTBSY: a just-written executable whose fd another thread's
                    // fork still holds for a moment; it clears by itself.
                    let mut result = cmd.spawn();
                    for _ in 0..10 {
                        match &result {
                            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                                std::thread::sleep(std::time::Duration::from_millis(20));
                                result = cmd.spawn();
                            }
                            _ => break,
                        }
                    }
                    let _ = reply.send(result);
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    })
}

/// SIGKILLs every live process group this process started (Ctrl-C and panic paths).
pub fn kill_all() {
    let pids: Vec<i32> = registry()
        .lock()
        .map(|r| r.iter().copied().collect())
        .unwrap_or_default();
    for pid in pids {
        killpg(pid);
    }
}

fn killpg(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: plain syscall on a process group id we created; no memory involved.
    let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, error = %err, "killpg failed");
        }
    }
}

#[derive(Default)]
struct Reaped {
    status: Mutex<Option<ExitStatus>>,
    cond: Condvar,
}

/// A running child that leads its own process group. Dropping it kills the group
/// and reaps the leader.
pub struct ChildGroup {
    name: String,
    pid: i32,
    exit_rx: watch::Receiver<Option<ExitStatus>>,
    reaped: Arc<Reaped>,
}

impl std::fmt::Debug for ChildGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGroup")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .finish()
    }
}

/// The spawned group plus the pipes asked for.
pub struct Spawned {
    /// The guard.
    pub group: ChildGroup,
    /// stdout, when piped.
    pub stdout: Option<ChildStdout>,
    /// stderr, when piped.
    pub stderr: Option<ChildStderr>,
}

impl ChildGroup {
    /// Spawns `cmd` in a new process group with stdin from /dev/null. stdout/stderr
    /// are whatever the caller set on `cmd` (pipe them to capture).
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Spawned, ProcessError> {
        let parent = std::process::id() as i32;
        cmd.stdin(Stdio::null()).process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let spawn_err = |source| ProcessError::Spawn {
            name: name.to_string(),
            source,
        };
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| spawn_err(io::Error::other("spawner poisoned")))?
            .send((cmd, tx))
            .map_err(|_| spawn_err(io::Error::other("spawner thread gone")))?;
        let mut child = rx
            .recv()
            .map_err(|_| spawn_err(io::Error::other("spawner thread gone")))?
            .map_err(spawn_err)?;
        let pid = child.id() as i32;
        if let Ok(mut r) = registry().lock() {
            r.insert(pid);
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (exit_tx, exit_rx) = watch::channel(None);
        let reaped = Arc::new(Reaped::default());
        let reaped2 = reaped.clone();
        let thread_name = format!("wait-{name}-{pid}");
        let waiter = move || {
            // Wait without reaping first, so the pid cannot be reused while we kill
            // the members the leader may have left behind.
            // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            loop {
                // SAFETY: waitid on our own child with a valid siginfo pointer.
                let rc = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
            killpg(pid);
            let status = child.wait().unwrap_or_else(|e| {
                tracing::warn!(pid, error = %e, "wait failed");
                ExitStatus::from_raw(-1)
            });
            if let Ok(mut r) = registry().lock() {
                r.remove(&pid);
            }
            let _ = exit_tx.send(Some(status));
            if let Ok(mut s) = reaped2.status.lock() {
                *s = Some(status);
            }
            reaped2.cond.notify_all();
        };
        if let Err(e) = std::thread::Builder::new().name(thread_name).spawn(waiter) {
            // Without a waiter we cannot track it: kill it now.
            killpg(pid);
            return Err(spawn_err(e));
        }
        tracing::debug!(name, pid, "spawned in own process group");
        Ok(Spawned {
            group: ChildGroup {
                name: name.to_string(),
                pid,
                exit_rx,
                reaped,
            },
            stdout,
            stderr,
        })
    }

    /// The leader's pid (also the process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status once the leader has been reaped.
    pub fn try_status(&self) -> Option<ExitStatus> {
        *self.exit_rx.borrow()
    }

    /// A receiver that changes to `Some(status)` when the leader exits.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit_rx.clone()
    }

    /// Waits for the leader to exit.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit_rx.clone();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return status;
            }
            if rx.changed().await.is_err() {
                // The waiter thread is gone without sending: treat as killed.
                return ExitStatus::from_raw(libc::SIGKILL);
            }
        }
    }

    /// Kills the whole group with SIGKILL and waits (blocking, bounded) for the
    /// leader to be reaped.
    pub fn kill(&self) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            killpg(self.pid);
        }
        let guard = self.reaped.status.lock().ok()?;
        let (guard, _) = self
            .reaped
            .cond
            .wait_timeout_while(guard, REAP_WAIT, |s| s.is_none())
            .ok()?;
        if guard.is_none() {
            tracing::error!(name = %self.name, pid = self.pid, "not reaped after SIGKILL");
        }
        *guard
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pids of processes whose command line contains `needle` (e.g. a VM's run dir):
/// the orphan check of the tests.
pub fn pids_with_cmdline_containing(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id() as i32;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // Zombies have an empty cmdline and are not orphans we can kill anyway.
        if memchr::memmem::find(&cmdline, needle.as_bytes()).is_some() {
            found.push(pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn drop_kills_the_whole_group() {
        let marker = format!("vexfs-pg-test-{}-{}", std::process::id(), line!());
        let mut cmd = Command::new("sh");
        // A grandchild in the same group; both must die on drop.
        cmd.args(["-c", &format!("sleep 300 & exec sleep 301 # {marker}")]);
        let spawned = ChildGroup::spawn("sh", cmd).unwrap();
        let group = spawned.group;
        std::thread::sleep(Duration::from_millis(200));
        assert!(group.try_status().is_none());
        let pid = group.pid();
        drop(group);
        // The backgrounded `sleep 300` has its own argv: find it by group id.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let alive = group_members(pid);
            if alive.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "group {pid} survived: {alive:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(pids_with_cmdline_containing(&marker).is_empty());
    }

    #[tokio::test]
    async fn exit_is_noticed_quickly() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let spawned = ChildGroup::spawn("sh", cmd).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(2), spawned.group.wait())
            .await
            .unwrap();
        assert_eq!(status.code(), Some(3));
    }

    fn group_members(pgid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the last ')': state ppid pgrp ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
                out.push(entry.file_name().to_string_lossy().parse().unwrap_or(0));
            }
        }
        out
    }
}
