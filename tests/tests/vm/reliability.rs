//! The harness under faults of its own: a stream cut a hundred times, a frozen VMM, a
//! dead vsock daemon, a guest that never boots, a module that will not unload, full
//! disks. Each gives the right verdict and recovery, or a clear error, loses nothing,
//! and leaves no process behind.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_stream::StreamExt;
use vexfs_controller::client::AgentClient;
use vexfs_controller::recovery::{Fate, Level, Outcome};
use vexfs_controller::store::Store;
use vexfs_controller::supervisor::WatchOptions;
use vexfs_controller::trend;
use vexfs_controller::verdict::Timeouts;
use vexfs_proto::{ModuleOutcome, StreamRequest, UnloadModuleRequest, event};

use super::recovery::{actions, bench, first_crash, recover};
use super::runner::vexctl;
use super::{assert_no_orphans, boot, config, manifest, rt, serial, spawn_sh};

/// A small deterministic generator: the schedule of cuts is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Starts a guest shell that writes numbered debug-level lines to /dev/kmsg as fast as
/// it can (one open per line: /dev/kmsg rate-limits per open file). Level 7 stays off
/// the console. Padding fills the ring quickly so a paused reader loses records.
fn start_logger(client: &AgentClient) {
    let pad = "p".repeat(300);
    let script =
        format!("i=0; while :; do echo \"<7>vexfs-soak $i {pad}\" > /dev/kmsg; i=$((i+1)); done");
    spawn_sh(
        client.clone().with_call_timeout(Duration::from_secs(600)),
        script,
        Duration::from_secs(500),
    );
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn hundred_stream_cuts_lose_and_duplicate_nothing() {
    let _one = serial();
    rt().block_on(async {
        let m = manifest(None);
        let (vm, client, _, _) = boot(&config(&m)).await;
        let addr = vm.agent_address().unwrap().clone();
        start_logger(&client);
        let mut rng = Lcg(7);
        let (mut next, mut delivered, mut lost, mut gaps_after_pause) = (0u64, 0u64, 0u64, 0);
        let mut soak_lines = 0u64;
        for cut in 0..100 {
            // Every tenth cut the reader stays away long enough for the ring to wrap.
            let paused = cut % 10 == 9;
            if paused {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut c = AgentClient::connect(&addr).await.unwrap();
            let mut stream = c
                .stream_events(StreamRequest {
                    from_seq: next,
                    heartbeat_ms: 1000,
                    disable_counters: true,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("cut {cut}: stream: {e}"));
            let want = 1 + rng.below(400);
            let mut got = 0;
            let mut first = true;
            while got < want {
                let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("cut {cut}: no event in 20 s"))
                    .unwrap_or_else(|| panic!("cut {cut}: stream ended"))
                    .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                match ev.kind {
                    Some(event::Kind::Kmsg(r)) => {
                        assert_eq!(r.seq, next, "cut {cut}: record out of sequence");
                        next += 1;
                        got += 1;
                        delivered += 1;
                        soak_lines += u64::from(r.text.starts_with("vexfs-soak "));
                    }
                    Some(event::Kind::Gap(g)) => {
                        assert_eq!(g.from, next, "cut {cut}: gap must start where we are");
                        assert!(g.to >= g.from, "cut {cut}: empty gap {g:?}");
                        lost += g.to - g.from + 1;
                        next = g.to + 1;
                        gaps_after_pause += usize::from(paused && first);
                    }
                    _ => {}
                }
                first = false;
            }
            // The cut: the connection drops mid-stream, with records in flight.
            drop(stream);
            drop(c);
        }
        eprintln!(
            "100 cuts: {delivered} records delivered in sequence, {lost} overwritten and \
             reported as gaps ({gaps_after_pause} of 10 pauses wrapped the ring), \
             {soak_lines} logger lines"
        );
        assert!(soak_lines > 1000, "the logger barely ran: {soak_lines}");
        assert!(
            gaps_after_pause > 0,
            "no pause ever wrapped the ring: gaps untested"
        );
        let run_dir = vm.run_dir().display().to_string();
        vm.kill();
        assert_no_orphans(&run_dir);
    });
}

/// Hang verdicts quickly: these faults give no kernel report to wait for.
fn quick_silence() -> WatchOptions {
    WatchOptions {
        timeouts: Timeouts {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(4),
        },
        ..Default::default()
    }
}

fn signal(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn sigstopped_qemu_is_a_frozen_vmm_and_relaunched() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("qemu-sigstop", quick_silence()).await;
        let vm = b.guest.vm().unwrap();
        let (pid, run_dir) = (vm.qemu_pid().unwrap(), vm.run_dir().display().to_string());
        let old_boot = b.guest.health.boot_id.clone();
        signal(pid, Signal::SIGSTOP);
        let crash = first_crash(&mut b, Duration::from_secs(30)).await;
        assert_eq!(crash.verdict_name(), "vmm_hung", "{}", crash.title);
        assert_eq!(
            crash.category,
            vexfs_controller::classify::Category::SystemHang
        );
        let h = recover(&mut b, crash).await;
        // A stopped QEMU cannot reset its guest: it is killed and the VM relaunched.
        assert!(actions(&h).contains(&"relaunch_vm"), "{:?}", actions(&h));
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
        assert_ne!(b.guest.health.boot_id, old_boot);
        // The stopped QEMU and its daemon are gone (SIGKILL reaches a stopped process).
        assert_no_orphans(&run_dir);
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn vsock_daemon_killed_is_a_dead_backend_and_relaunched() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("vsock-daemon-kill", WatchOptions::default()).await;
        let vm = b.guest.vm().unwrap();
        let pid = vm.daemon_pid().expect("guest runs with vhost-device-vsock");
        let run_dir = vm.run_dir().display().to_string();
        let killed = Instant::now();
        signal(pid, Signal::SIGKILL);
        let crash = first_crash(&mut b, Duration::from_secs(20)).await;
        // Told from the daemon's exit, not from ten seconds of silence.
        assert!(
            crash.at - killed < Duration::from_secs(2),
            "{:?}",
            crash.at - killed
        );
        assert_eq!(
            crash.verdict_name(),
            "vsock_backend_dead",
            "{}",
            crash.title
        );
        let h = recover(&mut b, crash).await;
        // The guest still runs: its state is captured (sysrq over QMP) before the
        // relaunch that brings a new daemon.
        assert_eq!(actions(&h)[..2], ["collect_forensics", "relaunch_vm"]);
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
        let new_daemon = b.guest.vm().unwrap().daemon_pid().unwrap();
        assert_ne!(new_daemon, pid);
        assert_no_orphans(&run_dir);
    });
}

/// Asserts that no process still belongs to the VMs of controller `pid` (their run
/// dirs are named after it).
fn assert_no_vm_of(pid: u32) {
    assert_no_orphans(&format!("vexfs-vm-{pid}-"));
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn guest_that_never_boots_is_a_clear_harness_error() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    // No init to run: the kernel falls back to mounting a root it does not have.
    std::fs::write(
        &plan,
        "name = \"never-boots\"\nkernels = [\"latest-6.12\"]\n\n[guest]\ncmdline = [\"rdinit=/nonexistent\"]\n\n[[test]]\nname = \"t\"\nsteps = [\"load\"]\n",
    )
    .unwrap();
    let db = dir.path().join("crashes.db");
    let started = Instant::now();
    let json = dir.path().join("results.json");
    let child = std::process::Command::new(vexctl())
        .args(["run", "--plan"])
        .arg(&plan)
        .arg("--json")
        .arg(&json)
        .arg("--db")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 2: the harness could not test; not a test failure.
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("guest kernel panicked while booting")
            && text.contains("VFS: Unable to mount root fs"),
        "{text}"
    );
    // Told from the console's panic line, not from the 90 s boot timeout.
    assert!(took < Duration::from_secs(45), "took {took:?}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let kernel = &results["kernels"][0];
    assert!(
        kernel["harness_error"]
            .as_str()
            .is_some_and(|e| e.contains("VFS: Unable to mount root fs")),
        "{kernel}"
    );
    assert_eq!(kernel["tests"][0]["status"], "error", "{kernel}");
    assert_no_vm_of(pid);
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn module_that_will_not_unload_escalates_to_a_restart() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("busy-unload", WatchOptions::default()).await;
        // A mounted vexfs holds a reference: delete_module says EBUSY, every time.
        let hold = "mkdir -p /mnt/busy && mount -t vexfs none /mnt/busy";
        let r = b
            .guest
            .exec(&["sh", "-c", hold], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        let reply = b
            .guest
            .client()
            .unload_module(UnloadModuleRequest {
                name: "vexfs".into(),
                deadline_ms: 2000,
                force: false,
            })
            .await
            .unwrap();
        assert_ne!(reply.outcome, ModuleOutcome::Ok as i32, "{reply:?}");
        assert!(
            reply.detail.contains("in use") || reply.detail.contains("busy"),
            "unclear refusal: {reply:?}"
        );
        // A leak calls for a graceful unload-cleanup-reload, which cannot happen here.
        let leaks = [trend::Trend {
            name: "SUnreclaim".into(),
            unit: "kB".into(),
            slope: 64.0,
            lower: 60.0,
            upper: 68.0,
            n: 16,
            growth_lower: 960.0,
            leaking: true,
        }];
        let crash =
            vexfs_controller::incident::Incident::leak(&leaks, "vexfs", "mount", Instant::now());
        let old_boot = b.guest.health.boot_id.clone();
        let h = recover(&mut b, crash).await;
        let unloads: Vec<_> = h
            .steps
            .iter()
            .filter(|(_, a, _, _)| a.name() == "unload_module")
            .map(|(_, _, o, _)| *o)
            .collect();
        // Level 1 tried (with backoff between attempts), failed every time, and the
        // ladder escalated to a restart, which frees the module with the guest.
        assert!(unloads.len() >= 2, "{:?}", actions(&h));
        assert!(
            unloads.iter().all(|o| *o != Outcome::Succeeded),
            "{unloads:?}"
        );
        assert!(actions(&h).contains(&"backoff"), "{:?}", actions(&h));
        assert_eq!(
            (h.level, h.fate),
            (Level::SystemReset, Fate::RestartRequired)
        );
        assert_ne!(b.guest.health.boot_id, old_boot);
    });
}

/// A small tmpfs of its own, unmounted on drop (mounting needs root, which the VM
/// tests have: /dev/kvm, vhost).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the full-disk test mounts a tmpfs: run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs failed");
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk says ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0xa5u8; 4096];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        let _ = f.flush();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const DISK_FULL_PLAN: &str = r#"
name = "db-disk-full"
kernels = ["latest-6.12"]

[[test]]
name = "first"
timeout_s = 60
steps = ["load", { exec = { cmd = "sleep 4" } }]

[[test]]
name = "crash"
timeout_s = 60
expect_crash = "NULL pointer dereference in vexfs_fault_null"
steps = [{ trigger = "null" }]

[[test]]
name = "last"
timeout_s = 60
steps = [{ exec = { cmd = "true" } }]
"#;

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn database_disk_full_stops_clearly_and_resume_loses_nothing() {
    let _one = serial();
    let disk = SmallDisk::mount("2m");
    let db = disk.path().join("crashes.db");
    let plan = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(plan.path(), DISK_FULL_PLAN).unwrap();
    let child = std::process::Command::new(vexctl())
        .args(["run", "--plan"])
        .arg(plan.path())
        .arg("--db")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Fill the disk while the first test runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the first test never started");
        std::thread::sleep(Duration::from_millis(100));
        let running = Store::open(&db)
            .and_then(|s| s.tests(1))
            .is_ok_and(|t| t.iter().any(|t| t.2 == "first" && t.3 == "running"));
        if running {
            break;
        }
    }
    disk.fill();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("the disk is full"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_no_vm_of(pid);
    // Space again: the resumed run finishes, and the crash that happened while the disk
    // was full is in the database now.
    disk.free();
    let out = std::process::Command::new(vexctl())
        .args(["run", "--quiet", "--resume", "1", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let store = Store::open(&db).unwrap();
    let status: Vec<(String, String)> = store
        .tests(1)
        .unwrap()
        .into_iter()
        .map(|t| (t.2, t.3))
        .collect();
    assert_eq!(
        status,
        [
            ("first".to_string(), "passed".to_string()),
            ("crash".into(), "passed".into()),
            ("last".into(), "passed".into())
        ]
    );
    let crashes = store.crashes(Some(1), 100).unwrap();
    assert!(
        crashes.iter().any(|c| c
            .crash
            .title
            .contains("NULL pointer dereference in vexfs_fault_null")),
        "{crashes:?}"
    );
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn guest_disk_full_fails_the_workload_not_the_harness() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("guest-disk-full", WatchOptions::default()).await;
        // The guest's root is the initramfs on tmpfs (half the RAM): fill it.
        let fill = "dd if=/dev/zero of=/fill bs=1M 2>&1";
        let r = b
            .guest
            .exec(&["sh", "-c", fill], Duration::from_secs(120))
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        assert!(out.contains("No space left on device"), "{out}");
        // A workload that writes fails with the kernel's reason, exit status intact.
        let r = b
            .guest
            .exec(&["sh", "-c", "echo data > /probe"], Duration::from_secs(10))
            .await
            .unwrap();
        assert_ne!(r.exit_code, 0);
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("No space left on device"),
            "{r:?}"
        );
        // The harness does not need the disk: health, counters, the kernel log stream,
        // module unload and load, and the smoke test (vexfs lives in memory) all work.
        let health = b.guest.client().health().await.unwrap();
        assert_eq!(health.boot_id, b.guest.health.boot_id);
        b.guest
            .exec(
                &["sh", "-c", "echo vexfs-disk-full-marker > /dev/kmsg"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let marker = b
            .guest
            .vm()
            .unwrap()
            .wait_for_console(Duration::from_secs(10), |l| {
                l.text.contains("vexfs-disk-full-marker")
            })
            .await
            .unwrap();
        assert!(marker.is_some(), "kernel log line lost with a full disk");
        let c = b
            .guest
            .client()
            .sample_counters(Default::default())
            .await
            .unwrap();
        assert!(c.meminfo_kb.contains_key("MemAvailable"), "{c:?}");
        let unload = b
            .guest
            .client()
            .unload_module(UnloadModuleRequest {
                name: "vexfs".into(),
                deadline_ms: 5000,
                force: false,
            })
            .await
            .unwrap();
        assert_eq!(unload.outcome, ModuleOutcome::Ok as i32, "{unload:?}");
        assert_eq!(b.guest.load_module().await.unwrap(), Outcome::Succeeded);
        assert_eq!(b.guest.smoke_test().await, Outcome::Succeeded);
        assert_eq!(
            b.guest.watch().verdict(),
            vexfs_controller::verdict::Verdict::Healthy
        );
        // Cleaned up, writes work again.
        let r = b
            .guest
            .exec(
                &["sh", "-c", "rm /fill && echo data > /probe && cat /probe"],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "data", "{r:?}");
    });
}

const KILL_PLAN: &str = r#"
name = "kill-points"
kernels = ["latest-6.12"]

[[test]]
name = "first"
timeout_s = 60
steps = ["load", { exec = { cmd = "true" } }]

[[test]]
name = "null"
timeout_s = 60
expect_crash = "NULL pointer dereference in vexfs_fault_null"
steps = [{ trigger = "null" }]

[[test]]
name = "slow"
timeout_s = 60
steps = [{ exec = { cmd = "sleep 3" } }]

[[test]]
name = "panic"
timeout_s = 60
expect_crash = "kernel panic: vexfs: injected panic"
steps = [{ trigger = "panic" }]

[[test]]
name = "last"
timeout_s = 60
steps = [{ mount = { target = "/mnt/z" } }, { unmount = "/mnt/z" }]
"#;

/// (id, title) of every crash row of run 1, when there is a database and a run.
fn crash_rows(db: &std::path::Path) -> Vec<(i64, String)> {
    Store::open(db)
        .and_then(|s| s.crashes(Some(1), 1000))
        .map(|c| c.into_iter().map(|c| (c.id, c.crash.title)).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn controller_killed_at_twenty_random_points_resumes_and_loses_no_crash() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crashes.db");
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, KILL_PLAN).unwrap();
    let mut rng = Lcg(20);
    let mut seen: std::collections::BTreeMap<i64, String> = Default::default();
    let (mut kills, mut starts) = (0, 0);
    let finished = loop {
        let resumable = Store::open(&db).is_ok_and(|s| s.run_checkpoint(1).is_ok());
        let mut cmd = std::process::Command::new(vexctl());
        if resumable {
            cmd.args(["run", "--quiet", "--resume", "1", "--db"])
                .arg(&db);
        } else {
            cmd.args(["run", "--quiet", "--plan"])
                .arg(&plan)
                .arg("--db")
                .arg(&db);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        starts += 1;
        if kills == 20 {
            break child.wait().unwrap();
        }
        // Anywhere from the first boot to the recoveries: the plan runs ~30 s.
        let at = Duration::from_millis(200 + rng.below(14_000));
        let t0 = Instant::now();
        let mut exited = None;
        while t0.elapsed() < at {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(st) = exited {
            // The run finished before the kill point: start it over from scratch to
            // keep killing (a finished run resumes to nothing).
            assert_eq!(st.code(), Some(0), "run {starts} failed before its kill");
            std::fs::remove_file(&db).unwrap();
            seen.clear();
            continue;
        }
        let before = crash_rows(&db);
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert_no_vm_of(child.id());
        // Every crash committed before the kill is still there, unchanged.
        let after: std::collections::BTreeMap<i64, String> = crash_rows(&db).into_iter().collect();
        seen.extend(before);
        for (id, title) in &seen {
            assert_eq!(
                after.get(id),
                Some(title),
                "kill {kills} at {at:?}: crash {id} lost"
            );
        }
        eprintln!(
            "kill {kills} at {:.1} s: {} crash rows",
            at.as_secs_f64(),
            after.len()
        );
    };
    assert_eq!(finished.code(), Some(0), "the final resume failed");
    let store = Store::open(&db).unwrap();
    let tests: Vec<(String, String)> = store
        .tests(1)
        .unwrap()
        .into_iter()
        .map(|t| (t.2, t.3))
        .collect();
    assert!(
        tests.iter().all(|(_, status)| status == "passed") && tests.len() == 5,
        "{tests:?}"
    );
    let after: std::collections::BTreeMap<i64, String> = crash_rows(&db).into_iter().collect();
    for (id, title) in &seen {
        assert_eq!(after.get(id), Some(title), "crash {id} lost by the end");
    }
    for want in ["vexfs_fault_null", "injected panic"] {
        assert!(
            after.values().any(|t| t.contains(want)),
            "{want} never recorded: {after:?}"
        );
    }
    eprintln!(
        "{kills} kills over {starts} starts; {} crash rows at the end",
        after.len()
    );
}
