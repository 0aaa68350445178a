//! Tests on the real guest logs (copied to `tests/fixtures/guest-logs`) and property
//! tests: arbitrary bytes never panic; chunked incremental input equals the whole.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/guest-logs")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (log, category, exact title of the first crash, guilty module)
const GUEST: &[(&str, Option<Category>, &str, &str)] = {
    use Category::*;
    const NULL: &str = "BUG: unable to handle kernel NULL pointer dereference in do_trigger";
    &[
        ("crash-61-null.log", Some(ModuleCrash), NULL, "crashmod"),
        ("crash-612-null.log", Some(ModuleCrash), NULL, "crashmod"),
        (
            "crash-61-bug.log",
            Some(ModuleCrash),
            "kernel BUG in do_trigger",
            "crashmod",
        ),
        (
            "crash-612-bug.log",
            Some(ModuleCrash),
            "kernel BUG in do_trigger",
            "crashmod",
        ),
        (
            "crash-61-warn.log",
            Some(Warning),
            "WARNING in do_trigger",
            "crashmod",
        ),
        (
            "crash-612-warn.log",
            Some(Warning),
            "WARNING in do_trigger",
            "crashmod",
        ),
        (
            "crash-61-deadlock.log",
            Some(Deadlock),
            "INFO: task hung in do_trigger",
            "crashmod",
        ),
        (
            "crash-612-deadlock.log",
            Some(Deadlock),
            "INFO: task hung in do_trigger",
            "crashmod",
        ),
        (
            "crash-61-thread_deadlock.log",
            Some(Deadlock),
            "INFO: task hung in deadlock_thread",
            "crashmod",
        ),
        (
            "crash-612-thread_deadlock.log",
            Some(Deadlock),
            "INFO: task hung in deadlock_thread",
            "crashmod",
        ),
        (
            "crash-61-softlockup.log",
            Some(Deadlock),
            "BUG: soft lockup in do_trigger",
            "crashmod",
        ),
        (
            "crash-612-softlockup.log",
            Some(Deadlock),
            "BUG: soft lockup in do_trigger",
            "crashmod",
        ),
        (
            "crash-61-panic.log",
            Some(KernelPanic),
            "kernel panic: crashmod: requested panic",
            "crashmod",
        ),
        (
            "crash-612-panic.log",
            Some(KernelPanic),
            "kernel panic: crashmod: requested panic",
            "crashmod",
        ),
        (
            "crash-612-kfence_uaf.log",
            Some(MemoryCorruption),
            "KFENCE: use-after-free read in do_trigger",
            "crashmod",
        ),
        (
            "crash-612-kfence_oob.log",
            Some(MemoryCorruption),
            "KFENCE: out-of-bounds read in do_trigger",
            "crashmod",
        ),
        ("crash-61-leak.log", None, "", ""),
        ("crash-612-leak.log", None, "", ""),
        (
            "lkdtm-61-EXCEPTION.log",
            Some(ModuleCrash),
            "BUG: unable to handle kernel NULL pointer dereference in lkdtm_EXCEPTION",
            "lkdtm",
        ),
        (
            "lkdtm-612-EXCEPTION.log",
            Some(ModuleCrash),
            "BUG: unable to handle kernel NULL pointer dereference in lkdtm_EXCEPTION",
            "lkdtm",
        ),
        // 6.1 inlines lkdtm_HUNG_TASK into direct_entry.
        (
            "lkdtm-61-HUNG_TASK.log",
            Some(Deadlock),
            "INFO: task hung in direct_entry",
            "lkdtm",
        ),
        (
            "lkdtm-612-HUNG_TASK.log",
            Some(Deadlock),
            "INFO: task hung in lkdtm_HUNG_TASK",
            "lkdtm",
        ),
        ("pvpanic-61-null.log", Some(ModuleCrash), NULL, "crashmod"),
        ("pvpanic-612-null.log", Some(ModuleCrash), NULL, "crashmod"),
        // oops=panic: the panic is the end of the oops, not a second crash.
        (
            "pvpanic-61-null-oopspanic.log",
            Some(ModuleCrash),
            NULL,
            "crashmod",
        ),
        (
            "pvpanic-612-null-oopspanic.log",
            Some(ModuleCrash),
            NULL,
            "crashmod",
        ),
        (
            "pvpanic-61-panic.log",
            Some(KernelPanic),
            "kernel panic: crashmod: requested panic",
            "crashmod",
        ),
        (
            "pvpanic-612-panic.log",
            Some(KernelPanic),
            "kernel panic: crashmod: requested panic",
            "crashmod",
        ),
    ]
};

#[test]
fn guest_logs_classify_right() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guest-logs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        if name.ends_with(".log") {
            assert!(
                GUEST.iter().any(|g| g.0 == name),
                "no expectation for {name}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, GUEST.len());
    for &(name, cat, title, module) in GUEST {
        let reports = classify(&fixture(name));
        let Some(cat) = cat else {
            assert!(
                reports.is_empty(),
                "{name}: unexpected {:?}",
                reports.first().map(|r| &r.title)
            );
            continue;
        };
        let first = reports
            .first()
            .unwrap_or_else(|| panic!("{name}: no crash found"));
        assert_eq!(first.category, cat, "{name}");
        assert_eq!(first.title, title, "{name}");
        assert!(!first.corrupted, "{name}: corrupted");
        assert_eq!(first.guilty_module.as_deref(), Some(module), "{name}");
        assert_eq!(first.severity, cat.severity());
        assert_eq!(first.recovery, cat.recovery());
        assert!(
            first.taint.as_deref().is_some_and(|t| t.contains('O')),
            "{name}: taint {:?}",
            first.taint
        );
        assert!(
            first
                .frames
                .iter()
                .any(|f| f.contains(title.rsplit(' ').next().unwrap_or_default()))
                || cat == Category::KernelPanic,
            "{name}: frames {:?}",
            first.frames
        );
    }
}

#[test]
fn guest_log_details() {
    // The 6.12 double `Oops: Oops:` prefix and the panic frames.
    let r = classify(&fixture("crash-612-panic.log"));
    assert_eq!(r.len(), 1);
    assert!(
        r[0].frames.iter().any(|f| f == "do_trigger"),
        "{:?}",
        r[0].frames
    );
    // A soft lockup followed by the RCU stall it causes: two reports, same function.
    let r = classify(&fixture("crash-612-softlockup.log"));
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].title, "INFO: rcu detected stall in do_trigger");
    assert_eq!(r[1].category, Category::SystemHang);
    // Hung-task reports repeat with the same signature (deduplication key).
    let r = classify(&fixture("crash-612-deadlock.log"));
    assert!(r.len() >= 2);
    assert_eq!(r[0].signature, r[1].signature);
    assert!(r[0].report.contains("blocked for more than 5 seconds"));
    assert!(!r[0].report.contains("blocked for more than 10 seconds"));
    // start_line points at the header.
    let log = fixture("crash-61-null.log");
    let line = log.split(|&b| b == b'\n').nth(r_start(&log)).expect("line");
    assert!(String::from_utf8_lossy(line).contains("NULL pointer dereference"));
}

fn r_start(log: &[u8]) -> usize {
    classify(log)[0].start_line
}

#[test]
fn kmsg_and_caller_ids() {
    let log = b"6,100,1000,-;vexfs: mounted\n\
        4,101,2000,-;WARNING: CPU: 0 PID: 1 at fs/vexfs/file.c:12 vexfs_write+0x1/0x2 [vexfs]\n\
        4,102,2000,-;RIP: 0010:vexfs_write+0x1/0x2 [vexfs]\n\
        4,103,2000,-;Call Trace:\n\
        4,104,2000,-; vfs_write+0x1/0x2\n";
    let r = classify(log);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].title, "WARNING in vexfs_write");
    assert_eq!(r[0].guilty_module.as_deref(), Some("vexfs"));
    assert_eq!(r[0].start_line, 1);

    // Another CPU's lines interleaved inside the report are dropped by caller id.
    let log =
        b"[   12.000001][ T123] BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
        [   12.000002][ T123] RIP: 0010:vexfs_mount+0x10/0x20 [vexfs]\n\
        [   12.000003][  T77] random: crng init done\n\
        [   12.000004][ T123] Call Trace:\n\
        [   12.000005][  T77] general protection fault in other_task\n\
        [   12.000006][ T123]  mount_bdev+0x1/0x2\n";
    let r = classify(log);
    assert_eq!(
        r[0].title,
        "BUG: unable to handle kernel NULL pointer dereference in vexfs_mount"
    );
    assert!(!r[0].report.contains("crng"));
    assert!(r[0].report.contains("mount_bdev"));
}

#[test]
fn leaks_lockups_and_lockdep() {
    let r = classify(b"[ 1.0] kmemleak: Kernel memory leak detector initialized\n[ 9.0] kmemleak: 3 new suspected memory leaks (see /sys/kernel/debug/kmemleak)\n");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].category, Category::ResourceLeak);
    assert_eq!(r[0].recovery, Recovery::ResourceCleanup);
    let r = classify(b"NMI watchdog: Watchdog detected hard LOCKUP on cpu 1\nRIP: 0010:vexfs_spin+0x1/0x2 [vexfs]\nCall Trace:\n <TASK>\n vexfs_write+0x1/0x2 [vexfs]\n vfs_write+0x1/0x2\n");
    assert_eq!(r[0].title, "BUG: hard lockup in vexfs_spin");
    assert_eq!(r[0].category, Category::Deadlock);
}

#[test]
fn hung_task_in_module_lock_helper() {
    // Waiting machinery is skipped, but a module frame is the culprit even when its
    // name looks like locking.
    let log = b"INFO: task mount:77 blocked for more than 120 seconds.\n\
        Call Trace:\n <TASK>\n __schedule+0x1/0x2\n schedule+0x1/0x2\n\
         __mutex_lock.constprop.0+0x1/0x2\n vexfs_lock_super+0x1/0x2 [vexfs]\n\
         vexfs_fill_super+0x1/0x2 [vexfs]\n mount_bdev+0x1/0x2\n </TASK>\n";
    let r = classify(log);
    assert_eq!(r[0].title, "INFO: task hung in vexfs_lock_super");
    assert_eq!(r[0].guilty_module.as_deref(), Some("vexfs"));
}

#[test]
fn no_crash_and_garbage() {
    assert!(classify(b"").is_empty());
    assert!(classify(b"hello\r\nworld\n\xff\xfe\n").is_empty());
    // Boot-time notices that merely contain header words.
    let benign = b"[    0.1] RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, data leaks possible!\n\
        [    0.2] [Firmware Bug]: TSC_DEADLINE disabled due to Errata\n\
        [    0.3] INFO: lockdep is turned off.\n\
        [    0.4] kmemleak: Kernel memory leak detector initialized (mem pool available: 15000)\n";
    assert!(
        classify(benign).is_empty(),
        "{:?}",
        classify(benign).first().map(|r| r.title.clone())
    );
    // `BUG:` inside another word is not a header.
    assert!(classify(b"ODEBUG: something odd\nFEAS: WARNING count 0\n").is_empty());
}

fn chunked(log: &[u8], cuts: &[usize]) -> Vec<CrashReport> {
    let mut c = Classifier::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for &cut in cuts {
        let end = (pos + cut).min(log.len());
        out.extend(c.feed(&log[pos..end]));
        pos = end;
    }
    out.extend(c.feed(&log[pos..]));
    out.extend(c.finish());
    out
}

#[test]
fn incremental_on_guest_logs() {
    for &(name, ..) in GUEST {
        let log = fixture(name);
        let whole = classify(&log);
        assert_eq!(chunked(&log, &[1, 7, 4096, 13, 100_000]), whole, "{name}");
        let per_byte: Vec<usize> = vec![1; log.len().min(40_000)];
        assert_eq!(chunked(&log, &per_byte), whole, "{name} bytewise");
    }
}

#[test]
fn over_long_lines_are_cut_the_same_way_in_every_chunking() {
    let header = b"BUG: kernel NULL pointer dereference, address: 0000000000000000";
    // A header past the cut is never seen; one before it opens a report whose first
    // line is the cut line.
    let mut beyond = vec![b'x'; MAX_LINE_BYTES];
    beyond.extend_from_slice(header);
    beyond.extend_from_slice(b"\nCall Trace:\n f+0x1/0x2\n");
    assert!(classify(&beyond).is_empty());
    assert!(chunked(&beyond, &[MAX_LINE_BYTES - 1, 2, 5]).is_empty());
    let mut within = header.to_vec();
    within.resize(3 * MAX_LINE_BYTES, b'y');
    within.extend_from_slice(b"\n RIP: 0010:vexfs_x+0x1/0x2 [vexfs]\n");
    let whole = classify(&within);
    assert_eq!(whole.len(), 1);
    let first = whole[0].report.split('\n').next().unwrap_or_default();
    assert_eq!(first.len(), MAX_LINE_BYTES);
    for cuts in [
        &[1usize; 0][..],
        &[7, MAX_LINE_BYTES, 1],
        &[MAX_LINE_BYTES - 1, 1, 1],
    ] {
        assert_eq!(chunked(&within, cuts), whole);
    }
    let mut c = Classifier::new();
    for _ in 0..64 {
        assert!(c.feed(&[b'z'; 64 << 10]).is_empty());
    }
    assert!(format!("{c:?}").contains(&format!("buffered: {MAX_LINE_BYTES}")));
}

#[test]
fn a_report_of_huge_lines_closes_at_its_size_cap() {
    let mut log = b"WARNING: CPU: 0 PID: 1 at a.c:1 vexfs_write+0x1/0x2 [vexfs]\n".to_vec();
    let mut frame = b" vexfs_write+0x1/0x2 [vexfs] ".to_vec();
    frame.resize(MAX_LINE_BYTES, b'z');
    frame.push(b'\n');
    for _ in 0..200 {
        log.extend_from_slice(&frame);
    }
    let r = classify(&log);
    assert_eq!(r.len(), 1);
    let lines = r[0].report.split('\n').count();
    assert!((2..200).contains(&lines), "{lines} lines");
    assert!(r[0].report.len() <= 1 << 20);
    // Panic lines attach to an open warning without limit of their own: the caps
    // still close the report.
    let mut log = b"WARNING: CPU: 0 PID: 1 at a.c:1 vexfs_write+0x1/0x2 [vexfs]\n".to_vec();
    for _ in 0..3000 {
        log.extend_from_slice(b"Kernel panic - not syncing: again\n");
    }
    let r = classify(&log);
    assert!(r[0].report.split('\n').count() <= 2000);
}

fn crashy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"BUG: kernel NULL pointer dereference, address: 0\n".to_vec()),
        Just(b"[   1.234567][ T12] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n".to_vec()),
        Just(b"RIP: 0010:vexfs_x+0x1/0x2 [vexfs]\n".to_vec()),
        Just(b"Call Trace:\n <TASK>\n foo+0x1/0x2\n </TASK>\n".to_vec()),
        Just(b"---[ end trace 0000000000000000 ]---\n".to_vec()),
        Just(b"Kernel panic - not syncing: Fatal exception\n".to_vec()),
        Just(b"INFO: task sh:1 blocked for more than 5 seconds.\n".to_vec()),
        Just(b"==================\n".to_vec()),
        Just(b"BUG: KASAN: use-after-free in f+0x1/0x2\nRead of size 8\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(log in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = classify(&log);
    }

    #[test]
    fn crash_like_bytes_never_panic(log in crashy_bytes()) {
        let _ = classify(&log);
    }

    #[test]
    fn incremental_equals_whole(log in crashy_bytes(), cuts in proptest::collection::vec(0usize..64, 0..32)) {
        prop_assert_eq!(chunked(&log, &cuts), classify(&log));
    }
}

/// Chunked feeding equals whole-log classification on the syzkaller corpus too (a copy
/// in `tests/fixtures/crash-corpus`, with its source and license); a missing corpus is
/// a failure, not a skip.
#[test]
fn incremental_on_corpus() {
    use base64::Engine;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crash-corpus/syzkaller-dev.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).expect("corpus json");
        let log: Vec<u8> = match row["log_b64"].as_str() {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .expect("base64"),
            None => row["log"].as_str().unwrap_or_default().as_bytes().to_vec(),
        };
        let cuts: Vec<usize> = (0..log.len() / 64 + 1)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 200) as usize
            })
            .collect();
        assert_eq!(
            chunked(&log, &cuts),
            classify(&log),
            "corpus log {}",
            row["id"]
        );
    }
}
