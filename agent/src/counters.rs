//! Resource counters from /proc: meminfo, slabinfo, file handles, fds of processes of
//! interest, loadavg, PSI, vmstat, taint and task states. A file that cannot be read
//! is named in the sample, never fatal.

use std::collections::HashMap;
use std::path::Path;

use vexfs_proto::{Counters, Pressure, ProcessFds, SlabCache};

use crate::{hung, taint};

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
    /// Too many module names.
    #[error("modules holds {0} names, more than {MAX_WATCH}")]
    TooManyModules(usize),
    /// A name no module can have.
    #[error("modules name {0:?} must be 1 to 55 letters, digits, '_' or '-'")]
    BadModule(String),
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

/// Checks the module names of a sample request before any sampling.
pub fn check_modules(names: &[String]) -> Result<(), WatchError> {
    if names.len() > MAX_WATCH {
        return Err(WatchError::TooManyModules(names.len()));
    }
    match names
        .iter()
        .find(|n| crate::modules::check_name(n).is_err())
    {
        // A huge name would make a huge message: quote only its start.
        Some(n) => Err(WatchError::BadModule(n.chars().take(32).collect())),
        None => Ok(()),
    }
}

/// Reads `name` under `proc` and parses it with a procfs reader; None (and the name in
/// `unreadable`) when the file is missing or does not parse.
fn read_with<T>(
    proc: &Path,
    name: &str,
    unreadable: &mut Vec<String>,
    parse: impl FnOnce(&[u8]) -> Option<T>,
) -> Option<T> {
    let parsed = std::fs::read(proc.join(name)).ok().and_then(|b| parse(&b));
    if parsed.is_none() {
        unreadable.push(name.to_string());
    }
    parsed
}

/// Takes one sample under `proc` (normally /proc). `fd_watch` names processes (by comm)
/// whose open fds are counted; the agent's own fds are always counted. `modules` names
/// modules whose /proc/modules line (refcount) goes into the sample.
pub fn sample(proc: &Path, fd_watch: &[String], modules: &[String], ts_us: u64) -> Counters {
    use procfs::FromRead;
    let mut c = Counters {
        ts_us,
        ..Default::default()
    };
    let mut unreadable = Vec::new();
    if let Some(m) = read_with(proc, "meminfo", &mut unreadable, |b| {
        procfs::Meminfo::from_read(b).ok()
    }) {
        c.meminfo_kb = meminfo_kb(&m);
    }
    // procfs has no slabinfo reader.
    if let Some(text) = read_with(proc, "slabinfo", &mut unreadable, text) {
        c.slabs = parse_slabinfo(&text);
    }
    // procfs reads file-nr from the fixed /proc only (not a configurable root).
    if let Some(text) = read_with(proc, "sys/fs/file-nr", &mut unreadable, text) {
        let mut it = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        c.file_handles_allocated = it.next().unwrap_or(0);
        let _free = it.next();
        c.file_handles_max = it.next().unwrap_or(0);
    }
    if let Some(l) = read_with(proc, "loadavg", &mut unreadable, |b| {
        procfs::LoadAverage::from_read(b).ok()
    }) {
        (c.load1, c.load5, c.load15) = (wide(l.one), wide(l.five), wide(l.fifteen));
    }
    for res in ["cpu", "memory", "io"] {
        // PSI is absent on kernels without CONFIG_PSI or booted with psi=0: not an error.
        if let Ok(b) = std::fs::read(proc.join("pressure").join(res)) {
            c.pressure
                .push(parse_pressure(res, &String::from_utf8_lossy(&b)));
        }
    }
    if let Some(v) = read_with(proc, "vmstat", &mut unreadable, |b| {
        procfs::VmStat::from_read(b).ok()
    }) {
        c.vmstat = pick_vmstat(v);
    }
    // procfs reads tainted from the fixed /proc only.
    if let Some(text) = read_with(proc, "sys/kernel/tainted", &mut unreadable, text) {
        c.taint_mask = taint::parse(&text).unwrap_or(0);
    }
    let tasks = hung::scan(proc);
    c.processes = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    c.processes_d_state =
        u32::try_from(tasks.iter().filter(|t| t.state == 'D').count()).unwrap_or(u32::MAX);
    let me = std::process::id();
    for t in &tasks {
        if t.pid == me || fd_watch.contains(&t.comm) {
            // Counted by hand: procfs's fast path (the fd directory's st_size, 6.2+)
            // reads a fake tree's directory size as a count.
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
    if !modules.is_empty() {
        // Hand-parsed: procfs's /proc/modules reader drops the address and taint.
        if let Some(text) = read_with(proc, "modules", &mut unreadable, text) {
            c.modules = crate::modules::parse_proc_modules(&text)
                .into_iter()
                .filter(|m| modules.contains(&m.name))
                .collect();
        }
    }
    c.unreadable = unreadable;
    c
}

fn text(b: &[u8]) -> Option<String> {
    Some(String::from_utf8_lossy(b).into_owned())
}

/// An f32 from procfs as the f64 it was written as ("0.1", not 0.100000001).
fn wide(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// The meminfo fields the controller trends, by the kernel's names, in kB (procfs
/// converts to bytes; the proto keeps the file's unit).
pub fn meminfo_kb(m: &procfs::Meminfo) -> HashMap<String, u64> {
    let fields: [(&str, Option<u64>); 24] = [
        ("MemTotal", Some(m.mem_total)),
        ("MemFree", Some(m.mem_free)),
        ("MemAvailable", m.mem_available),
        ("Buffers", Some(m.buffers)),
        ("Cached", Some(m.cached)),
        ("SwapCached", Some(m.swap_cached)),
        ("Active", Some(m.active)),
        ("Inactive", Some(m.inactive)),
        ("SwapTotal", Some(m.swap_total)),
        ("SwapFree", Some(m.swap_free)),
        ("Dirty", Some(m.dirty)),
        ("Writeback", Some(m.writeback)),
        ("AnonPages", m.anon_pages),
        ("Mapped", Some(m.mapped)),
        ("Shmem", m.shmem),
        ("KReclaimable", m.k_reclaimable),
        ("Slab", Some(m.slab)),
        ("SReclaimable", m.s_reclaimable),
        ("SUnreclaim", m.s_unreclaim),
        ("KernelStack", m.kernel_stack),
        ("PageTables", m.page_tables),
        ("Committed_AS", Some(m.committed_as)),
        ("VmallocUsed", Some(m.vmalloc_used)),
        ("Percpu", m.per_cpu),
    ];
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v? / 1024)))
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

/// Parses one /proc/pressure file (`some avg10=.. total=..` and `full ...` lines) with
/// procfs's record parser; a missing or odd line leaves its figures at zero (cpu has
/// no `full` line before 5.13).
pub fn parse_pressure(resource: &str, text: &str) -> Pressure {
    let mut p = Pressure {
        resource: resource.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        // procfs slices the line after "some "/"full " unchecked.
        if line.len() <= 5 {
            continue;
        }
        let Ok(r) = procfs::parse_pressure_record(line) else {
            continue;
        };
        if line.starts_with("some") {
            (p.some_avg10, p.some_total_us) = (wide(r.avg10), r.total);
        } else {
            (p.full_avg10, p.full_total_us) = (wide(r.avg10), r.total);
        }
    }
    p
}

/// Picks the selected counters out of /proc/vmstat (negative drift values are left out).
pub fn pick_vmstat(v: procfs::VmStat) -> HashMap<String, u64> {
    v.0.into_iter()
        .filter(|(k, _)| VMSTAT_KEYS.contains(&k.as_str()))
        .filter_map(|(k, n)| Some((k, u64::try_from(n).ok()?)))
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
        assert!(check_modules(&["vexfs".into()]).is_ok());
        assert!(matches!(
            check_modules(&vec!["m".to_string(); MAX_WATCH + 1]),
            Err(WatchError::TooManyModules(65))
        ));
        let Err(e) = check_modules(&["../x".into()]) else {
            panic!("a path accepted as a module name");
        };
        assert!(e.to_string().contains("must be 1 to 55 letters"), "{e}");
        let Err(WatchError::BadModule(shown)) = check_modules(&["x".repeat(1 << 20)]) else {
            panic!("a 1 MiB module name accepted");
        };
        assert_eq!(shown.len(), 32);
    }

    /// A real /proc/meminfo (6.12 guest), SUnreclaim set to `sunreclaim` kB.
    pub(crate) fn meminfo(sunreclaim: u64) -> String {
        format!(
            "MemTotal:        4000000 kB\nMemFree:         3000000 kB\nMemAvailable:    3500000 kB\n\
             Buffers:            1024 kB\nCached:            40960 kB\nSwapCached:            0 kB\n\
             Active:            10240 kB\nInactive:          30720 kB\nActive(anon):       1568 kB\n\
             Inactive(anon):    5833 kB\nActive(file):      8672 kB\nInactive(file):   24887 kB\n\
             Unevictable:           0 kB\nMlocked:               0 kB\nSwapTotal:             0 kB\n\
             SwapFree:              0 kB\nZswap:                 0 kB\nZswapped:              0 kB\n\
             Dirty:                12 kB\nWriteback:             0 kB\nAnonPages:          7401 kB\n\
             Mapped:             2048 kB\nShmem:               932 kB\nKReclaimable:      30000 kB\n\
             Slab:              50000 kB\nSReclaimable:      30000 kB\nSUnreclaim:    {sunreclaim:>8} kB\n\
             KernelStack:        1824 kB\nPageTables:          436 kB\nSecPageTables:         0 kB\n\
             NFS_Unstable:          0 kB\nBounce:                0 kB\nWritebackTmp:          0 kB\n\
             CommitLimit:     2000000 kB\nCommitted_AS:      24168 kB\nVmallocTotal:   34359738367 kB\n\
             VmallocUsed:        6052 kB\nVmallocChunk:          0 kB\nPercpu:              768 kB\n\
             HugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n"
        )
    }

    #[test]
    fn meminfo_and_slabinfo() {
        use procfs::FromRead;
        let m = procfs::Meminfo::from_read(meminfo(42).as_bytes()).unwrap();
        let m = meminfo_kb(&m);
        assert_eq!(m["MemTotal"], 4_000_000);
        assert_eq!(m["SUnreclaim"], 42);
        assert_eq!(m["Slab"], 50_000);
        assert_eq!(m["MemAvailable"], 3_500_000);
        // A truncated file does not parse: the sample names it unreadable.
        assert!(procfs::Meminfo::from_read(&b"MemTotal: 1000 kB\n"[..]).is_err());
        let s = parse_slabinfo(
            "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\nkmalloc-64 10 20 64 64 1 : tunables 0 0 0\n",
        );
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].active_objs, s[0].total_bytes), (10, 1280));
    }

    #[test]
    fn pressure_and_vmstat() {
        use procfs::FromRead;
        let p = parse_pressure(
            "memory",
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=123\nfull avg10=0.10 avg60=0 avg300=0 total=7\n",
        );
        assert_eq!(
            (p.some_avg10, p.full_avg10, p.some_total_us, p.full_total_us),
            (1.5, 0.1, 123, 7)
        );
        // Odd or short lines are skipped, never a panic.
        let p = parse_pressure(
            "cpu",
            "some\nfull\nsome avg10=2.00 avg60=0 avg300=0 total=9",
        );
        assert_eq!(
            (p.some_avg10, p.some_total_us, p.full_total_us),
            (2.0, 9, 0)
        );
        let v = procfs::VmStat::from_read(
            &b"nr_free_pages 10\nnr_zone_x 3\noom_kill 1\nnr_dirty -2\n"[..],
        )
        .unwrap();
        let v = pick_vmstat(v);
        assert_eq!(v.len(), 2);
        assert_eq!(v["oom_kill"], 1);
        assert!(procfs::VmStat::from_read(&b"pgfault x\n"[..]).is_err());
    }

    #[test]
    fn sample_over_a_fake_tree_names_modules_and_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("meminfo"), meminfo(7)).unwrap();
        std::fs::write(p.join("loadavg"), "0.10 0.25 0.50 1/100 4242\n").unwrap();
        std::fs::write(
            p.join("modules"),
            "vexfs 24576 2 - Live 0xffffffffc0a00000 (OE)\nvsock 57344 1 vmw_vsock, Live 0x0\n",
        )
        .unwrap();
        let c = sample(p, &[], &["vexfs".into(), "absent".into()], 5);
        assert_eq!(c.meminfo_kb["SUnreclaim"], 7);
        assert_eq!((c.load1, c.load5, c.load15), (0.1, 0.25, 0.5));
        assert_eq!(c.modules.len(), 1);
        assert_eq!(
            (c.modules[0].name.as_str(), c.modules[0].refcount),
            ("vexfs", 2)
        );
        assert_eq!(
            c.unreadable,
            ["slabinfo", "sys/fs/file-nr", "vmstat", "sys/kernel/tainted"]
        );
        // No module asked for: /proc/modules is not read.
        std::fs::remove_file(p.join("modules")).unwrap();
        assert!(sample(p, &[], &[], 5).modules.is_empty());
        let c = sample(p, &[], &["vexfs".into()], 5);
        assert!(c.unreadable.contains(&"modules".to_string()));
    }
}
