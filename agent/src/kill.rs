//! KillProcess: signal a process (or its group) and wait until it is gone; one that
//! stays, asleep in the kernel (a deadlocked module), is reported with its state,
//! wchan and stack instead of being waited for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use vexfs_proto::{HungSource, KillProcessReply, KillProcessRequest};

use crate::hung::{self, TaskStat};

/// Wait when the request gives none.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// Longest wait accepted.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often the process table is looked at while waiting.
const POLL: Duration = Duration::from_millis(20);
/// The kernel's largest pid (PID_MAX_LIMIT on 64-bit).
const PID_MAX: u32 = 1 << 22;

/// A request the agent refuses, or a signal the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad pid or signal.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// kill(2) failed for another reason than ESRCH (EPERM: not ours to signal).
    #[error("kill {target}: {errno}")]
    Signal {
        /// The pid, or "-pgid" for a group.
        target: String,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// A checked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Process (or group) id.
    pub pid: u32,
    /// The signal.
    pub signal: Signal,
    /// The whole group.
    pub group: bool,
    /// How long to wait for it to be gone.
    pub wait: Duration,
}

/// Checks a request; `me` and `my_group` are the agent's own pid and process group.
pub fn check(req: &KillProcessRequest, me: u32, my_group: u32) -> Result<Target, Error> {
    let pid = req.pid;
    let bad = |why: String| Err(Error::Invalid(why));
    match pid {
        0 => return bad("pid 0 would signal the agent's own group".into()),
        1 => return bad("pid 1 is init: killing it panics the guest".into()),
        p if p > PID_MAX => return bad(format!("pid {p} is above the kernel's limit {PID_MAX}")),
        p if p == me => return bad(format!("pid {p} is the agent itself")),
        p if req.process_group && p == my_group => {
            return bad(format!("process group {p} holds the agent"));
        }
        _ => {}
    }
    let signal = match req.signal {
        0 => Signal::SIGKILL,
        n => match Signal::try_from(n) {
            Ok(s) => s,
            Err(_) => return bad(format!("signal {n} is not one of 1..31")),
        },
    };
    let wait = match req.wait_ms {
        0 => DEFAULT_WAIT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_WAIT),
    };
    Ok(Target {
        pid,
        signal,
        group: req.process_group,
        wait,
    })
}

/// The live (not zombie) tasks of the target under `proc`.
pub fn survivors(proc: &Path, target: &Target) -> Vec<TaskStat> {
    let alive = |t: &TaskStat| !matches!(t.state, 'Z' | 'X' | 'x');
    if target.group {
        hung::scan(proc)
            .into_iter()
            .filter(|t| t.pgrp == target.pid && alive(t))
            .collect()
    } else {
        hung::read_task(proc, target.pid)
            .filter(alive)
            .into_iter()
            .collect()
    }
}

/// Sends the signal and waits; `proc` is the proc tree the process is looked up in.
pub async fn kill(req: KillProcessRequest, proc: PathBuf) -> Result<KillProcessReply, Error> {
    // getpgrp cannot fail.
    let my_group = u32::try_from(nix::unistd::getpgrp().as_raw()).unwrap_or(0);
    let target = check(&req, std::process::id(), my_group)?;
    // Checked above: 2..=PID_MAX fits an i32.
    let raw = i32::try_from(target.pid).unwrap_or(i32::MAX);
    let sent = if target.group {
        nix::sys::signal::killpg(Pid::from_raw(raw), target.signal)
    } else {
        nix::sys::signal::kill(Pid::from_raw(raw), target.signal)
    };
    let existed = match sent {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(errno) => {
            let sign = if target.group { "-" } else { "" };
            return Err(Error::Signal {
                target: format!("{sign}{}", target.pid),
                errno,
            });
        }
    };
    let started = Instant::now();
    loop {
        let (p, t) = (proc.clone(), target);
        let left = tokio::task::spawn_blocking(move || survivors(&p, &t))
            .await
            .unwrap_or_default();
        let waited = started.elapsed();
        let Some(first) = left.into_iter().next() else {
            return Ok(KillProcessReply {
                gone: true,
                existed,
                waited_ms: ms(waited),
                ..Default::default()
            });
        };
        if waited >= target.wait {
            let mut stuck = hung::dstate_notice(&proc, &first, waited);
            stuck.source = HungSource::KillProcess as i32;
            return Ok(KillProcessReply {
                gone: false,
                existed,
                state: first.state.to_string(),
                stuck: Some(stuck),
                waited_ms: ms(waited),
            });
        }
        tokio::time::sleep(POLL.min(target.wait - waited)).await;
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pid: u32, signal: i32, group: bool, wait_ms: u32) -> KillProcessRequest {
        KillProcessRequest {
            pid,
            signal,
            process_group: group,
            wait_ms,
        }
    }

    #[test]
    fn requests_are_checked() {
        let t = check(&req(42, 0, false, 0), 7, 7).unwrap();
        assert_eq!(
            (t.signal, t.wait, t.group),
            (Signal::SIGKILL, DEFAULT_WAIT, false)
        );
        let t = check(&req(42, 15, true, u32::MAX), 7, 7).unwrap();
        assert_eq!((t.signal, t.wait), (Signal::SIGTERM, MAX_WAIT));
        for (r, says) in [
            (req(0, 0, false, 0), "pid 0"),
            (req(1, 0, false, 0), "init"),
            (req(7, 0, false, 0), "the agent itself"),
            (req(9, 0, true, 0), "holds the agent"),
            (req(PID_MAX + 1, 0, false, 0), "above the kernel's limit"),
            (req(42, 99, false, 0), "signal 99"),
            (req(42, -9, false, 0), "signal -9"),
        ] {
            let Err(Error::Invalid(msg)) = check(&r, 7, 9) else {
                panic!("{r:?} accepted");
            };
            assert!(msg.contains(says), "{msg}");
        }
        // The agent's own group is fine to name as a single pid.
        assert!(check(&req(9, 0, false, 0), 7, 9).is_ok());
    }

    #[test]
    fn survivors_skip_zombies_and_other_groups() {
        let dir = tempfile::tempdir().unwrap();
        let task = |pid: u32, pgrp: u32, state: char| {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let stat = format!(
                "{pid} (w) {state} 1 {pgrp} {pgrp} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 9 {}\n",
                hung::STAT_TAIL
            );
            std::fs::write(d.join("stat"), stat).unwrap();
        };
        task(100, 100, 'D');
        task(101, 100, 'Z');
        task(102, 100, 'S');
        task(103, 5, 'R');
        let t = |pid, group| Target {
            pid,
            signal: Signal::SIGKILL,
            group,
            wait: DEFAULT_WAIT,
        };
        let pids = |v: Vec<TaskStat>| {
            let mut p: Vec<u32> = v.iter().map(|t| t.pid).collect();
            p.sort_unstable();
            p
        };
        assert_eq!(pids(survivors(dir.path(), &t(100, true))), [100, 102]);
        assert_eq!(pids(survivors(dir.path(), &t(100, false))), [100]);
        assert!(survivors(dir.path(), &t(101, false)).is_empty());
        assert!(survivors(dir.path(), &t(999, false)).is_empty());
        assert!(survivors(dir.path(), &t(999, true)).is_empty());
    }
}
