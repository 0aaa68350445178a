//! Restart from a booted snapshot: the restored guest is clean and fresh (its own
//! restore generation, the module loads, the agent answers), a corrupt snapshot is
//! detected, removed and replaced by a cold boot, and no QEMU outlives its VM.

use std::path::Path;

use vexfs_controller::vm::restart::{self, Freshness, StartedFrom};
use vexfs_controller::vm::snapshot::{self, SnapshotError};
use vexfs_controller::vm::{Vm, VmConfig, VsockSlot, resolve_accel};
use vexfs_proto::{ExecRequest, LoadModuleRequest, ModuleOutcome};

use super::{AGENT_TIMEOUT, assert_no_orphans, config, manifest, rt, serial};

/// A configuration whose snapshots and run dirs live in `dir` (nothing shared).
fn private_config(dir: &Path) -> VmConfig {
    let mut cfg = config(&manifest(None));
    cfg.cache_dir = Some(dir.join("cache"));
    cfg.run_parent = Some(dir.join("runs"));
    // The layout that asks restore_or_boot for snapshots (as the runner sets it).
    cfg.vsock_slot = VsockSlot::RootPort;
    cfg
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn restored_guest_is_clean_fresh_and_loads_the_module() {
    let _one = serial();
    let m = manifest(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = private_config(dir.path());
    rt().block_on(async {
        let first = restart::restore_or_boot(&cfg, AGENT_TIMEOUT)
            .await
            .expect("restore or boot");
        let StartedFrom::Snapshot {
            generation,
            taken_now,
        } = first.from
        else {
            panic!("cold boot instead of a restore: {:?}", first.from);
        };
        assert!(taken_now, "no snapshot existed in a fresh cache");
        assert_eq!(first.health.restore_generation, generation);
        assert_eq!(first.health.taint_flags, "", "restored kernel is clean");
        let run_dir = first.vm.run_dir().display().to_string();
        // The agent answers and the module under test loads (it is not in the snapshot).
        let mut client = first.client.clone();
        let load = client
            .load_module(LoadModuleRequest {
                path: m.module_path_in_guest.clone(),
                params: String::new(),
            })
            .await
            .expect("load");
        assert_eq!(load.outcome(), ModuleOutcome::Ok, "{}", load.detail);
        let echo = client
            .exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo restored".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(echo.stdout, b"restored\n");
        let old = first.health.clone();
        first.vm.kill();
        assert_no_orphans(&run_dir);

        // The second restore reuses the snapshot: same boot id, a new generation, and
        // the module is not loaded (nothing of the first guest survives).
        let second = restart::restore_or_boot(&cfg, AGENT_TIMEOUT)
            .await
            .expect("second restore");
        assert!(
            matches!(
                second.from,
                StartedFrom::Snapshot {
                    taken_now: false,
                    ..
                }
            ),
            "{:?}",
            second.from
        );
        assert_eq!(second.health.boot_id, old.boot_id, "the snapshot's boot");
        assert!(matches!(
            restart::fresh_state(&old, &second.health),
            Ok(Freshness::NewRestore { .. })
        ));
        let mut client = second.client.clone();
        let mods = client.list_modules().await.unwrap();
        assert!(
            !mods.modules.iter().any(|x| x.name == m.module_name),
            "module of the previous guest is loaded: {mods:?}"
        );
        eprintln!(
            "restore to agent healthy: {:.2} s (first call, snapshot taken: {:.2} s)",
            second.elapsed.as_secs_f64(),
            first.elapsed.as_secs_f64()
        );
        let run_dir = second.vm.run_dir().display().to_string();
        second.vm.kill();
        assert_no_orphans(&run_dir);
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn corrupt_snapshot_is_detected_and_replaced_by_a_cold_boot() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = private_config(dir.path());
    let runs = dir.path().join("runs").display().to_string();
    rt().block_on(async {
        let accel = resolve_accel(&cfg).await;
        let root = snapshot::store_root(&cfg);
        let snap = snapshot::take(&cfg, accel, &root, AGENT_TIMEOUT)
            .await
            .expect("take");
        assert_no_orphans(&runs);
        // Garbage over the middle of the machine state.
        let state = snap.state();
        let mut bytes = std::fs::read(&state).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..].fill(0xa5);
        std::fs::write(&state, &bytes).unwrap();
        let err = Vm::restore(&cfg, accel, &snap, AGENT_TIMEOUT)
            .await
            .expect_err("a corrupt snapshot must not restore");
        eprintln!("corrupt restore: {err}");
        assert!(
            matches!(err, SnapshotError::Vm(_) | SnapshotError::Migration { .. }),
            "{err}"
        );
        assert_no_orphans(&runs);

        // The caller's path: the bad snapshot is removed, the guest cold boots and
        // says why.
        let key = snapshot::snapshot_key(&cfg, accel).unwrap();
        assert!(snapshot::find(&root, &key).is_some());
        let started = restart::restore_or_boot(&cfg, AGENT_TIMEOUT)
            .await
            .expect("cold boot fallback");
        match &started.from {
            StartedFrom::ColdBoot {
                fallback: Some(why),
            } => eprintln!("fell back: {why}"),
            other => panic!("expected a cold boot fallback, got {other:?}"),
        }
        assert!(
            snapshot::find(&root, &key).is_none(),
            "bad snapshot removed"
        );
        assert_eq!(started.health.restore_generation, 0);
        started.vm.kill();
        assert_no_orphans(&runs);
    });
}
