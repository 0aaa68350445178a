//! Shared set-up for tests and benches that run the real agent binary in its unix-socket
//! development mode over a fake kernel log and /proc tree.
#![allow(dead_code, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use vexfs_proto::agent_client::AgentClient;

/// A fake /proc tree, kmsg file and module directory in a temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Self { dir };
        let p = f.proc();
        let meminfo = meminfo(20_000);
        for (name, text) in [
            ("meminfo", meminfo.as_str()),
            (
                "slabinfo",
                "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize>\nvexfs_inode 12 16 512 8 1 : tunables 0 0 0 : slabdata 2 2 0\nkmalloc-64 100 128 64 64 1 : tunables 0 0 0 : slabdata 2 2 0\n",
            ),
            ("sys/fs/file-nr", "1024\t0\t9223372036854775807\n"),
            ("loadavg", "0.50 0.25 0.10 1/100 4242\n"),
            (
                "vmstat",
                "nr_free_pages 1000\nnr_slab_unreclaimable 500\noom_kill 0\nnr_bogus 1\n",
            ),
            (
                "pressure/memory",
                "some avg10=1.00 avg60=0.50 avg300=0.10 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            ),
            ("sys/kernel/tainted", "12416\n"),
            (
                "sys/kernel/random/boot_id",
                "6f1c7c2a-0000-4000-8000-000000000001\n",
            ),
            ("sys/kernel/osrelease", "6.12.57+deb12-amd64\n"),
            ("uptime", "12.34 10.00\n"),
            (
                "modules",
                "vexfs 24576 0 - Live 0xffffffffc0a00000 (OE)\nvsock 57344 1 vmw_vsock_virtio_transport, Live 0xffffffffc0900000\n",
            ),
            ("sysrq-trigger", ""),
        ] {
            write(&p.join(name), text.as_bytes());
        }
        std::fs::create_dir_all(f.modules_dir()).unwrap();
        write(&f.modules_dir().join("vexfs.ko"), b"not really an ELF");
        write(&f.kmsg(), b"");
        f
    }

    pub fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    pub fn kmsg(&self) -> PathBuf {
        self.dir.path().join("kmsg")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.path().join("mods")
    }

    /// Adds a fake process with a /proc/PID/stat in `state`.
    pub fn add_task(&self, pid: u32, comm: &str, state: char) {
        let d = self.proc().join(pid.to_string());
        let stat = format!(
            "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5555 {STAT_TAIL}\n"
        );
        write(&d.join("stat"), stat.as_bytes());
        write(
            &d.join("stack"),
            b"[<0>] __mutex_lock.constprop.0+0x2a1/0x5e0\n[<0>] vexfs_fault_deadlock+0x1f/0x40 [vexfs]\n",
        );
        write(&d.join("wchan"), b"__mutex_lock.constprop.0");
        std::fs::create_dir_all(d.join("fd")).unwrap();
    }

    /// Appends kmsg records `from..to` (text "line N").
    pub fn append_records(&self, from: u64, to: u64) {
        let mut text = String::new();
        for seq in from..to {
            text.push_str(&format!("6,{seq},{},-,caller=T1;line {seq}\n", seq * 100));
        }
        self.append_kmsg(text.as_bytes());
    }

    pub fn append_kmsg(&self, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.kmsg())
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// Starts the agent binary on this fixture with extra flags.
    pub fn spawn(&self, extra: &[&str]) -> AgentProcess {
        let bin = env!("CARGO_BIN_EXE_vexfs-agent");
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix:{}", self.socket().display()))
            .arg("--kmsg")
            .arg(self.kmsg())
            .arg("--proc")
            .arg(self.proc())
            .arg("--allow-module-dir")
            .arg(self.modules_dir())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agent");
        AgentProcess {
            child,
            socket: self.socket(),
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Fields 23 (vsize) to 52 of a real /proc/PID/stat line (6.12, a shell).
pub const STAT_TAIL: &str = "2596864 221 18446744073709551615 94245385678848 94245386268125 140727401537536 0 0 0 65536 2 0 0 0 17 0 0 0 0 0 0 94245386334448 94245386356304 94245414502400 140727401543387 140727401543397 140727401543397 140727401545709 0";

/// A real /proc/meminfo (6.12 guest, 4 GB), SUnreclaim set to `sunreclaim` kB.
pub fn meminfo(sunreclaim: u64) -> String {
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

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// The running agent; killed on drop.
pub struct AgentProcess {
    pub child: Child,
    pub socket: PathBuf,
}

impl AgentProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects, retrying until the agent listens (at most 10 s).
    pub async fn client(&self) -> AgentClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connect(&self.socket).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("agent never listened: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Resident set size of the agent process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }

    /// Peak resident set size of the agent process, in KiB.
    pub fn hwm_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }
}

/// CPU time (user + system, all threads) a process has used so far, from
/// /proc/PID/stat (PID may be "self").
pub fn cpu_time(pid: impl std::fmt::Display) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// A KiB field of /proc/PID/status (PID may be "self"), 0 when unreadable.
pub fn status_field(pid: impl std::fmt::Display, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gRPC client over a unix socket, with tonic's default 4 MiB message limit like the
/// controller's client: a reply the agent cannot bound below it fails the tests.
pub async fn connect(path: &Path) -> Result<AgentClient<Channel>, tonic::transport::Error> {
    let path = path.to_path_buf();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}
