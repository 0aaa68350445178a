//! The recovery of a real panic keeps the crash: a vmcore dumped through QMP before
//! the relaunch, timed in the recovery timeline, in the crash's artifacts folder, and
//! read by a real tool (makedumpfile) back into a kernel log holding the panic line.

use std::process::{Command, Stdio};
use std::time::Duration;

use vexfs_controller::artifacts::Kind;
use vexfs_controller::classify::Category;
use vexfs_controller::guest::{self, DUMP_STEP, Keep};
use vexfs_controller::recovery::{Fate, Outcome, Policy};

use super::forensics::{ensure_fw_cfg, module_ko};
use super::recovery::{bench, fire, first_crash};
use super::{manifest, rt, serial};

/// `makedumpfile -R` turns QEMU's flattened kdump stream into a plain kdump file,
/// then `--dump-dmesg` extracts the kernel log from it.
pub(crate) fn dmesg_of(vmcore: &std::path::Path, work: &std::path::Path) -> String {
    let rebuilt = work.join("vmcore.kdump");
    let out = Command::new("makedumpfile")
        .arg("-R")
        .arg(&rebuilt)
        .stdin(Stdio::from(std::fs::File::open(vmcore).unwrap()))
        .output()
        .expect("makedumpfile (apt package makedumpfile, scripts/setup.sh)");
    assert!(
        out.status.success(),
        "makedumpfile -R: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = work.join("dmesg.txt");
    let out = Command::new("makedumpfile")
        .arg("--dump-dmesg")
        .arg(&rebuilt)
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "makedumpfile --dump-dmesg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&log).unwrap()
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn a_recovered_panic_keeps_a_vmcore_whose_log_makedumpfile_reads() {
    let _one = serial();
    rt().block_on(async {
        let m = manifest(None);
        let mut b = bench("panic-keep", Default::default()).await;
        // Images built before qemu_fw_cfg joined the boot modules lack the driver that
        // hands VMCOREINFO to QEMU.
        ensure_fw_cfg(&mut b.guest.client(), &m).await;
        fire(&b, "panic");
        let crash = first_crash(&mut b, Duration::from_secs(40)).await;
        assert_eq!(crash.category, Category::KernelPanic);
        let dir = tempfile::tempdir().unwrap();
        let keep = Keep {
            db_path: dir.path().join("crashes.db"),
            forensics: Default::default(),
            module_ko: Some(module_ko(&m)),
        };
        let h = guest::handle_crash_keeping(
            &mut b.guest,
            &mut b.store,
            &crash,
            &b.ctx,
            Policy::default(),
            Some(&keep),
        )
        .await
        .unwrap();
        let rows = b.store.attempts(h.crash_id).unwrap();
        for a in &rows {
            eprintln!(
                "recovery: level {} {} -> {} in {} ms ({})",
                a.level, a.action, a.outcome, a.duration_ms, a.detail
            );
        }
        eprintln!("recovery: {:?} {:?} in {:?}", h.level, h.fate, h.duration);
        assert_eq!(h.fate, Fate::RestartRequired);
        let step = h.dump.clone().expect("a dump step");
        assert_eq!(step.outcome, Outcome::Succeeded, "{}", step.detail);
        let d = step.dump.expect("the dump");
        eprintln!(
            "vmcore: {:?} {} bytes ({:.1} MiB) in {:?} (step {:?})",
            d.format,
            d.bytes,
            d.bytes as f64 / 1048576.0,
            d.duration,
            step.duration
        );
        // The dump came before the relaunch: the panicked memory, not a fresh boot's.
        let at = |name: &str| rows.iter().position(|a| a.action == name).unwrap();
        assert!(at(DUMP_STEP) < at("relaunch_vm"));
        // Kept with the crash, beside the report, forensics and module.
        let kinds: Vec<Kind> = h.artifacts.iter().map(|a| a.kind).collect();
        for k in [Kind::Vmcore, Kind::Report, Kind::Console, Kind::Module] {
            assert!(kinds.contains(&k), "{k:?} missing: {:?}", h.artifacts);
        }
        let log = dmesg_of(&d.path, dir.path());
        let panic_line = log
            .lines()
            .find(|l| l.contains("Kernel panic - not syncing"))
            .unwrap_or_else(|| panic!("no panic line in the vmcore's log:\n{log}"));
        eprintln!("makedumpfile --dump-dmesg: {panic_line}");
        assert!(panic_line.contains("vexfs"), "{panic_line}");
    });
}

/// 1-based line of the first line of the module's source holding `needle`.
fn source_line(needle: &str) -> u32 {
    let src = include_str!("../../../guest-image/vexfs/vexfs.c");
    src.lines()
        .position(|l| l.contains(needle))
        .expect("line in source") as u32
        + 1
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn a_null_deref_frame_names_the_source_line_that_faulted() {
    let _one = serial();
    rt().block_on(async {
        let m = manifest(None);
        let mut b = bench("null-line", Default::default()).await;
        fire(&b, "null");
        let crash = first_crash(&mut b, Duration::from_secs(40)).await;
        assert_eq!(crash.category, Category::ModuleCrash);
        let s =
            vexfs_controller::symbolize::report(&crash.report, &module_ko(&m)).expect("symbolize");
        eprintln!("{}", s.text);
        let f = s
            .frames
            .iter()
            .find(|f| f.symbol == "vexfs_fault_null")
            .expect("vexfs_fault_null frame");
        let loc = f.innermost().expect("source line");
        // The RIP is the faulting instruction itself: exactly the dereference's line.
        assert_eq!(
            loc.line,
            source_line("v->counter++;"),
            "{loc:?}\n{}",
            s.text
        );
        assert!(
            s.text.contains(&format!("vexfs.c:{}", loc.line)),
            "{}",
            s.text
        );
    });
}
