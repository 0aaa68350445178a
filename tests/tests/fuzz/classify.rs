//! The crash classifier on mutated real console logs: chunked incremental
//! classification equals whole-text classification, every report starts at its header
//! line, and memory stays bounded for endless lines and huge reports.

use vexfs_controller::classify::{self, Classifier, CrashReport, MAX_LINE_BYTES};

use crate::support::{self, Rng, chunk_sizes, message_of, mutate, seed_window};

/// Peak heap of one case: inputs of at most a few hundred KiB, and reports of at most
/// 1 MiB of text (twice: whole-text and chunked results are compared).
const HEAP_BOUND: usize = 16 << 20;
/// The classifier's cap on the lines of one report.
const MAX_REPORT_LINES: usize = 2000;

/// Words that steer the classifier's state machine.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"Call Trace:\n",
    b" <TASK>\n",
    b" </TASK>\n",
    b" ? foo+0x1/0x2\n",
    b" vexfs_write+0x10/0x20 [vexfs]\n",
    b"---[ end trace 0000000000000000 ]---\n",
    b"==================================================================\n",
    b"[ T12] ",
    b"[  C1] ",
    b"[    1.000000] ",
    b"6,17,2000,-;",
    b"4,18,2001,-,caller=T7;",
    b"<4>",
    b"RIP: 0010:vexfs_fill_super+0x1/0x2 [vexfs]\n",
    b"CPU: 0 PID: 7 Comm: sh Tainted: G           OE\n",
    b"Kernel panic - not syncing: Fatal exception\n",
    b"BUG: kernel NULL pointer dereference, address: 0000000000000000\n",
    b"WARNING: CPU: 0 PID: 1 at fs/vexfs/super.c:1 vexfs_mount+0x1/0x2\n",
    b"INFO: task sh:1 blocked for more than 120 seconds.\n",
    b"BUG: KASAN: use-after-free in vexfs_read+0x1/0x2\n",
    b"general protection fault, probably for non-canonical address\n",
    b"invalid opcode: 0000 [#1] PREEMPT SMP\n",
];

#[test]
fn classifier() {
    let headers: Vec<&'static str> = classify::crash_headers();
    support::run("classifier", HEAP_BOUND, |rng| {
        let log = input(rng, &headers);
        check(rng, &log);
    });
    endless_line();
    huge_report();
    attached_panics();
    whole_text_without_newline();
}

/// One generated console log.
fn input(rng: &mut Rng, headers: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(2) + usize::from(rng.one_in(8)) {
        match rng.below(20) {
            0..=11 => {
                // Mostly short runs; whole long reports (sanitizers print three
                // stacks) now and then: they cost the most.
                let max = if rng.one_in(5) { 80 } else { 28 };
                let lines = seed_window(rng, max);
                let style = Style::random(rng);
                for l in lines {
                    style.push(rng, &mut out, l);
                }
            }
            12 | 13 => interleaved(rng, &mut out),
            14 | 15 => synthetic(rng, &mut out, headers),
            16 => {
                let n = rng.size(300);
                out.extend((0..n).map(|_| rng.byte()));
            }
            17 if rng.one_in(4) => long_line(rng, &mut out, headers),
            _ => {
                let lines = seed_window(rng, 30);
                for l in lines {
                    Style::Kmsg.push(rng, &mut out, l);
                }
            }
        }
    }
    for _ in 0..rng.size(6) {
        mutate(rng, &mut out, TOKENS);
    }
    out
}

/// How seed lines are written out.
#[derive(Clone, Copy)]
enum Style {
    /// As captured.
    Raw,
    /// Timestamp plus printk caller id, like a kernel with CONFIG_PRINTK_CALLER.
    Caller(u32),
    /// `/dev/kmsg` records.
    Kmsg,
    /// Syslog level prefix, `\r\n` endings (a serial console through a pty).
    SyslogCrlf,
}

impl Style {
    fn random(rng: &mut Rng) -> Style {
        match rng.below(6) {
            0 => Style::Caller(rng.below(300) as u32),
            1 => Style::Kmsg,
            2 => Style::SyslogCrlf,
            _ => Style::Raw,
        }
    }

    fn push(self, rng: &mut Rng, out: &mut Vec<u8>, line: &[u8]) {
        match self {
            Style::Raw => out.extend_from_slice(line),
            Style::Caller(task) => {
                let ts = rng.below(100_000);
                out.extend(format!("[{:>5}.{:06}][ T{task}] ", ts / 1000, ts % 1000).bytes());
                out.extend_from_slice(message_of(line));
            }
            Style::Kmsg => {
                let prio = rng.below(8);
                let seq = rng.below(1 << 20);
                out.extend(format!("{prio},{seq},{},-;", seq * 1000).bytes());
                out.extend_from_slice(message_of(line));
            }
            Style::SyslogCrlf => {
                out.extend(format!("<{}>", rng.below(8)).bytes());
                out.extend_from_slice(line);
                out.push(b'\r');
            }
        }
        out.push(b'\n');
    }
}

/// Two windows' lines mixed, each with its own caller id (two CPUs printing).
fn interleaved(rng: &mut Rng, out: &mut Vec<u8>) {
    let a = seed_window(rng, 28);
    let b = seed_window(rng, 28);
    let (ta, tb) = (Style::Caller(1), Style::Caller(rng.range(2, 9) as u32));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if j >= b.len() || (i < a.len() && rng.one_in(2)) {
            ta.push(rng, out, a[i]);
            i += 1;
        } else {
            tb.push(rng, out, b[j]);
            j += 1;
        }
    }
}

/// A made-up report: any known header, then report-ish lines.
fn synthetic(rng: &mut Rng, out: &mut Vec<u8>, headers: &[&str]) {
    let style = Style::random(rng);
    let header = format!("{} vexfs_{}", rng.pick(headers), rng.below(50));
    style.push(rng, out, header.as_bytes());
    for _ in 0..rng.size(30) {
        let line: &[u8] = match rng.below(8) {
            0 => b"Call Trace:",
            1 => b" <TASK>",
            2 => b" </TASK>",
            3 => b"---[ end trace 0000000000000000 ]---",
            4 => b"Modules linked in: vexfs(OE)",
            5 => b"unrelated: something else happened",
            _ => b" vexfs_iget+0x1/0x2 [vexfs]",
        };
        style.push(rng, out, line);
    }
}

/// What long lines are made of.
const FILLERS: &[&[u8]] = &[b"A", b"x+0x1/0x2 ", "é".as_bytes(), b"\0\r"];

/// A line near or beyond the cap, with a header before or after the cut.
fn long_line(rng: &mut Rng, out: &mut Vec<u8>, headers: &[&str]) {
    let len = match rng.below(3) {
        0 => rng.range(MAX_LINE_BYTES - 2, MAX_LINE_BYTES + 2),
        1 => rng.range(MAX_LINE_BYTES, 3 * MAX_LINE_BYTES),
        _ => rng.range(1024, MAX_LINE_BYTES),
    };
    let start = out.len();
    let filler = *rng.pick(FILLERS);
    while out.len() - start < len {
        out.extend_from_slice(filler);
    }
    out.truncate(start + len);
    let header = rng.pick(headers).as_bytes();
    let at = start + rng.below(len + 1);
    out.splice(at..at, header.iter().copied());
    out.push(b'\n');
}

/// The properties of one input.
fn check(rng: &mut Rng, log: &[u8]) {
    let whole = classify::classify(log);
    let mut c = Classifier::new();
    let mut chunked = Vec::new();
    let mut pos = 0;
    for n in chunk_sizes(rng, log.len()) {
        chunked.extend(c.feed(&log[pos..pos + n]));
        pos += n;
    }
    chunked.extend(c.finish());
    support::assert_same(
        &chunked,
        &whole,
        "chunked classification against whole-text",
    );
    check_reports(log, &whole);
}

/// Each report starts at its header line (cut to the line cap), in input order, and
/// its derived fields agree.
fn check_reports(log: &[u8], reports: &[CrashReport]) {
    let lines: Vec<&[u8]> = log.split(|&b| b == b'\n').collect();
    let mut previous: Option<usize> = None;
    for r in reports {
        assert!(
            previous < Some(r.start_line),
            "reports out of order: {previous:?} then {}",
            r.start_line
        );
        previous = Some(r.start_line);
        let line = lines
            .get(r.start_line)
            .unwrap_or_else(|| panic!("start_line {} past the input", r.start_line));
        let first = r.report.split('\n').next().unwrap_or_default();
        assert_eq!(
            first,
            console_text(&line[..line.len().min(MAX_LINE_BYTES)]),
            "the report's first line is not line {} of the input",
            r.start_line
        );
        assert!(r.report.split('\n').count() <= MAX_REPORT_LINES);
        assert_eq!(r.severity, r.category.severity());
        assert_eq!(r.recovery, r.category.recovery());
        let mut signature = r.title.clone();
        for a in &r.alt_titles {
            signature = format!("{signature} | {a}");
        }
        assert_eq!(r.signature, signature);
    }
}

/// What a report keeps of a console line: lossy UTF-8 without CR and NUL.
fn console_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| c != '\r' && c != '\0')
        .collect()
}

const HEADER: &[u8] =
    b"[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000 ";

/// 64 MiB of one line with no newline, fed in 64 KiB chunks: the buffer holds the cap.
fn endless_line() {
    // Checks come after the heap bound, so a broken cap shows as a heap failure.
    let reports = support::bounded("classifier", "64 MiB line, no newline", 1 << 20, || {
        let chunk = vec![b'A'; 64 << 10];
        let mut c = Classifier::new();
        let mut reports = c.feed(HEADER);
        for _ in 0..1024 {
            reports.extend(c.feed(&chunk));
        }
        reports.extend(c.feed(b"\n Call Trace:\n"));
        reports.extend(c.finish());
        reports
    });
    assert_eq!(reports.len(), 1);
    let first = reports[0].report.split('\n').next().unwrap_or_default();
    assert_eq!(first.len(), MAX_LINE_BYTES);
    assert!(first.starts_with(std::str::from_utf8(HEADER).unwrap_or_default()));
}

/// A header followed by 4000 report-ish lines of the maximal length (64 MiB): the
/// report closes at its size cap instead of holding 2000 such lines.
fn huge_report() {
    let what = "report of 4000 maximal lines";
    let reports = support::bounded("classifier", what, 8 << 20, || {
        // Timestamped like the header: lines with fewer stamps are someone else's.
        let mut line = b"[    1.000001]  vexfs_write+0x1/0x2 [vexfs] ".to_vec();
        line.resize(MAX_LINE_BYTES, b'z');
        line.push(b'\n');
        let mut c = Classifier::new();
        let mut reports = c.feed(HEADER);
        reports.extend(c.feed(b"\n"));
        for _ in 0..4000 {
            reports.extend(c.feed(&line));
        }
        reports.extend(c.finish());
        reports
    });
    assert_eq!(reports.len(), 1);
    let len = reports[0].report.len();
    assert!((1 << 19..2 << 20).contains(&len), "report of {len} bytes");
}

/// Panic lines join an open warning report (the panic is its ending) with no cap
/// of their own: 4000 maximal ones still leave the classifier small. Reports are
/// dropped as they come, since holding them is the caller's memory.
fn attached_panics() {
    let what = "warning + 4000 maximal panic lines";
    let (first, lines, bytes) = support::bounded("classifier", what, 8 << 20, || {
        let mut line = b"Kernel panic - not syncing: ".to_vec();
        line.resize(MAX_LINE_BYTES, b'p');
        line.push(b'\n');
        let mut c = Classifier::new();
        let mut first = None;
        let (mut lines, mut bytes) = (0, 0);
        let warning = b"WARNING: CPU: 0 PID: 1 at a.c:1 vexfs_write+0x1/0x2 [vexfs]\n";
        let mut seen = |reports: Vec<CrashReport>| {
            for r in reports {
                first.get_or_insert(r.category);
                lines = r.report.split('\n').count().max(lines);
                bytes = r.report.len().max(bytes);
            }
        };
        seen(c.feed(warning));
        for _ in 0..4000 {
            seen(c.feed(&line));
        }
        seen(c.finish());
        (first, lines, bytes)
    });
    assert_eq!(first, Some(classify::Category::Warning));
    assert!(lines <= MAX_REPORT_LINES, "a report of {lines} lines");
    assert!(bytes < 2 << 20, "a report of {bytes} bytes");
}

/// Whole-text classification of an 8 MiB newline-less input copies only the cap.
fn whole_text_without_newline() {
    let mut log = HEADER.to_vec();
    log.resize(8 << 20, b'A');
    let reports = support::bounded(
        "classifier",
        "8 MiB whole text, no newline",
        1 << 20,
        || classify::classify(&log),
    );
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].report.len(), MAX_LINE_BYTES);
}
