//! Every fault trigger of the vexfs module produces its kernel report on the serial
//! console and in the agent's kmsg stream, on both kernels. Faults the guest survives
//! run one after another in one boot; panic and soft lockup end or freeze the guest and
//! are covered by the recovery tests.

use std::time::Duration;

use tokio_stream::StreamExt;
use vexfs_proto::{ExecRequest, LoadModuleRequest, StreamRequest, event};

use super::{boot, config, manifest, rt, serial};

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

async fn faults_on(kernel: &str) {
    let m = manifest(Some(kernel));
    let (vm, mut client, _, _) = boot(&config(&m)).await;
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
        let mut c = client.clone().with_call_timeout(Duration::from_secs(60));
        let cmd = format!("echo {fault} > /sys/kernel/debug/vexfs/trigger");
        tokio::spawn(async move {
            let _ = c
                .exec(ExecRequest {
                    argv: vec!["sh".into(), "-c".into(), cmd],
                    timeout_ms: 50_000,
                    ..Default::default()
                })
                .await;
        });
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
