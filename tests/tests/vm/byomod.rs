//! Bring your own module: a Kbuild tree not written for this repository (the kernel's
//! own fs/minix from Debian's linux-source packages) built per kernel from the plan in
//! examples/minix, util-linux's mkfs.minix/fsck.minix as host-binary tools with their
//! libraries, a virtio disk that survives a VM kill within a test and is fresh for the
//! next. Needs `guest-image/fetch-kernel.sh source 6.1 fs/minix` (and 6.12): the test
//! runs it, so the first run downloads the two source packages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vexfs_controller::build::image::{ImageRequest, ensure_plan_image};
use vexfs_controller::plan::{self, Step};
use vexfs_controller::vm::disks;
use vexfs_controller::vm::image::cache_dir;
use vexfs_proto::{ExecRequest, LoadModuleRequest, ModuleOutcome};

use super::{boot, config, manifest, rt, serial};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fetch_minix(series: &str) {
    let out = std::process::Command::new(repo().join("guest-image/fetch-kernel.sh"))
        .args(["source", series, "fs/minix"])
        .output()
        .expect("fetch-kernel.sh");
    assert!(
        out.status.success(),
        "fetch linux-source-{series} fs/minix: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn sh(client: &mut vexfs_controller::client::AgentClient, cmd: &str) -> (i32, String) {
    let r = client
        .exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), format!("{cmd} 2>&1")],
            timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("exec {cmd}: {e}"));
    (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn minix_from_source_on_a_disk_survives_a_kill_and_is_fresh_per_test() {
    let _one = serial();
    let plan_file = repo().join("examples/minix/minix.toml");
    let p = plan::load(&plan_file).unwrap();
    assert!(
        p.tests[0]
            .steps
            .iter()
            .any(|s| matches!(s, Step::Mount(m) if m.device.as_deref() == Some("data")))
    );
    let run_dir = tempfile::tempdir().unwrap();
    for wanted in ["6.12", "6.1"] {
        fetch_minix(wanted);
        let release = manifest(Some(wanted)).kernel_release;
        let t = Instant::now();
        let img = ensure_plan_image(
            &p,
            &ImageRequest {
                plan_dir: repo().join("examples/minix"),
                release: release.clone(),
                cache: cache_dir(),
                out: None,
                agent: None,
                force: false,
            },
        )
        .unwrap_or_else(|e| panic!("{release}: {e}"));
        let built = img.module.clone().expect("built from source");
        eprintln!(
            "{release}: module {} ({}) and image in {:.1} s (module {:.1} s, cached {})",
            built.name,
            built.ko.display(),
            t.elapsed().as_secs_f64(),
            built.took.as_secs_f64(),
            built.cached
        );
        assert_eq!(built.name, "minix");
        assert!(
            built.vermagic.starts_with(&format!("{release} ")),
            "{}",
            built.vermagic
        );
        let (name, path) = img.module_name_and_path(&p);
        assert_eq!(
            (name.as_str(), path.as_str()),
            ("minix", "/lib/modules/vexfs/minix.ko")
        );
        let test = &p.tests[0];
        let mut cfg = config(&img.manifest);
        cfg.disks = disks::fresh_for_test(
            run_dir.path(),
            &test.name,
            &p.guest.disks,
            &repo().join("examples/minix"),
        )
        .unwrap();
        let dev = "/dev/disk/by-name/data";
        rt().block_on(async {
            let (vm, mut client, _, _) = boot(&cfg).await;
            // The host binary runs in the guest with the libraries it was copied with.
            let (code, out) = sh(&mut client, &format!("ls -l {dev} && /sbin/mkfs.minix -3 {dev}")).await;
            assert_eq!(code, 0, "{release}: mkfs.minix: {out}");
            assert!(out.contains("inodes"), "{out}");
            let load = client
                .load_module(LoadModuleRequest { path: path.clone(), params: String::new() })
                .await
                .unwrap();
            assert_eq!(load.outcome, ModuleOutcome::Ok as i32, "{release}: {load:?}");
            let (code, out) = sh(
                &mut client,
                &format!("mkdir -p /mnt/m && mount -t minix {dev} /mnt/m && echo kept > /mnt/m/f && sync && cat /mnt/m/f && grep minix /proc/mounts"),
            )
            .await;
            assert_eq!(code, 0, "{release}: mount/write: {out}");
            assert!(out.contains("kept"), "{out}");
            // A crash: QEMU killed with the filesystem still mounted.
            vm.kill();
            let (vm, mut client, _, _) = boot(&cfg).await;
            let (code, out) = sh(&mut client, &format!("/sbin/fsck.minix -f {dev}")).await;
            assert_eq!(code, 0, "{release}: fsck after the kill: {out}");
            let load = client
                .load_module(LoadModuleRequest { path: path.clone(), params: String::new() })
                .await
                .unwrap();
            assert_eq!(load.outcome, ModuleOutcome::Ok as i32, "{load:?}");
            let (code, out) = sh(&mut client, &format!("mkdir -p /mnt/m && mount -t minix {dev} /mnt/m && cat /mnt/m/f && umount /mnt/m")).await;
            assert_eq!(code, 0, "{release}: read back after restart: {out}");
            assert!(out.contains("kept"), "{out}");
            vm.shutdown(Duration::from_secs(10)).await;
            // The next test gets a fresh disk: no filesystem on it.
            let next = &p.tests[1];
            cfg.disks = disks::fresh_for_test(run_dir.path(), &next.name, &p.guest.disks, &repo().join("examples/minix"))
                .unwrap();
            let (vm, mut client, _, _) = boot(&cfg).await;
            let (code, out) = sh(&mut client, &format!("/sbin/fsck.minix {dev}")).await;
            assert_ne!(code, 0, "{release}: a fresh disk has no minix filesystem: {out}");
            vm.shutdown(Duration::from_secs(10)).await;
        });
    }
}
