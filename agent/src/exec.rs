//! Runs workload commands in the guest: own process group, timeout that kills the whole
//! group, bounded output kept per stream.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use vexfs_proto::{ExecReply, ExecRequest};

/// Timeout when the request gives none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest timeout accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Output kept per stream when the request gives no limit.
const DEFAULT_OUTPUT: u64 = 1 << 20;
/// Largest output limit accepted per stream.
const MAX_OUTPUT: u64 = 16 << 20;
/// How long to wait for output pipes after the command exits: a background grandchild
/// may hold them open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Most argv entries or env entries accepted.
const MAX_ARGS: usize = 4096;

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

/// Runs the request to completion or timeout.
pub async fn run(req: ExecRequest) -> Result<ExecReply, Error> {
    let cmd = req
        .argv
        .first()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::Invalid("argv is empty".into()))?
        .clone();
    if req.argv.len() > MAX_ARGS || req.env.len() > MAX_ARGS {
        return Err(Error::Invalid(format!(
            "more than {MAX_ARGS} argv or env entries"
        )));
    }
    if req.argv.iter().chain(&req.env).any(|a| a.contains('\0')) {
        return Err(Error::Invalid("argv or env holds NUL".into()));
    }
    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms).min(MAX_TIMEOUT),
    };
    let limit = match req.max_output_bytes {
        0 => DEFAULT_OUTPUT,
        n => n.min(MAX_OUTPUT),
    };
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
    for kv in &req.env {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Error::Invalid(format!("env entry {kv:?} is not KEY=VALUE")))?;
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
    let out = tokio::spawn(collect(child.stdout.take(), limit));
    let err = tokio::spawn(collect(child.stderr.take(), limit));

    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (
            status.map_err(|source| Error::Wait {
                cmd: cmd.clone(),
                source,
            })?,
            false,
        ),
        Err(_) => {
            kill_group(pid);
            let status = child.wait().await.map_err(|source| Error::Wait {
                cmd: cmd.clone(),
                source,
            })?;
            (status, true)
        }
    };
    let duration = started.elapsed();
    // Leftover members of the group (background jobs) would hold the pipes open.
    kill_group(pid);
    let (stdout, stdout_truncated) = drained(out).await;
    let (stderr, stderr_truncated) = drained(err).await;
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecReply {
        exit_code: status.code().unwrap_or(-1),
        signal: status.signal().unwrap_or(0),
        stdout,
        stderr,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        timed_out,
        stdout_truncated,
        stderr_truncated,
        pid,
    })
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

async fn drained(task: tokio::task::JoinHandle<(Vec<u8>, bool)>) -> (Vec<u8>, bool) {
    let abort = task.abort_handle();
    match tokio::time::timeout(DRAIN_GRACE, task).await {
        Ok(Ok(r)) => r,
        _ => {
            abort.abort();
            (Vec::new(), true)
        }
    }
}

/// Reads a pipe to its end, keeping the first `limit` bytes; the rest is read and
/// dropped so a chatty command never blocks on a full pipe.
async fn collect<R: AsyncRead + Unpin>(pipe: Option<R>, limit: u64) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
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

    #[tokio::test]
    async fn runs_and_captures() {
        let r = run(req(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
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
        let r = run(q).await.unwrap();
        assert_eq!(r.stdout.len(), 1000);
        assert!(r.stdout_truncated);
    }

    #[tokio::test]
    async fn bad_requests_refused() {
        assert!(matches!(run(req(&[])).await, Err(Error::Invalid(_))));
        let mut q = req(&["true"]);
        q.env = vec!["NOEQUALS".into()];
        assert!(matches!(run(q).await, Err(Error::Invalid(_))));
        assert!(matches!(
            run(req(&["/nonexistent/cmd"])).await,
            Err(Error::Spawn { .. })
        ));
    }
}
