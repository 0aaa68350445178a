//! Hung tasks: the kernel's own `INFO: task NAME:PID blocked for more than N seconds`
//! notices, and the agent's scan of /proc for tasks stuck in D state. The scan matters
//! because the kernel's detector goes silent after the first oops (taint D).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use vexfs_proto::{HungSource, HungTask};

/// Parses the kernel's hung-task notice out of a kmsg record's text.
pub fn parse_kernel_notice(text: &str) -> Option<HungTask> {
    let rest = text.trim_start().strip_prefix("INFO: task ")?;
    let (task, tail) = rest.split_once(" blocked for more than ")?;
    // The command name may itself contain ':'; the pid follows the last one.
    let (comm, pid) = task.rsplit_once(':')?;
    let pid = pid.parse().ok()?;
    let secs = tail.split_whitespace().next()?.parse().ok()?;
    Some(HungTask {
        pid,
        comm: comm.to_string(),
        blocked_secs: secs,
        source: HungSource::Kernel as i32,
        ..Default::default()
    })
}

/// One task as seen in /proc/PID/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStat {
    /// Process id.
    pub pid: u32,
    /// Command name (between the parentheses).
    pub comm: String,
    /// State letter (R, S, D, Z, T, I, ...).
    pub state: char,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    pub starttime: u64,
    /// Process group id.
    pub pgrp: u32,
}

/// Parses a /proc/PID/stat line with the procfs crate. The comm may hold spaces and
/// parentheses; procfs splits after the last ')'.
pub fn parse_stat(line: &str) -> Option<TaskStat> {
    use procfs::FromRead;
    // procfs slices around the parentheses unchecked (`pid` before "(" and ") " after):
    // a line without them would panic, and the agent aborts on panic. The kernel always
    // writes them; a fake or torn file may not.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if open == 0 || close < open || !line[close..].starts_with(") ") {
        return None;
    }
    let s = procfs::process::Stat::from_read(line.as_bytes()).ok()?;
    Some(TaskStat {
        pid: u32::try_from(s.pid).ok()?,
        comm: s.comm,
        state: s.state,
        starttime: s.starttime,
        pgrp: u32::try_from(s.pgrp).unwrap_or(0),
    })
}

/// Reads and parses /proc/PID/stat under `proc`; None when the process is gone.
pub fn read_task(proc: &Path, pid: u32) -> Option<TaskStat> {
    let bytes = std::fs::read(proc.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// Tracks how long each task has been in D state across scans and reports a task once
/// per blocked episode when it passes the threshold. Pure: the caller passes the time.
#[derive(Debug)]
pub struct DStateTracker {
    threshold: Duration,
    /// (pid, starttime) -> (first seen in D, already reported)
    seen: HashMap<(u32, u64), (Instant, bool)>,
}

impl DStateTracker {
    /// A tracker reporting tasks blocked for longer than `threshold`.
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            seen: HashMap::new(),
        }
    }

    /// Updates with one scan taken at `now`; returns the tasks to report now, with how
    /// long they have been blocked.
    pub fn update(&mut self, now: Instant, tasks: &[TaskStat]) -> Vec<(TaskStat, Duration)> {
        let mut current = HashMap::with_capacity(self.seen.len());
        let mut report = Vec::new();
        for t in tasks.iter().filter(|t| t.state == 'D') {
            let key = (t.pid, t.starttime);
            let (since, mut reported) = self.seen.get(&key).copied().unwrap_or((now, false));
            let blocked = now.saturating_duration_since(since);
            if !reported && blocked >= self.threshold {
                reported = true;
                report.push((t.clone(), blocked));
            }
            current.insert(key, (since, reported));
        }
        // Tasks that left D state start a new episode next time.
        self.seen = current;
        report
    }
}

/// Reads every /proc/PID/stat under `proc`. Unreadable or vanished entries are skipped:
/// processes come and go between readdir and open.
pub fn scan(proc: &Path) -> Vec<TaskStat> {
    let Ok(dir) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .iter()
                .all(u8::is_ascii_digit)
        })
        .filter_map(|e| std::fs::read(e.path().join("stat")).ok())
        .filter_map(|b| parse_stat(&String::from_utf8_lossy(&b)))
        .collect()
}

/// Builds the notice for a task found by the scan, with its kernel stack and wchan.
pub fn dstate_notice(proc: &Path, task: &TaskStat, blocked: Duration) -> HungTask {
    let dir = proc.join(task.pid.to_string());
    let stack = std::fs::read(dir.join("stack"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let wchan = std::fs::read(dir.join("wchan"))
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    HungTask {
        pid: task.pid,
        comm: task.comm.clone(),
        blocked_secs: blocked.as_secs(),
        source: HungSource::DstateScan as i32,
        stack,
        wchan,
        kmsg_seq: 0,
    }
}

/// Fields 23 (vsize) to 52 of a real /proc/PID/stat line (6.12, a shell), for tests
/// that write fake stat files.
#[cfg(test)]
pub(crate) const STAT_TAIL: &str = "2596864 221 18446744073709551615 94245385678848 94245386268125 140727401537536 0 0 0 65536 2 0 0 0 17 0 0 0 0 0 0 94245386334448 94245386356304 94245414502400 140727401543387 140727401543397 140727401543397 140727401545709 0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_notice_parsed() {
        let t = parse_kernel_notice("INFO: task sh:123 blocked for more than 5 seconds.").unwrap();
        assert_eq!((t.pid, t.comm.as_str(), t.blocked_secs), (123, "sh", 5));
        let t = parse_kernel_notice("INFO: task kworker/0:1:45 blocked for more than 120 seconds.")
            .unwrap();
        assert_eq!((t.pid, t.comm.as_str()), (45, "kworker/0:1"));
        assert!(parse_kernel_notice("INFO: rcu_sched self-detected stall").is_none());
        assert!(parse_kernel_notice("INFO: task x:y blocked for more than 5 seconds.").is_none());
    }

    #[test]
    fn stat_with_odd_comm() {
        let line = format!(
            "42 (a) b (c)) D 1 40 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 {STAT_TAIL}"
        );
        let s = parse_stat(&line).unwrap();
        assert_eq!(
            (s.pid, s.comm.as_str(), s.state, s.starttime, s.pgrp),
            (42, "a) b (c)", 'D', 777, 40)
        );
        // Odd lines are refused, never a panic (the agent aborts on panic).
        for bad in [
            "garbage",
            "1 (x) R 1",
            "(x) R 1",
            "1 (x)",
            "1 (x)R",
            "1 )x( R",
            "",
            "-1 (x) R 1",
        ] {
            assert!(parse_stat(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn tracker_reports_once_per_episode() {
        let t0 = Instant::now();
        let mut tr = DStateTracker::new(Duration::from_secs(2));
        let d = |state| TaskStat {
            pid: 7,
            comm: "w".into(),
            state,
            starttime: 1,
            pgrp: 7,
        };
        assert!(tr.update(t0, &[d('D')]).is_empty());
        assert!(tr.update(t0 + Duration::from_secs(1), &[d('D')]).is_empty());
        let r = tr.update(t0 + Duration::from_secs(3), &[d('D')]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, Duration::from_secs(3));
        assert!(tr.update(t0 + Duration::from_secs(4), &[d('D')]).is_empty());
        // Leaves D, comes back: a new episode.
        assert!(tr.update(t0 + Duration::from_secs(5), &[d('S')]).is_empty());
        assert!(tr.update(t0 + Duration::from_secs(6), &[d('D')]).is_empty());
        assert_eq!(tr.update(t0 + Duration::from_secs(9), &[d('D')]).len(), 1);
    }
}
