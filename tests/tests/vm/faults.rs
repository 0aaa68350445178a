//! The guest side through the agent: a line written in the guest reaches the stream;
//! the module loads, reloads, mounts through Exec; and every fault trigger of the vexfs
//! module produces its kernel report on the serial
//! console and in the agent's kmsg stream, on both kernels. Faults the guest survives
//! run one after another in one boot; panic and soft lockup end or freeze the guest and
//! are covered by the recovery tests.

use std::time::Duration;

use tokio_stream::StreamExt;
use vexfs_proto::{ExecRequest, LoadModuleRequest, StreamRequest, event};

use vexfs_controller::vm::image::Manifest;

use super::{boot, config, manifest, rt, serial, spawn_sh};

/// (fault, text its report must contain); `None` kernels: all.
const FAULTS: &[(&str, &str, Option<&str>)] = &[
    ("warn", "WARNING: CPU: 0 PID:", None),
    (
        "uaf",
        "BUG: KFENCE: use-after-free read in vexfs_fault_uaf",
        Some("6.12"),
    ),
    (
        "oob",
        "BUG: KFENCE: out-of-bounds read in vexfs_fault_oob",
        Some("6.12"),
    ),
    // Before the oopses: after one (taint D) the hung-task detector stays silent.
    ("deadlock", "blocked for more than 5 seconds", None),
    ("null", "BUG: kernel NULL pointer dereference", None),
    ("bug", "kernel BUG at", None),
];

/// Loads the image's module under test and asserts it loaded.
async fn load_vexfs(client: &mut vexfs_controller::client::AgentClient, m: &Manifest) {
    let r = client
        .load_module(LoadModuleRequest {
            path: m.module_path_in_guest.clone(),
            params: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.outcome,
        vexfs_proto::ModuleOutcome::Ok as i32,
        "{}",
        r.detail
    );
}

async fn faults_on(kernel: &str) {
    let m = manifest(Some(kernel));
    let (vm, mut client, _, _) = boot(&config(&m)).await;
    load_vexfs(&mut client, &m).await;
    let mut stream = client
        .stream_events(StreamRequest {
            disable_counters: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for (fault, text, only) in FAULTS {
        if only.is_some_and(|k| !m.kernel_release.starts_with(k)) {
            continue;
        }
        spawn_sh(
            client.clone().with_call_timeout(Duration::from_secs(60)),
            format!("echo {fault} > /sys/kernel/debug/vexfs/trigger"),
            Duration::from_secs(50),
        );
        let on_console = vm
            .wait_for_console(Duration::from_secs(30), |l| l.text.contains(text))
            .await
            .unwrap();
        assert!(
            on_console.is_some(),
            "{kernel} {fault}: {text:?} not on the console"
        );
        let in_stream = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(ev) = stream.next().await {
                if let Ok(vexfs_proto::Event {
                    kind: Some(event::Kind::Kmsg(r)),
                }) = ev
                    && r.text.contains(text)
                {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            in_stream,
            Ok(true),
            "{kernel} {fault}: {text:?} not in the kmsg stream"
        );
        eprintln!("{kernel} {fault}: on the console and in the agent's stream");
    }
    vm.kill();
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn every_fault_reports_on_console_and_stream_612() {
    let _one = serial();
    rt().block_on(faults_on("6.12"));
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn every_fault_reports_on_console_and_stream_61() {
    let _one = serial();
    rt().block_on(faults_on("6.1"));
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn guest_log_line_streams_module_reloads_and_mounts_through_exec() {
    let _one = serial();
    rt().block_on(async {
        let m = manifest(None);
        let (vm, mut client, _, _) = boot(&config(&m)).await;
        let mut stream = client
            .stream_events(StreamRequest {
                disable_counters: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let sh = |cmd: &str| ExecRequest {
            argv: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout_ms: 30_000,
            ..Default::default()
        };
        let r = client
            .exec(sh("echo vexfs-e2e-marker-42 > /dev/kmsg"))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0);
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(ev)) = stream.next().await {
                if let Some(event::Kind::Kmsg(r)) = ev.kind
                    && r.text.contains("vexfs-e2e-marker-42")
                {
                    return r.seq;
                }
            }
            0
        })
        .await
        .expect("the guest's line never reached the stream");
        assert!(seen > 0);
        let path = m.module_path_in_guest.clone();
        load_vexfs(&mut client, &m).await;
        let reload = client
            .reload_module(vexfs_proto::ReloadModuleRequest {
                name: m.module_name.clone(),
                path,
                params: String::new(),
                deadline_ms: 10_000,
            })
            .await
            .unwrap();
        assert_eq!(
            reload.outcome,
            vexfs_proto::ModuleOutcome::Ok as i32,
            "{}",
            reload.detail
        );
        assert_eq!(
            reload.module.as_ref().map(|m| m.state.as_str()),
            Some("Live")
        );
        let r = client
            .exec(sh(
                "mkdir -p /mnt/e && mount -t vexfs none /mnt/e && echo data > /mnt/e/f && \
                 cat /mnt/e/f && ls /mnt/e && umount /mnt/e && grep -c ' /mnt/e ' /proc/mounts",
            ))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout), "data\nf\n0\n");
        vm.kill();
    });
}
