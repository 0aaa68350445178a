//! VM end-to-end tests: real QEMU, real Debian kernels, the real agent as /init, vsock
//! through vhost-device-vsock. They need the images built by `scripts/setup.sh`, so
//! they only run when asked for: `cargo test -p vexfs-tests --test vm -- --ignored`.
//! A missing image or daemon is a failure with a hint, never a silent skip.
//!
//! VMs are booted one at a time (a process-wide lock): two cores boot one guest at
//! full speed, and the one-second death-notice check needs an idle machine.

#[path = "vm/byomod.rs"]
mod byomod;
#[path = "vm/byorun.rs"]
mod byorun;
#[path = "vm/cid.rs"]
mod cid;
#[path = "vm/faults.rs"]
mod faults;
#[path = "vm/forensics.rs"]
mod forensics;
#[path = "vm/metrics.rs"]
mod metrics;
#[path = "vm/recovery.rs"]
mod recovery;
#[path = "vm/reliability.rs"]
mod reliability;
#[path = "vm/restore.rs"]
mod restore;
#[path = "vm/runner.rs"]
mod runner;
#[path = "vm/snapshot.rs"]
mod snapshot;
#[path = "vm/soak.rs"]
mod soak;
#[path = "vm/vmcore.rs"]
mod vmcore;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use vexfs_controller::client::AgentClient;
use vexfs_controller::vm::image::{self, Manifest};
use vexfs_controller::vm::process::pids_with_cmdline_containing;
use vexfs_controller::vm::{AccelChoice, PanicAction, Vm, VmConfig};
use vexfs_proto::{
    ExecRequest, LoadModuleRequest, ModuleOutcome, StreamRequest, UnloadModuleRequest,
};

const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `sh -c cmd` in the guest in the background through `client` (its call timeout
/// is the margin over `timeout`): the command may never return (a fault trigger, a
/// soak). The handle yields the agent's reply.
fn spawn_sh(
    mut client: AgentClient,
    cmd: String,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<vexfs_proto::ExecReply, vexfs_controller::client::ClientError>>
{
    tokio::spawn(async move {
        client
            .exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), cmd],
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                ..Default::default()
            })
            .await
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The image for `wanted` (None: newest 6.12), or a failure saying how to build it.
fn manifest(wanted: Option<&str>) -> Manifest {
    let dir = image::default_images_dir();
    image::select_image(&dir, wanted).unwrap_or_else(|e| {
        panic!("VM tests need guest images: {e}. Build them with scripts/setup.sh (or guest-image/build-image.sh latest-6.12)")
    })
}

fn config(m: &Manifest) -> VmConfig {
    let mut cfg = VmConfig::from_manifest(m);
    // Auto: $VEXFS_ACCEL, else the cached KVM probe (TCG on PVM-style hosts).
    cfg.accel = AccelChoice::Auto;
    cfg
}

/// Asserts that no process mentions the VM's run dir any more.
fn assert_no_orphans(run_dir: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = pids_with_cmdline_containing(run_dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes outlived the VM {run_dir}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn boot(cfg: &VmConfig) -> (Vm, AgentClient, vexfs_proto::HealthReply, Duration) {
    let vm = Vm::launch(cfg).await.expect("launch");
    let (client, health) = match vm.wait_for_agent(AGENT_TIMEOUT).await {
        Ok(ok) => ok,
        Err(e) => panic!("agent not healthy: {e}\nconsole:\n{}", vm.output_tail(60)),
    };
    let boot = vm.started().elapsed();
    (vm, client, health, boot)
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn boots_to_healthy_agent_and_leaves_no_orphans() {
    let _one = serial();
    let m = manifest(None);
    let run_dir = rt().block_on(async {
        let (vm, mut client, health, boot) = boot(&config(&m)).await;
        eprintln!(
            "{}: agent healthy {:.2} s after QEMU start ({:?})",
            m.kernel_release,
            boot.as_secs_f64(),
            vm.accel()
        );
        assert_eq!(health.kernel_release, m.kernel_release);
        assert_ne!(health.agent_pid, 0);
        let status = vm.qmp().query_status().await.unwrap();
        assert!(status.running, "{status:?}");
        // A second Health on the same channel.
        let again = client.health().await.unwrap();
        assert_eq!(again.boot_id, health.boot_id);
        // The console was captured with timestamps.
        let log = std::fs::read_to_string(vm.run_dir().join("console.log")).unwrap();
        assert!(
            log.lines().any(|l| l.contains("Linux version")),
            "console.log lacks the boot banner:\n{log}"
        );
        let run_dir = vm.run_dir().display().to_string();
        assert!(
            !pids_with_cmdline_containing(&run_dir).is_empty(),
            "qemu/daemon should mention the run dir"
        );
        let exit = vm.shutdown(Duration::from_secs(10)).await;
        assert!(exit.is_some());
        run_dir
    });
    assert_no_orphans(&run_dir);
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn exec_modules_and_event_stream_through_the_agent() {
    let _one = serial();
    let m = manifest(None);
    let run_dir = rt().block_on(async {
        let (vm, mut client, _, _) = boot(&config(&m)).await;
        let out = client
            .exec(ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo hello; echo oops >&2; exit 3".into(),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
        let mods = client.list_modules().await.unwrap();
        assert!(
            mods.modules
                .iter()
                .any(|md| md.name.starts_with("vmw_vsock_virtio")),
            "{mods:?}"
        );
        if !m.module_path_in_guest.is_empty() {
            let load = client
                .load_module(LoadModuleRequest {
                    path: m.module_path_in_guest.clone(),
                    params: String::new(),
                })
                .await
                .unwrap();
            assert_eq!(load.outcome, ModuleOutcome::Ok as i32, "{load:?}");
            let unload = client
                .unload_module(UnloadModuleRequest {
                    name: m.module_name.clone(),
                    deadline_ms: 10_000,
                    force: false,
                })
                .await
                .unwrap();
            assert_eq!(unload.outcome, ModuleOutcome::Ok as i32, "{unload:?}");
        }
        // The kernel log streams from the start of the ring.
        let mut stream = client
            .stream_events(StreamRequest {
                from_seq: 0,
                disable_counters: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut kmsg = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while kmsg < 5 && Instant::now() < deadline {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if matches!(ev.kind, Some(vexfs_proto::event::Kind::Kmsg(_))) {
                kmsg += 1;
            }
        }
        assert_eq!(kmsg, 5, "kmsg records from the ring");
        let run_dir = vm.run_dir().display().to_string();
        vm.kill();
        run_dir
    });
    assert_no_orphans(&run_dir);
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn qemu_death_is_noticed_within_a_second() {
    let _one = serial();
    let m = manifest(None);
    let run_dir = rt().block_on(async {
        let (vm, mut client, _, _) = boot(&config(&m)).await;
        let mut stream = client
            .stream_events(StreamRequest {
                heartbeat_ms: 200,
                disable_counters: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut exit = vm.exit_watch();
        let pid = vm.qemu_pid().unwrap();
        // Kill QEMU alone (not its group): a VMM crash, with the daemon left running.
        // SAFETY: signalling our own child process by pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let killed = Instant::now();
        tokio::time::timeout(Duration::from_secs(1), exit.wait_for(Option::is_some))
            .await
            .expect("exit watcher within 1 s")
            .unwrap();
        let exit_seen = killed.elapsed();
        // The event stream breaks too (vsock ECONNRESET through the daemon).
        let stream_end = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    _ => return,
                }
            }
        })
        .await;
        assert!(
            stream_end.is_ok(),
            "event stream still open 1 s after QEMU died"
        );
        eprintln!(
            "qemu death: exit watcher {exit_seen:?}, stream end {:?}",
            killed.elapsed()
        );
        assert!(client.health().await.is_err());
        let run_dir = vm.run_dir().display().to_string();
        drop(vm);
        run_dir
    });
    assert_no_orphans(&run_dir);
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn guest_panic_pauses_and_is_reported_over_qmp() {
    let _one = serial();
    let m = manifest(None);
    let run_dir = rt().block_on(async {
        let mut cfg = config(&m);
        cfg.panic_action = PanicAction::Pause;
        let (vm, mut client, _, _) = boot(&cfg).await;
        let mut events = vm.qmp().subscribe();
        // sysrq-c panics the kernel: the reply may never come.
        let _ = tokio::time::timeout(Duration::from_secs(3), client.sysrq("c")).await;
        let panicked = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.name == "GUEST_PANICKED" => return ev,
                    Ok(_) => {}
                    Err(e) => panic!("qmp events: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no GUEST_PANICKED\n{}", vm.output_tail(40)));
        assert_eq!(panicked.data["action"], "pause");
        let status = vm.qmp().query_status().await.unwrap();
        assert_eq!(status.status, "guest-panicked");
        assert!(vm.try_exit_status().is_none(), "paused, not exited");
        assert!(
            vm.guest_events().borrow().panicked,
            "event tracked by the vm"
        );
        let console = vm.console().history();
        assert!(
            console.iter().any(|l| l.text.contains("Kernel panic")),
            "panic text on the console"
        );
        let run_dir = vm.run_dir().display().to_string();
        vm.kill();
        run_dir
    });
    assert_no_orphans(&run_dir);
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn sysrq_through_qmp_keyboard_reaches_the_kernel() {
    let _one = serial();
    let m = manifest(None);
    rt().block_on(async {
        let (vm, _client, _, _) = boot(&config(&m)).await;
        vm.qmp().sysrq("h").await.unwrap();
        let help = vm
            .wait_for_console(Duration::from_secs(10), |l| l.text.contains("sysrq: HELP"))
            .await
            .unwrap();
        assert!(
            help.is_some(),
            "no sysrq help on the console\n{}",
            vm.output_tail(20)
        );
        vm.kill();
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn every_cached_kernel_boots_to_a_healthy_agent() {
    let _one = serial();
    let images =
        image::list_images(&image::default_images_dir()).expect("images dir (scripts/setup.sh)");
    assert!(!images.is_empty(), "no guest images: run scripts/setup.sh");
    rt().block_on(async {
        for m in &images {
            let (vm, _client, health, boot) = boot(&config(m)).await;
            eprintln!(
                "{}: healthy after {:.2} s ({:?})",
                m.kernel_release,
                boot.as_secs_f64(),
                vm.accel()
            );
            assert_eq!(health.kernel_release, m.kernel_release);
            let run_dir = vm.run_dir().display().to_string();
            vm.shutdown(Duration::from_secs(10)).await;
            assert_no_orphans(&run_dir);
        }
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn accel_probe_result_is_cached_per_kernel() {
    let _one = serial();
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        // Without /dev/kvm there is nothing to probe: the answer is TCG, uncached.
        let mut cfg = config(&manifest(None));
        cfg.accel = AccelChoice::Tcg;
        assert_eq!(
            rt().block_on(vexfs_controller::vm::resolve_accel(&cfg)),
            vexfs_controller::vm::Accel::Tcg
        );
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(&manifest(None));
    cfg.cache_dir = Some(cache.path().to_path_buf());
    let file = vexfs_controller::vm::probe_cache_file(&cfg);
    rt().block_on(async {
        let t = Instant::now();
        let first = if std::env::var_os(vexfs_controller::vm::ACCEL_ENV).is_some() {
            // The env var overrides resolve_accel: probe directly.
            vexfs_controller::vm::probe_kvm(&cfg).await
        } else {
            let first = vexfs_controller::vm::resolve_accel(&cfg).await;
            assert_eq!(std::fs::read_to_string(&file).unwrap(), first.as_str());
            let again = Instant::now();
            assert_eq!(vexfs_controller::vm::resolve_accel(&cfg).await, first);
            assert!(
                again.elapsed() < Duration::from_millis(500),
                "second answer comes from the cache"
            );
            first
        };
        eprintln!("kvm probe: {first:?} in {:?}", t.elapsed());
        assert!(t.elapsed() < cfg.probe_timeout + Duration::from_secs(10));
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn system_reset_reboots_to_a_new_boot_id_on_the_same_address() {
    let _one = serial();
    let m = manifest(None);
    rt().block_on(async {
        let (vm, _client, first, _) = boot(&config(&m)).await;
        let mut guest = vm.guest_events();
        vm.qmp().system_reset().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), guest.wait_for(|g| g.resets >= 1))
            .await
            .expect("RESET event")
            .unwrap();
        let t = Instant::now();
        // A reboot under load (other guests, builds) took up to 15 s here.
        let (_client, second) = match vm.wait_for_agent(AGENT_TIMEOUT).await {
            Ok(ok) => ok,
            Err(e) => panic!(
                "{e}\n{}\ndaemon log:\n{}",
                vm.output_tail(60),
                std::fs::read_to_string(vm.run_dir().join("vsock-daemon.log")).unwrap_or_default()
            ),
        };
        eprintln!(
            "agent healthy again {:.2} s after system_reset",
            t.elapsed().as_secs_f64()
        );
        assert_ne!(first.boot_id, second.boot_id, "a new boot");
        vm.kill();
    });
}
