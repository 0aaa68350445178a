//! Resource counters from /proc: meminfo, slabinfo, file handles, fds of processes of
//! interest, loadavg, PSI, vmstat, taint and task states. A file that cannot be read
//! is named in the sample, never fatal.

use std::collections::HashMap;
use std::path::Path;

use vexfs_proto::{Counters, Pressure, ProcessFds, SlabCache};

use crate::hung;

/// vmstat counters worth trending for a filesystem module under test.
const VMSTAT_KEYS: &[&str] = &[
    "nr_free_pages",
    "nr_slab_reclaimable",
    "nr_slab_unreclaimable",
    "nr_dirty",
    "nr_writeback",
    "nr_file_pages",
    "nr_anon_pages",
    "nr_kernel_stack",
    "nr_page_table_pages",
    "pgfault",
    "pgmajfault",
    "oom_kill",
    "pswpin",
    "pswpout",
    "compact_stall",
    "allocstall_normal",
];

/// Most process names a client may watch: each sample compares every task against them.
pub const MAX_WATCH: usize = 64;
/// Longest process name the kernel keeps (TASK_COMM_LEN - 1): longer never matches.
pub const MAX_COMM: usize = 15;

/// A watch list the agent refuses.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Too many names.
    #[error("fd_watch holds {0} names, more than {MAX_WATCH}")]
    TooMany(usize),
    /// A name no process can have.
    #[error("fd_watch name {0:?} must be 1 to {MAX_COMM} bytes, a process name (comm)")]
    BadName(String),
}

/// Checks an fd watch list before any sampling.
pub fn check_watch(names: &[String]) -> Result<(), WatchError> {
    if names.len() > MAX_WATCH {
        return Err(WatchError::TooMany(names.len()));
    }
    match names.iter().find(|n| n.is_empty() || n.len() > MAX_COMM) {
        // A huge name would make a huge message: quote only its start.
        Some(n) => Err(WatchError::BadName(n.chars().take(32).collect())),
        None => Ok(()),
    }
}

/// Takes one sample under `proc` (normally /proc). `fd_watch` names processes (by comm)
/// whose open fds are counted; the agent's own fds are always counted.
pub fn sample(proc: &Path, fd_watch: &[String], ts_us: u64) -> Counters {
    let mut c = Counters {
        ts_us,
        ..Default::default()
    };
    let mut unreadable = Vec::new();
    let mut read = |name: &str| -> Option<String> {
        match std::fs::read(proc.join(name)) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(_) => {
                unreadable.push(name.to_string());
                None
            }
        }
    };
    if let Some(text) = read("meminfo") {
        c.meminfo_kb = parse_meminfo(&text);
    }
    if let Some(text) = read("slabinfo") {
        c.slabs = parse_slabinfo(&text);
    }
    if let Some(text) = read("sys/fs/file-nr") {
        let mut it = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        c.file_handles_allocated = it.next().unwrap_or(0);
        let _free = it.next();
        c.file_handles_max = it.next().unwrap_or(0);
    }
    if let Some(text) = read("loadavg") {
        let mut it = text
            .split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0));
        c.load1 = it.next().unwrap_or(0.0);
        c.load5 = it.next().unwrap_or(0.0);
        c.load15 = it.next().unwrap_or(0.0);
    }
    for res in ["cpu", "memory", "io"] {
        // PSI is absent on kernels without CONFIG_PSI or booted with psi=0: not an error.
        if let Ok(b) = std::fs::read(proc.join("pressure").join(res)) {
            c.pressure
                .push(parse_pressure(res, &String::from_utf8_lossy(&b)));
        }
    }
    if let Some(text) = read("vmstat") {
        c.vmstat = parse_vmstat(&text);
    }
    if let Some(text) = read("sys/kernel/tainted") {
        c.taint_mask = text.trim().parse().unwrap_or(0);
    }
    let tasks = hung::scan(proc);
    c.processes = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    c.processes_d_state =
        u32::try_from(tasks.iter().filter(|t| t.state == 'D').count()).unwrap_or(u32::MAX);
    let me = std::process::id();
    for t in &tasks {
        if t.pid == me || fd_watch.contains(&t.comm) {
            let fds = std::fs::read_dir(proc.join(t.pid.to_string()).join("fd"))
                .map(|d| d.count())
                .unwrap_or(0);
            c.process_fds.push(ProcessFds {
                pid: t.pid,
                comm: t.comm.clone(),
                fds: u32::try_from(fds).unwrap_or(u32::MAX),
            });
        }
    }
    c.unreadable = unreadable;
    c
}

/// Parses /proc/meminfo into kB values by field name.
pub fn parse_meminfo(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_string(), v))
        })
        .collect()
}

/// Parses /proc/slabinfo (version 2.x): name, active_objs, num_objs, objsize.
pub fn parse_slabinfo(text: &str) -> Vec<SlabCache> {
    text.lines()
        .filter(|l| !l.starts_with("slabinfo") && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let active_objs = f.next()?.parse().ok()?;
            let num_objs: u64 = f.next()?.parse().ok()?;
            let obj_size: u64 = f.next()?.parse().ok()?;
            Some(SlabCache {
                name,
                active_objs,
                num_objs,
                obj_size,
                total_bytes: num_objs.saturating_mul(obj_size),
            })
        })
        .collect()
}

/// Parses one /proc/pressure file: `some avg10=.. total=..` and `full ...` lines.
pub fn parse_pressure(resource: &str, text: &str) -> Pressure {
    let mut p = Pressure {
        resource: resource.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let kind = f.next();
        let mut avg10 = 0.0;
        let mut total = 0;
        for kv in f {
            match kv.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse().unwrap_or(0.0),
                Some(("total", v)) => total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        match kind {
            Some("some") => (p.some_avg10, p.some_total_us) = (avg10, total),
            Some("full") => (p.full_avg10, p.full_total_us) = (avg10, total),
            _ => {}
        }
    }
    p
}

/// Picks the selected counters out of /proc/vmstat.
pub fn parse_vmstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            VMSTAT_KEYS
                .contains(&k)
                .then(|| Some((k.to_string(), v.trim().parse().ok()?)))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lists_are_bounded() {
        assert!(check_watch(&[]).is_ok());
        assert!(check_watch(&["mount".into(), "a".repeat(MAX_COMM)]).is_ok());
        assert!(matches!(
            check_watch(&vec!["sh".to_string(); MAX_WATCH + 1]),
            Err(WatchError::TooMany(65))
        ));
        assert!(matches!(
            check_watch(&[String::new()]),
            Err(WatchError::BadName(_))
        ));
        let Err(WatchError::BadName(shown)) = check_watch(&["x".repeat(1 << 20)]) else {
            panic!("a 1 MiB name accepted");
        };
        assert_eq!(shown.len(), 32);
    }

    #[test]
    fn meminfo_and_slabinfo() {
        let m = parse_meminfo("MemTotal:  1000 kB\nSUnreclaim: 42 kB\nHugePages_Total: 0\nbad\n");
        assert_eq!(m["MemTotal"], 1000);
        assert_eq!(m["SUnreclaim"], 42);
        assert_eq!(m["HugePages_Total"], 0);
        let s = parse_slabinfo(
            "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\nkmalloc-64 10 20 64 64 1 : tunables 0 0 0\n",
        );
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].active_objs, s[0].total_bytes), (10, 1280));
    }

    #[test]
    fn pressure_and_vmstat() {
        let p = parse_pressure(
            "memory",
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=123\nfull avg10=0.25 avg60=0 avg300=0 total=7\n",
        );
        assert_eq!(
            (p.some_avg10, p.some_total_us, p.full_total_us),
            (1.5, 123, 7)
        );
        let v = parse_vmstat("nr_free_pages 10\nnr_zone_x 3\noom_kill 1\npgfault x\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v["oom_kill"], 1);
    }
}
