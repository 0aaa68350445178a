//! Crash forensics on real guests: sysrq dumps through the agent and the keyboard,
//! source lines for the module's frames, and a vmcore a real tool reads.

use std::path::PathBuf;
use std::time::Duration;

use vexfs_controller::forensics::{self, End, Key, Limits, Via, VmTarget};
use vexfs_controller::symbolize;
use vexfs_controller::vm::dump::{self, DumpFormat, DumpLimits};
use vexfs_controller::vm::image::Manifest;
use vexfs_proto::ExecRequest;

use super::recovery::{bench, first_crash, recover};
use super::{boot, config, manifest, rt, serial, spawn_sh};

/// The module .ko on the host the image was built with.
pub(crate) fn module_ko(m: &Manifest) -> PathBuf {
    let dir = vexfs_controller::vm::image::default_images_dir().join(&m.kernel_release);
    dir.join(format!("{}.ko", m.module_name))
}

/// 1-based line range of C function `name` in the module's source.
fn function_lines(name: &str) -> std::ops::RangeInclusive<u32> {
    let src = include_str!("../../../guest-image/vexfs/vexfs.c");
    let lines: Vec<&str> = src.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(&format!(" {name}(")) && !l.ends_with(';'))
        .expect("function in source");
    let end = start + lines[start..].iter().position(|l| *l == "}").unwrap();
    (start as u32 + 1)..=(end as u32 + 1)
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn deadlock_forensics_show_the_blocked_task_from_sysrq_w_with_source_lines() {
    let _one = serial();
    rt().block_on(async {
        let mut b = bench("deadlock-forensics", Default::default()).await;
        let _writer = spawn_sh(
            b.guest.client().with_call_timeout(Duration::from_secs(30)),
            "echo deadlock > /sys/kernel/debug/vexfs/trigger".into(),
            Duration::from_secs(2),
        );
        let crash = first_crash(&mut b, Duration::from_secs(40)).await;
        assert_eq!(crash.title, "INFO: task hung in vexfs_fault_deadlock");
        let h = recover(&mut b, crash).await;
        let step = h
            .steps
            .iter()
            .find(|s| s.1.name() == "collect_forensics")
            .expect("forensics collected");
        eprintln!("forensics: collect_forensics took {:?}", step.3);
        let text = b.store.crash(h.crash_id).unwrap().crash.forensics;
        eprintln!("{text}");
        // The agent answered: every part came through it and ended at its marker.
        for key in forensics::KEYS {
            let head = format!("--- sysrq {}: {} (via agent", key.letter(), key.describe());
            assert!(text.contains(&head), "no {head}\n{text}");
        }
        let w = text.split("--- sysrq l:").next().expect("w part before l");
        assert!(w.contains("sysrq: Show Blocked State"), "{w}");
        assert!(w.contains("state:D"), "{w}");
        assert!(w.contains("vexfs_fault_deadlock+0x"), "{w}");
        assert!(text.contains("sysrq: Show Memory"), "{text}");

        // The blocked task's frame in the module gets the line it sleeps on.
        let m = manifest(None);
        let s = symbolize::report(w, &module_ko(&m)).expect("symbolize");
        let f = s
            .frames
            .iter()
            .find(|f| f.symbol == "vexfs_fault_deadlock")
            .expect("deadlock frame");
        let loc = f.innermost().expect("source line");
        assert!(
            function_lines("vexfs_fault_deadlock").contains(&loc.line),
            "{loc:?}\n{}",
            s.text
        );
        eprintln!("{}", s.text);
    });
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn keyboard_sysrq_dumps_with_sysrq_always_enabled() {
    let _one = serial();
    rt().block_on(async {
        let m = manifest(None);
        let mut cfg = config(&m);
        if !cfg.cmdline.contains("sysrq_always_enabled") {
            cfg.extra_cmdline.push("sysrq_always_enabled".into());
        }
        let (vm, _client, _health, _boot) = boot(&cfg).await;
        let limits = Limits::default();
        let mut target = VmTarget::new(&vm, None, limits);
        let f = forensics::collect(&mut target, false, limits).await;
        eprintln!("{}", f.render());
        for p in &f.parts {
            assert_eq!(p.via, Via::Keyboard);
            assert_ne!(p.end, End::Disabled, "{}", f.render());
            assert!(p.lines[0].contains(p.key.header()), "{}", f.render());
        }
        let mem = f.parts.iter().find(|p| p.key == Key::Memory).unwrap();
        assert!(mem.lines.len() > 5, "{}", f.render());
        eprintln!("forensics over the keyboard: {:?}", f.duration);
    });
}

/// Loads the kernel's qemu_fw_cfg driver (it hands VMCOREINFO to QEMU) when the image
/// lacks it, by writing the package's module into the guest.
pub(crate) async fn ensure_fw_cfg(
    client: &mut vexfs_controller::client::AgentClient,
    m: &Manifest,
) {
    let probe = client
        .exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "test -d /sys/firmware/qemu_fw_cfg".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    if probe.exit_code == 0 {
        return;
    }
    let moddir = vexfs_controller::vm::image::cache_dir()
        .join("kernels")
        .join(&m.kernel_release)
        .join("lib/modules")
        .join(&m.kernel_release)
        .join("kernel/drivers/firmware");
    let ko = if moddir.join("qemu_fw_cfg.ko").exists() {
        std::fs::read(moddir.join("qemu_fw_cfg.ko")).unwrap()
    } else {
        let out = std::process::Command::new("xz")
            .arg("-dc")
            .arg(moddir.join("qemu_fw_cfg.ko.xz"))
            .output()
            .unwrap();
        assert!(out.status.success(), "xz -dc qemu_fw_cfg.ko.xz");
        out.stdout
    };
    let r = client
        .exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "cat > /tmp/qemu_fw_cfg.ko && insmod /tmp/qemu_fw_cfg.ko".into(),
            ],
            stdin: ko,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn panic_leaves_a_vmcore_holding_the_panic_line() {
    let _one = serial();
    rt().block_on(async {
        let m = manifest(None);
        let b = bench("panic-vmcore", Default::default()).await;
        let mut client = b.guest.client();
        ensure_fw_cfg(&mut client, &m).await;
        let vm = b.guest.vm().expect("vm");
        let mut events = vm.qmp().subscribe();
        let _writer = spawn_sh(
            client.with_call_timeout(Duration::from_secs(5)),
            "echo panic > /sys/kernel/debug/vexfs/trigger".into(),
            Duration::from_secs(2),
        );
        let panicked = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.name == "GUEST_PANICKED" => return,
                    Ok(_) => {}
                    Err(e) => panic!("qmp events: {e}"),
                }
            }
        })
        .await;
        assert!(
            panicked.is_ok(),
            "no GUEST_PANICKED\n{}",
            vm.output_tail(40)
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dump::capture(vm.qmp(), dir.path(), 512, DumpLimits::default())
            .await
            .expect("dump");
        eprintln!(
            "vmcore: {:?} {} bytes ({:.1} MiB) in {:?}",
            d.format,
            d.bytes,
            d.bytes as f64 / 1048576.0,
            d.duration
        );
        // makedumpfile 1.7.2 extracts the log from ELF dumps only.
        let elf_dir = dir.path().join("elf");
        let e = dump::capture_in(
            vm.qmp(),
            &elf_dir,
            512,
            DumpFormat::Elf,
            DumpLimits::default(),
        )
        .await
        .expect("elf dump");
        eprintln!(
            "vmcore: {:?} {} bytes ({:.1} MiB) in {:?}",
            e.format,
            e.bytes,
            e.bytes as f64 / 1048576.0,
            e.duration
        );
        // The dump is the guest's memory: the printk ring holds the panic line, and
        // the VMCOREINFO note (from -device vmcoreinfo and qemu_fw_cfg) is there.
        let mem = std::fs::read(&e.path).unwrap();
        assert_eq!(&mem[..4], b"\x7fELF");
        let line = b"vexfs: injected panic from vexfs_fault_panic";
        assert!(
            mem.windows(line.len()).any(|w| w == line),
            "panic text not in guest memory"
        );
        let notes = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&e.path)
            .output()
            .unwrap();
        let notes = String::from_utf8_lossy(&notes.stdout);
        assert!(notes.contains("VMCOREINFO"), "{notes}");
        let kdump = std::fs::read(&d.path).unwrap();
        // QEMU 7.2 writes kdump in makedumpfile's flattened format (seen here);
        // `makedumpfile -R OUT < vmcore` rebuilds a plain kdump file.
        assert_eq!(&kdump[..8], b"makedump", "flattened kdump signature");
        // makedumpfile 1.7.2 reads neither file directly ("Can't get the number of
        // PT_LOAD" on ELF, "Can't get valid ehdr" on the flattened kdump); rebuilt by
        // `makedumpfile -R`, the kdump gives the kernel log.
        let log = super::vmcore::dmesg_of(&d.path, dir.path());
        assert!(log.contains("Kernel panic - not syncing"), "{log}");
    });
}
