//! The incremental classifier: bytes in, completed crash reports out.
//!
//! While no report is open, complete lines are skipped with a multi-pattern
//! prefilter over the raw bytes (the common case: hours of quiet console). A header
//! hit opens a report; lines are then taken one by one until the report ends: an end
//! marker (`---[ end trace`, a sanitizer's closing `====`, `</TASK>`) followed by an
//! unrelated line, the next crash header, a gap of unrelated lines, a size cap, or
//! [`Classifier::finish`]. Only complete lines are ever examined, and each line is
//! cut to [`MAX_LINE_BYTES`] as it arrives, so how the input is chunked cannot change
//! the result and a stream that never sends a newline cannot grow the buffer.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

use super::CrashReport;
use super::lines::{Caller, Line};
use super::oops::{self, HeaderHit, OOPSES};
use super::parse;
use super::record::Record;

/// Lines of unrelated output after which an open report is considered finished.
const GAP: usize = 15;
/// Cap on the lines of one report.
const MAX_LINES: usize = 2000;
/// Longest line kept, in bytes; the rest of a longer line is dropped unseen. Kernel
/// lines are at most ~1 KiB and the longest line of the syzkaller corpus is ~8 KiB.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Cap on the text of one report, so a report of many maximal lines stays small:
/// real reports are a few tens of KiB.
const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// Cap on interleaved lines from other callers while a report is open.
const MAX_FOREIGN: usize = 2000;
/// After an end marker, this many foreign lines finish the report.
const ENDED_FOREIGN: usize = 5;
/// Within this many lines of a header, an oops line is part of the same crash
/// (`kernel BUG at` is followed by `invalid opcode:`).
const ATTACHED: usize = 8;

static PREFILTER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    // Leftmost-first lets the searcher use its SIMD (Teddy) packed prefilter.
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(oops::header_strings())
        .expect("prefilter")
});

/// Lines that clearly belong to a report (stack dumps, registers, lockdep chains).
/// Decided by the first byte where it can be (indented frames, `<IRQ>`, `[<pc>]`,
/// rules and `?` frames are most of a report), then by a frame offset, and only
/// then by the full pattern.
fn reportish(t: &str) -> bool {
    let Some(&first) = t.as_bytes().first() else {
        return false;
    };
    if first.is_ascii_whitespace() || b"<#-=*(?".contains(&first) || t.as_bytes().starts_with(b"[<")
    {
        return true;
    }
    REPORTISH.is_match(t)
}

static REPORTISH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:\s|<|#|-|=|\*|\[<|\(|\?|",
        r"[A-Z0-9]{2,3}: ?[0-9a-f(]|R[A-Z0-9]{1,2}: |[A-Z]{2}: |",
        r"Code:|RIP:|Call Trace|Call trace|Modules linked in|CPU:|Hardware name|Workqueue:|",
        r"Tainted:|Kernel panic|Kernel Offset|Showing|NMI backtrace|Sending NMI|",
        r"[0-9]+ locks? held|no locks held|other info|the existing|which lock|but task|",
        r"Possible unsafe|Chain exists|stack backtrace|irq event|hardirqs|softirqs|",
        r"Allocated|Freed|allocated by|freed by|The buggy|Memory state|page:|flags:|raw:|",
        r"(?:Read|Write) (?:of size|at addr)|",
        r"page dumped|Disabling lock debugging|Last potentially|Second to last|",
        r"Uninit was|Local variable|Bytes [0-9]|Byte [0-9]|kfence-#|Use-after-free|",
        r"Out-of-bounds|Invalid|Corrupted memory|unreferenced object|comm |hex dump|",
        r"backtrace|Backtrace|Exception stack|PC is at|LR is at|pc :|lr :|sp :|x[0-9]+:|",
        r"Internal error|Process |Stack:|Instruction dump|NIP|LR|task:|",
        r"INFO: lockdep|.*\+0x[0-9a-f]+/0x[0-9a-f]+|[a-z0-9_]+: [0-9a-f]{8})"
    ))
    .expect("reportish regex")
});

/// End markers: after one, the report ends at the next line that is not report-ish
/// (`---[ end trace`, `</TASK>`, a line of `=`). Plain substring tests: this runs for
/// every line of an open report.
fn soft_end(t: &str) -> bool {
    static END_TRACE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new("---[ end trace"));
    static TASK_END: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new("</TASK>"));
    let b = t.as_bytes();
    let rule = b.first() == Some(&b'=') && t.trim_start_matches('=').trim().is_empty();
    rule || END_TRACE.find(b).is_some() || TASK_END.find(b).is_some()
}

#[derive(Clone)]
struct Pending {
    hit: HeaderHit,
    start_line: usize,
    caller: Option<Caller>,
    stamps: u8,
    lines: Vec<Line>,
    /// Number of leading `lines` that belong to the report.
    keep: usize,
    /// Bytes of text held in `lines`.
    bytes: usize,
    gap: usize,
    foreign: usize,
    ended: bool,
}

impl Pending {
    fn push(&mut self, line: Line) {
        self.bytes += line.raw.len() + 1;
        self.lines.push(line);
    }

    /// The report reached a size cap and must close.
    fn full(&self) -> bool {
        // Closed while one more maximal line would still fit, so the report's text
        // (lines and newlines) never exceeds the cap.
        self.lines.len() >= MAX_LINES || self.bytes + MAX_LINE_BYTES + 1 > MAX_REPORT_BYTES
    }
}

/// Incremental crash classifier over a byte stream.
#[derive(Default, Clone)]
pub struct Classifier {
    /// Input not yet examined, every line already cut to [`MAX_LINE_BYTES`].
    buf: Vec<u8>,
    /// Bytes of the unterminated last line seen so far, dropped ones included.
    line_len: usize,
    line_no: usize,
    pending: Option<Pending>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("buffered", &self.buf.len())
            .field("line_no", &self.line_no)
            .field("open_report", &self.pending.is_some())
            .finish()
    }
}

impl Classifier {
    /// A classifier at the start of a log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more bytes; returns the reports this input completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<CrashReport> {
        self.append(bytes);
        let mut out = Vec::new();
        self.process(false, &mut out);
        out
    }

    /// Feeds one kernel log record (the agent's `/dev/kmsg` stream); returns the
    /// reports it completed. Its fields are used as they are (caller id, timestamp,
    /// facility); each line of its message is one line of the log. A classifier is
    /// fed either records or console bytes, not both.
    pub fn feed_record(&mut self, record: Record<'_>) -> Vec<CrashReport> {
        let mut out = Vec::new();
        for line in record.lines() {
            self.handle_line(line, &mut out);
            self.line_no += 1;
        }
        out
    }

    /// The report still open, as [`Classifier::finish`] would complete it if the
    /// input ended after its last complete line; the classifier goes on unchanged
    /// (a live watcher looks at it while the guest is quiet).
    pub fn pending(&self) -> Option<CrashReport> {
        self.pending
            .as_ref()
            .map(|p| parse::build(&p.lines[..p.keep.max(1)], p.hit, p.start_line))
    }

    /// Appends `bytes` to the buffer, keeping at most [`MAX_LINE_BYTES`] of each line
    /// (the cut depends only on the line, never on where a chunk ended).
    fn append(&mut self, bytes: &[u8]) {
        // `bytes[..copied]` is in the buffer or dropped; the current line started
        // `line_len` bytes before `start`.
        let mut copied = 0;
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
        for end in ends {
            let len = self.line_len.saturating_add(end - start);
            if len > MAX_LINE_BYTES {
                let keep = MAX_LINE_BYTES
                    .saturating_sub(self.line_len)
                    .min(end - start);
                if copied < start + keep {
                    self.buf.extend_from_slice(&bytes[copied..start + keep]);
                }
                copied = copied.max(end);
            }
            self.line_len = len;
            if end < bytes.len() {
                // The newline ends the line; it is copied with what follows.
                start = end + 1;
                self.line_len = 0;
            }
        }
        self.buf.extend_from_slice(&bytes[copied..]);
    }

    /// Ends the input: the last partial line is a line, open reports complete.
    pub fn finish(mut self) -> Vec<CrashReport> {
        let mut out = Vec::new();
        self.process(true, &mut out);
        if let Some(p) = self.pending.take() {
            out.push(close(p));
        }
        out
    }

    fn process(&mut self, finishing: bool, out: &mut Vec<CrashReport>) {
        let complete_end = if finishing {
            self.buf.len()
        } else {
            match memchr::memrchr(b'\n', &self.buf) {
                Some(i) => i + 1,
                None => return,
            }
        };
        let mut pos = 0;
        while pos < complete_end {
            if self.pending.is_none() {
                let region = &self.buf[pos..complete_end];
                match PREFILTER.find(region) {
                    None => {
                        self.line_no += count_newlines(region);
                        pos = complete_end;
                        break;
                    }
                    Some(m) => {
                        let hit = pos + m.start();
                        let line_start = memchr::memrchr(b'\n', &self.buf[pos..hit])
                            .map_or(pos, |i| pos + i + 1);
                        self.line_no += count_newlines(&self.buf[pos..line_start]);
                        pos = line_start;
                    }
                }
            }
            let end = memchr::memchr(b'\n', &self.buf[pos..complete_end])
                .map_or(complete_end, |i| pos + i);
            let line = Line::parse(&self.buf[pos..end]);
            pos = if end < complete_end {
                end + 1
            } else {
                complete_end
            };
            self.handle_line(line, out);
            self.line_no += 1;
        }
        self.buf.drain(..pos);
    }

    fn handle_line(&mut self, line: Line, out: &mut Vec<CrashReport>) {
        let header = if !line.user && PREFILTER.is_match(line.text().as_bytes()) {
            oops::match_header(line.text())
        } else {
            None
        };
        let Some(p) = self.pending.as_mut() else {
            if let Some(hit) = header {
                self.open(hit, line);
            }
            return;
        };
        let foreign = matches!((p.caller, line.caller), (Some(a), Some(b)) if a != b)
            || line.stamps < p.stamps
            || line.user;
        if let Some(hit) = header
            && !foreign
        {
            if attached(p, hit) {
                p.push(line);
                p.keep = p.lines.len();
                p.gap = 0;
                if p.full() {
                    out.extend(self.pending.take().map(close));
                }
                return;
            }
            // Another task's message landing inside a stack dump is interleaving,
            // not the end of this report.
            if !p.ended && in_trace(p) {
                p.foreign += 1;
                return;
            }
            let done = self.pending.take().map(close);
            out.extend(done);
            self.open(hit, line);
            return;
        }
        if foreign {
            p.foreign += 1;
            if p.foreign >= MAX_FOREIGN || (p.ended && p.foreign >= ENDED_FOREIGN) {
                out.extend(self.pending.take().map(close));
            }
            return;
        }
        let text = line.text();
        let blank = text.trim().is_empty();
        let reportish = !blank && reportish(text);
        if p.ended && !blank && !reportish {
            out.extend(self.pending.take().map(close));
            return;
        }
        p.push(line);
        if reportish {
            p.keep = p.lines.len();
            p.gap = 0;
        } else if !blank {
            p.gap += 1;
        }
        let last = p.lines[p.lines.len() - 1].text();
        if soft_end(last) && (p.lines.len() > 3 || !last.starts_with('=')) {
            p.ended = true;
        }
        if p.gap >= GAP || p.full() {
            out.extend(self.pending.take().map(close));
        }
    }

    fn open(&mut self, hit: HeaderHit, line: Line) {
        self.pending = Some(Pending {
            hit,
            start_line: self.line_no,
            caller: line.caller,
            stamps: line.stamps,
            bytes: line.raw.len() + 1,
            lines: vec![line],
            keep: 1,
            gap: 0,
            foreign: 0,
            ended: false,
        });
    }
}

/// Whether a header inside an open report is a consequence of the same crash.
fn attached(p: &Pending, hit: HeaderHit) -> bool {
    let header = OOPSES[hit.oops].header;
    match header {
        // Panics after an oops/warning/lockup are that crash's ending.
        "Kernel panic" => OOPSES[p.hit.oops].header != "Kernel panic" || p.lines.len() < ATTACHED,
        // The oops line of an arch fault report follows its fault details, before
        // any stack dump.
        "invalid opcode:"
        | "divide error:"
        | "divide_error:"
        | "general protection fault"
        | "stack segment: "
        | "Internal error:"
        | "Unable to handle kernel" => {
            p.lines.len() < ATTACHED
                || (p.lines.len() < 4 * ATTACHED
                    && !p
                        .lines
                        .iter()
                        .any(|l| super::frames::is_stack_start(l.text())))
        }
        // A stall report whose dump has not begun yet absorbs a report the dumping
        // code itself triggers (a WARNING in the stall printer): the stall is the
        // crash, its dump follows the nested report.
        _ => {
            p.lines.len() < ATTACHED
                && p.lines[0].text().contains("detected stall")
                && !p
                    .lines
                    .iter()
                    .any(|l| super::frames::is_stack_start(l.text()))
        }
    }
}

/// True while the report's last line (after the header) is a stack frame.
fn in_trace(p: &Pending) -> bool {
    p.lines[1..]
        .iter()
        .rev()
        .find(|l| !l.text().trim().is_empty())
        .is_some_and(|l| {
            super::frames::parse_frame(l.text()).is_some()
                || super::frames::PLUS_0X.find(l.text().as_bytes()).is_some()
        })
}

fn close(mut p: Pending) -> CrashReport {
    p.lines.truncate(p.keep.max(1));
    parse::build(&p.lines, p.hit, p.start_line)
}

/// Newline count; a plain loop the compiler vectorises.
fn count_newlines(b: &[u8]) -> usize {
    // memchr: the supervisor counts every kmsg line of every guest through here.
    memchr::memchr_iter(b'\n', b).count()
}
