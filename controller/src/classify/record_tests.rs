//! The record entry point and the open-report view: records give the same reports
//! as the equivalent console text, and `pending` shows what `finish` would give.

use std::path::PathBuf;

use super::lines::Line;
use super::{Classifier, CrashReport, Record, classify};

fn guest_logs() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guest-logs");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let log = std::fs::read(&p).expect("read fixture");
            (p.display().to_string(), log)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 20, "guest logs missing");
    out
}

/// A record and the console line the kernel prints for it.
struct Pair {
    ts_us: u64,
    caller: String,
    text: String,
}

impl Pair {
    fn record(&self) -> Record<'_> {
        Record {
            ts_us: self.ts_us,
            facility: 0,
            caller: &self.caller,
            text: &self.text,
        }
    }

    /// The console prefixes every line of a multi-line record.
    fn console(&self) -> String {
        let caller = if self.caller.is_empty() {
            String::new()
        } else {
            format!("[{:>6}]", self.caller)
        };
        let prefix = format!(
            "[{:5}.{:06}]{caller} ",
            self.ts_us / 1_000_000,
            self.ts_us % 1_000_000
        );
        self.text
            .split("\\x0a")
            .map(|l| format!("{prefix}{}\n", l.replace("\\x5c", "\\")))
            .collect()
    }
}

fn from_records(pairs: &[Pair]) -> Vec<CrashReport> {
    let mut c = Classifier::new();
    let mut out = Vec::new();
    for p in pairs {
        out.extend(c.feed_record(p.record()));
    }
    out.extend(c.finish());
    out
}

fn from_console(pairs: &[Pair]) -> Vec<CrashReport> {
    let text: String = pairs.iter().map(Pair::console).collect();
    classify(text.as_bytes())
}

#[test]
fn records_classify_like_their_console_lines_on_the_guest_logs() {
    let mut crashes = 0;
    for (name, log) in guest_logs() {
        // The messages of the real logs, as an agent would deliver them; every fifth
        // line from another task, the way two CPUs' output interleaves.
        let pairs: Vec<Pair> = log
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| Pair {
                ts_us: 1_000_000 + 1_000 * i as u64,
                caller: if i % 5 == 4 { "T9" } else { "T1" }.to_string(),
                text: Line::parse(l).text().replace('\\', "\\x5c"),
            })
            .collect();
        let want = from_console(&pairs);
        crashes += want.len();
        assert_eq!(from_records(&pairs), want, "{name}");
    }
    assert!(crashes >= 20, "{crashes} crashes");
}

#[test]
fn a_multi_line_record_is_one_line_per_message_line() {
    let pairs = [
        Pair {
            ts_us: 2_000_001,
            caller: "T7".into(),
            text: r"BUG: kernel NULL pointer dereference, address: 0000000000000008\x0aRIP: 0010:vexfs_mount+0x10/0x20 [vexfs]".into(),
        },
        Pair {
            ts_us: 2_000_002,
            caller: "T7".into(),
            text: r"Call Trace:\x0a vexfs_fill_super+0x1/0x2 [vexfs]\x0a mount_bdev+0x1/0x2".into(),
        },
    ];
    let r = from_records(&pairs);
    assert_eq!(r, from_console(&pairs));
    assert_eq!(
        r[0].title,
        "BUG: unable to handle kernel NULL pointer dereference in vexfs_mount"
    );
    assert_eq!(
        r[0].frames,
        ["vexfs_mount", "vexfs_fill_super", "mount_bdev"]
    );
}

#[test]
fn user_space_records_neither_start_nor_join_a_report() {
    let rec = |facility, caller, text| Record {
        ts_us: 5_000_000,
        facility,
        caller,
        text,
    };
    // A test program writing a header-like line to /dev/kmsg is not a crash.
    let mut c = Classifier::new();
    assert!(
        c.feed_record(rec(1, "T50", "BUG: this is only a log line"))
            .is_empty()
    );
    assert!(c.finish().is_empty());
    // Inside a report, a user line is foreign, even from the same task.
    let mut c = Classifier::new();
    c.feed_record(rec(
        0,
        "T5",
        "WARNING: CPU: 0 PID: 5 at fs/x.c:1 vexfs_write+0x1/0x2 [vexfs]",
    ));
    c.feed_record(rec(0, "T5", "RIP: 0010:vexfs_write+0x1/0x2 [vexfs]"));
    c.feed_record(rec(1, "T5", "harness: step 3 done"));
    c.feed_record(rec(0, "T5", "Call Trace:"));
    c.feed_record(rec(0, "T5", " vfs_write+0x1/0x2"));
    let r = c.finish();
    assert_eq!(r[0].title, "WARNING in vexfs_write");
    assert!(!r[0].report.contains("harness"));
    assert!(r[0].report.contains("vfs_write"));
}

#[test]
fn pending_shows_what_finish_would_give_at_every_line() {
    let mut open = 0;
    for (name, log) in guest_logs() {
        let mut c = Classifier::new();
        for (i, line) in log.split_inclusive(|&b| b == b'\n').enumerate() {
            c.feed(line);
            let seen = c.pending();
            // A partial last line is finish's to take; quiet stretches are sampled.
            if !line.ends_with(b"\n") || (seen.is_none() && i % 7 != 0) {
                continue;
            }
            let mut done = c.clone().finish();
            assert!(done.len() <= 1, "{name}: line {i}");
            assert_eq!(seen, done.pop(), "{name}: line {i}");
            open += usize::from(seen.is_some());
        }
    }
    assert!(open > 500, "only {open} lines with a report open");
}
