//! Runs workload commands in the guest: own process group, timeout that kills the whole
//! group, bounded output kept per stream.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use vexfs_proto::{ExecReply, ExecRequest, HungSource, HungTask};

use crate::hung;

/// Timeout when the request gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest timeout accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Output kept per stream when the request gives no limit.
const DEFAULT_OUTPUT: u64 = 1 << 20;
/// Largest output limit accepted per stream: both streams together stay under gRPC's
/// default 4 MiB message limit, so any client can decode the reply.
const MAX_OUTPUT: u64 = 3 << 19;
/// How long to wait for output pipes after the command exits: a background grandchild
/// may hold them open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long a killed command may take to die before it is reported unkillable: SIGKILL
/// takes effect at once unless the task sleeps uninterruptibly in the kernel.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Most argv entries or env entries accepted.
const MAX_ARGS: usize = 4096;
/// Longest single argv or env entry: the kernel's MAX_ARG_STRLEN (32 pages) less the NUL.
const MAX_ARG_LEN: usize = 32 * 4096 - 1;
/// Most argv and env bytes in all: well under execve's limit (a quarter of the 8 MiB
/// stack rlimit), so a request that passes never fails with E2BIG.
const MAX_ARG_BYTES: usize = 1 << 20;
/// Longest working directory accepted (PATH_MAX).
const MAX_CWD: usize = 4096;

/// Errors of exec requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed request.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The command could not be started.
    #[error("cannot start {cmd}: {source}")]
    Spawn {
        /// argv[0].
        cmd: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("waiting for {cmd}: {source}")]
    Wait {
        /// argv[0].
        cmd: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What a valid request runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// When the process group is killed.
    pub timeout: Duration,
    /// Output bytes kept per stream.
    pub output: u64,
}

/// Checks a request before anything runs: every refusal is `Error::Invalid`.
pub fn check(req: &ExecRequest) -> Result<Limits, Error> {
    if req.argv.first().is_none_or(|a| a.is_empty()) {
        return Err(Error::Invalid("argv is empty".into()));
    }
    if req.argv.len() > MAX_ARGS || req.env.len() > MAX_ARGS {
        return Err(Error::Invalid(format!(
            "{} argv and {} env entries: at most {MAX_ARGS} each",
            req.argv.len(),
            req.env.len()
        )));
    }
    if let Some(a) = req
        .argv
        .iter()
        .chain(&req.env)
        .find(|a| a.len() > MAX_ARG_LEN)
    {
        return Err(Error::Invalid(format!(
            "an argv or env entry is {} bytes, longer than {MAX_ARG_LEN}",
            a.len()
        )));
    }
    let total: usize = req.argv.iter().chain(&req.env).map(|a| a.len() + 1).sum();
    if total > MAX_ARG_BYTES {
        return Err(Error::Invalid(format!(
            "argv and env are {total} bytes in all, more than {MAX_ARG_BYTES}"
        )));
    }
    if req.argv.iter().chain(&req.env).any(|a| a.contains('\0')) {
        return Err(Error::Invalid("argv or env holds NUL".into()));
    }
    if let Some(kv) = req
        .env
        .iter()
        .find(|kv| kv.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        let shown: String = kv.chars().take(64).collect();
        return Err(Error::Invalid(format!(
            "env entry {shown:?} is not KEY=VALUE"
        )));
    }
    if !req.cwd.is_empty() {
        if req.cwd.len() > MAX_CWD || req.cwd.contains('\0') {
            return Err(Error::Invalid(format!(
                "cwd must be a path of at most {MAX_CWD} bytes without NUL"
            )));
        }
        // Checked here so a bad cwd is not reported as a missing command by spawn.
        match std::fs::metadata(&req.cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "cwd {} is not a directory",
                    req.cwd
                )));
            }
            Err(e) => return Err(Error::Invalid(format!("cwd {}: {e}", req.cwd))),
        }
    }
    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms).min(MAX_TIMEOUT),
    };
    let output = match req.max_output_bytes {
        0 => DEFAULT_OUTPUT,
        n => n.min(MAX_OUTPUT),
    };
    Ok(Limits { timeout, output })
}

/// Runs the request to completion or timeout; `proc` is the proc tree that describes a
/// command that will not die.
pub async fn run(req: ExecRequest, proc: &Path) -> Result<ExecReply, Error> {
    let Limits {
        timeout,
        output: limit,
    } = check(&req)?;
    let cmd = req.argv[0].clone();
    let mut command = tokio::process::Command::new(&cmd);
    command
        .args(&req.argv[1..])
        .stdin(if req.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if !req.inherit_env {
        command.env_clear();
        command.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
    for (k, v) in req.env.iter().filter_map(|kv| kv.split_once('=')) {
        command.env(k, v);
    }
    if !req.cwd.is_empty() {
        command.current_dir(&req.cwd);
    }
    // SAFETY: the closure runs in the forked child before exec and only makes raw
    // open/write/close syscalls on a static path: no allocation, no locks.
    unsafe {
        command.pre_exec(|| {
            reset_oom_score();
            Ok(())
        });
    }
    if req.gid != 0 {
        command.gid(req.gid);
    }
    if req.uid != 0 {
        command.uid(req.uid);
    }
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    if let Some(mut stdin) = child.stdin.take() {
        let data = req.stdin.clone();
        // A command that never reads its stdin must not block us: write in the background.
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let out = tokio::spawn(collect(child.stdout.take(), limit, stop.clone()));
    let err = tokio::spawn(collect(child.stderr.take(), limit, stop));

    let (mut timed_out, mut unkillable) = (false, None);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status),
        Err(_) => {
            timed_out = true;
            kill_group(pid);
            let killed = Instant::now();
            let status = tokio::time::timeout(KILL_GRACE, child.wait()).await.ok();
            // Stuck in the kernel: answer now with where it sleeps rather than hold the
            // RPC for as long as the module's bug lasts. Dropping the child leaves it to
            // tokio's reaper; the drain below gives up on its pipes.
            if status.is_none() {
                unkillable = Some(unkillable_notice(proc, pid, killed.elapsed()));
            }
            status
        }
    }
    .transpose()
    .map_err(|source| Error::Wait { cmd, source })?;
    let duration = started.elapsed();
    // Leftover members of the group (background jobs) would hold the pipes open.
    kill_group(pid);
    let both = async { tokio::join!(out, err) };
    tokio::pin!(both);
    let (out, err) = tokio::select! {
        r = &mut both => r,
        () = tokio::time::sleep(DRAIN_GRACE) => {
            // Something outside the group (a setsid grandchild) holds a pipe open: keep
            // what was read so far.
            let _ = stop_tx.send(true);
            both.await
        }
    };
    let (stdout, stdout_truncated) = out.unwrap_or((Vec::new(), true));
    let (stderr, stderr_truncated) = err.unwrap_or((Vec::new(), true));
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecReply {
        exit_code: status.and_then(|s| s.code()).unwrap_or(-1),
        signal: status.and_then(|s| s.signal()).unwrap_or(0),
        stdout,
        stderr,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        timed_out,
        stdout_truncated,
        stderr_truncated,
        pid,
        unkillable,
    })
}

/// Describes a command that outlived SIGKILL: its state, kernel stack and wchan.
fn unkillable_notice(proc: &Path, pid: u32, since_kill: Duration) -> HungTask {
    let task = hung::read_task(proc, pid).unwrap_or(hung::TaskStat {
        pid,
        comm: String::new(),
        state: '?',
        starttime: 0,
        pgrp: 0,
    });
    HungTask {
        source: HungSource::ExecKill as i32,
        ..hung::dstate_notice(proc, &task, since_kill)
    }
}

/// Workloads must stay killable by the OOM killer even though the agent is exempt
/// (oom_score_adj is inherited across fork).
fn reset_oom_score() {
    // SAFETY: a static NUL-terminated path and a static buffer; raw syscalls only, as
    // required between fork and exec.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // The child leads its own group (process_group(0)), so its pid is the pgid.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Reads a pipe to its end, keeping the first `limit` bytes; the rest is read and
/// dropped so a chatty command never blocks on a full pipe. Stops early, marked
/// truncated, once `stop` turns true.
async fn collect<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    limit: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = pipe.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.wait_for(|s| *s) => {
                truncated = true;
                break;
            }
        };
        let room = limit.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn unkillable_command_is_described_from_proc() {
        let proc = tempfile::tempdir().unwrap();
        let dir = proc.path().join("321");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!(
                "321 (sh) D 1 321 321 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 {}\n",
                hung::STAT_TAIL
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("stack"),
            "[<0>] __mutex_lock.constprop.0+0x1/0x2\n[<0>] vexfs_fault_deadlock+0x3/0x4 [vexfs]\n",
        )
        .unwrap();
        std::fs::write(dir.join("wchan"), "__mutex_lock.constprop.0").unwrap();
        let n = unkillable_notice(proc.path(), 321, Duration::from_secs(2));
        assert_eq!(n.source, HungSource::ExecKill as i32);
        assert_eq!((n.pid, n.comm.as_str(), n.blocked_secs), (321, "sh", 2));
        assert_eq!(n.wchan, "__mutex_lock.constprop.0");
        assert!(n.stack[1].contains("vexfs_fault_deadlock"));
        // Gone from /proc by the time it is read: still named by its pid.
        let n = unkillable_notice(proc.path(), 99, Duration::ZERO);
        assert_eq!((n.pid, n.comm.as_str(), n.stack.len()), (99, "", 0));
    }

    #[tokio::test]
    async fn runs_and_captures() {
        let r = run(
            req(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Path::new("/proc"),
        )
        .await
        .unwrap();
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.stdout, b"out\n");
        assert_eq!(r.stderr, b"err\n");
        assert!(!r.timed_out);
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let mut q = req(&["sh", "-c", "yes | head -c 100000"]);
        q.max_output_bytes = 1000;
        let r = run(q, Path::new("/proc")).await.unwrap();
        assert_eq!(r.stdout.len(), 1000);
        assert!(r.stdout_truncated);
    }

    #[test]
    fn limits_are_checked_before_anything_runs() {
        let ok = check(&req(&["true"])).unwrap();
        assert_eq!(ok.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ok.output, DEFAULT_OUTPUT);
        let mut q = req(&["true"]);
        q.timeout_ms = u64::MAX;
        q.max_output_bytes = u64::MAX;
        assert_eq!(
            check(&q).unwrap(),
            Limits {
                timeout: MAX_TIMEOUT,
                output: MAX_OUTPUT
            }
        );
        let long = "a".repeat(MAX_ARG_LEN + 1);
        let invalid = |q: ExecRequest| match check(&q) {
            Err(Error::Invalid(msg)) => msg,
            other => panic!("{other:?}"),
        };
        assert!(invalid(req(&["echo", &long])).contains("longer than"));
        let many = vec!["a".repeat(100_000); 11];
        let mut q = req(&["echo"]);
        q.argv.extend(many);
        assert!(invalid(q).contains("in all"));
        let mut q = req(&["true"]);
        q.env = vec!["=x".into()];
        assert!(invalid(q).contains("KEY=VALUE"));
        let mut q = req(&["true"]);
        q.cwd = "/nonexistent/dir".into();
        assert!(invalid(q).contains("cwd"));
        let mut q = req(&["true"]);
        q.cwd = "/etc/passwd".into();
        assert!(invalid(q).contains("not a directory"));
    }

    #[tokio::test]
    async fn output_kept_when_an_escaped_process_holds_the_pipe() {
        // setsid leaves the process group, so the group kill cannot close its pipe (the
        // pause lets it leave before the shell exits and the group is killed).
        let script =
            "echo before; setsid sh -c 'echo escaped; exec sleep 5' & sleep 0.5; echo after";
        let mut q = req(&["sh", "-c", script]);
        q.timeout_ms = 10_000;
        let started = Instant::now();
        let r = run(q, Path::new("/proc")).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(r.stdout, b"before\nescaped\nafter\n");
        assert!(r.stdout_truncated, "the pipe was still open");
    }

    #[tokio::test]
    async fn bad_requests_refused() {
        assert!(matches!(
            run(req(&[]), Path::new("/proc")).await,
            Err(Error::Invalid(_))
        ));
        let mut q = req(&["true"]);
        q.env = vec!["NOEQUALS".into()];
        assert!(matches!(
            run(q, Path::new("/proc")).await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            run(req(&["/nonexistent/cmd"]), Path::new("/proc")).await,
            Err(Error::Spawn { .. })
        ));
    }
}
