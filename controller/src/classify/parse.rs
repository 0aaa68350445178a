//! Turning the lines of one crash into a [`CrashReport`]: pick the title format,
//! extract the title frame, decide corruption, collect frames, module and taint.

use std::sync::LazyLock;

use regex::Regex;

use super::formats::{Format, Part, StackFmt};
use super::frames::{self, Frame};
use super::lines::Line;
use super::oops::{HeaderHit, OOPSES};
use super::pick;
use super::{CrashReport, title};

static MODULE_SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[([A-Za-z0-9_]+)\]\s*$").expect("module regex"));
static TAINT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\bTainted: ((?:[A-Z]+ +)*[A-Z]+)(?: +[0-9]|\s*$)").expect("taint regex")
});
/// Markers of a printk buffer that lost or mixed lines.
static DAMAGED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"printk messages dropped|\*\* [0-9]+ messages dropped").expect("damaged regex")
});

/// `CPU: n PID: m` lines naming two different tasks: without printk caller ids,
/// two CPUs' reports are interleaved and no title is reliable.
fn mixed_tasks(texts: &[&str]) -> bool {
    static CPU_PID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^CPU: [0-9]+ (?:UID: [0-9]+ )?PID: ([0-9]+) ").expect("cpu regex")
    });
    let mut first: Option<&str> = None;
    for t in texts {
        // The prefix test spares the regex on every other line of the report.
        if !t.starts_with("CPU: ") {
            continue;
        }
        if let Some(c) = CPU_PID.captures(t) {
            let pid = c.get(1).map_or("", |m| m.as_str());
            match first {
                None => first = Some(pid),
                Some(p) if p != pid => return true,
                Some(_) => {}
            }
        }
    }
    false
}

/// The trace after a header that names its task (`WARNING: CPU: 0 PID: 12 at`)
/// belongs to another task when the next `CPU: n PID: m` line names a different
/// PID: two reports interleaved without caller ids, so no frame is trustworthy.
fn foreign_trace(head: &str, texts: &[&str]) -> bool {
    static HEAD_PID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"CPU: [0-9]+ (?:UID: [0-9]+ )?PID: ([0-9]+) at ").expect("head pid regex")
    });
    static CPU_PID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^CPU: [0-9]+ (?:UID: [0-9]+ )?PID: ([0-9]+) ").expect("cpu regex")
    });
    let Some(want) = HEAD_PID.captures(head) else {
        return false;
    };
    texts
        .iter()
        .skip(1)
        .filter(|t| t.starts_with("CPU: "))
        .find_map(|t| CPU_PID.captures(t))
        .is_some_and(|c| c[1] != want[1])
}

/// Lines of a report that title patterns look at.
const TITLE_LINES: usize = 300;

/// Builds the report for `lines` (the first holding the header at `hit.offset`).
pub(crate) fn build(lines: &[Line], hit: HeaderHit, start_line: usize) -> CrashReport {
    let oops = &OOPSES[hit.oops];
    let first = lines[0].text();
    let head = first.get(hit.offset..).unwrap_or(first);
    let mut texts: Vec<&str> = Vec::with_capacity(lines.len());
    texts.push(head);
    texts.extend(lines[1..].iter().map(|l| l.text()));
    // Titles come from the first lines; bounding the text keeps multi-line title
    // patterns cheap on huge reports.
    let joined = texts[..texts.len().min(TITLE_LINES)].join("\n");

    let mut title = None;
    let mut alt_titles = Vec::new();
    let mut corrupted = false;
    let mut stack_frames: Vec<Frame> = Vec::new();
    // Stall and hang reports legitimately dump other CPUs and tasks.
    let mut dumps_other_cpus = false;
    let interleaved = foreign_trace(head, &texts);
    for format in &oops.formats {
        // Most formats of a header do not match: a plain match test spares the
        // capture allocation for them.
        if !format.title.is_match(&joined) {
            continue;
        }
        let Some(caps) = format.title.captures(&joined) else {
            continue;
        };
        let Some(m) = caps.get(0) else { continue };
        if m.start() > head.len() {
            continue;
        }
        if format.report.as_ref().is_some_and(|r| !r.is_match(&joined)) {
            continue;
        }
        let groups: Vec<String> = (1..caps.len())
            .map(|i| {
                caps.get(i)
                    .map_or(String::new(), |g| g.as_str().to_string())
            })
            .collect();
        dumps_other_cpus = format.stack.as_ref().is_some_and(|sf| {
            matches!(sf.extractor, pick::Extractor::Stall | pick::Extractor::Hung)
        });
        let frame = match &format.stack {
            Some(_) if interleaved => None,
            Some(sf) => {
                let (frame, cands) = extract(&texts, sf);
                stack_frames = cands;
                frame
            }
            None => None,
        };
        let needs_frame = format.fmt.contains("{F}");
        let frame_str = frame.clone().unwrap_or_else(|| "corrupted".to_string());
        title = Some(title::normalize(&render(format.fmt, &groups, &frame_str)));
        alt_titles = format
            .alt
            .iter()
            .map(|a| title::normalize(&render(a, &groups, &frame_str)))
            .collect();
        corrupted = format.corrupted || (needs_frame && frame.is_none());
        if !corrupted {
            corrupted = !has_stack(&texts, format);
        }
        break;
    }
    let title = title.unwrap_or_else(|| title::normalize(head));
    if interleaved || DAMAGED.is_match(&joined) || (!dumps_other_cpus && mixed_tasks(&texts)) {
        corrupted = true;
    }
    if stack_frames.is_empty() {
        stack_frames = first_stack(&texts);
    }
    let guilty_module = stack_frames.iter().find_map(|f| f.module.clone());
    let taint = texts
        .iter()
        .filter(|t| t.contains("Tainted: "))
        .find_map(|t| {
            TAINT
                .captures(t)
                .map(|c| c[1].split_whitespace().collect::<Vec<_>>().join(" "))
        });
    let category = title::category(&title);
    let mut signature = title.clone();
    for a in &alt_titles {
        signature.push_str(" | ");
        signature.push_str(a);
    }
    let report = lines
        .iter()
        .map(|l| l.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    CrashReport {
        category,
        severity: category.severity(),
        recovery: category.recovery(),
        title,
        alt_titles,
        corrupted,
        frames: stack_frames.into_iter().map(|f| f.func).collect(),
        guilty_module,
        taint,
        report,
        signature,
        start_line,
    }
}

/// Fills `{1}`.. with title groups and `{F}` with the frame.
fn render(fmt: &str, groups: &[String], frame: &str) -> String {
    let mut out = fmt.replace("{F}", frame);
    for (i, g) in groups.iter().enumerate() {
        out = out.replace(&format!("{{{}}}", i + 1), g);
    }
    out
}

/// The title frame and the candidate frames it was chosen from.
fn extract(texts: &[&str], sf: &StackFmt) -> (Option<String>, Vec<Frame>) {
    let (f1, c1) = try_parts(texts, &sf.parts, sf);
    if f1.is_some() || sf.parts2.is_empty() {
        return (f1, c1);
    }
    let (f2, c2) = try_parts(texts, &sf.parts2, sf);
    if f2.is_some() || c1.is_empty() {
        (f2, c2)
    } else {
        (None, c1)
    }
}

fn try_parts(texts: &[&str], parts: &[Part], sf: &StackFmt) -> (Option<String>, Vec<Frame>) {
    let mut cands: Vec<Frame> = Vec::new();
    // Index of the first frame the report itself names (header, `RIP:`, `at:`).
    let mut named: Option<usize> = None;
    let mut i = 0;
    for part in parts {
        match part {
            Part::Re(re) => {
                let mut found = false;
                while i < texts.len() {
                    let t = texts[i];
                    i += 1;
                    if let Some(c) = re.captures(t) {
                        if let Some(g) = c.iter().skip(1).flatten().next() {
                            let func = frames::normalize_func(g.as_str());
                            if is_name(&func) {
                                named.get_or_insert(cands.len());
                                cands.push(Frame {
                                    func,
                                    module: MODULE_SUFFIX.captures(t).map(|m| m[1].to_string()),
                                });
                            }
                        }
                        found = true;
                        break;
                    }
                }
                if !found {
                    // Keep what the earlier steps found (e.g. the RIP frame of a
                    // report cut before its call trace).
                    break;
                }
            }
            Part::Parse => {
                cands.extend(parse_frames(
                    &texts[i.min(texts.len())..],
                    sf.extractor.frame_cap(),
                ));
                break;
            }
        }
    }
    // When no frame of the trace qualifies (a report cut before its trace, or a
    // trace of infrastructure only), the function the report names is still the
    // best title; the missing trace marks the report corrupted elsewhere.
    let frame = pick_with_module(&cands, sf).or_else(|| {
        named
            .filter(|_| sf.named_fallback)
            .map(|i| &cands[i].func)
            .filter(|f| !sf.skip.iter().any(|s| f.contains(s)))
            .cloned()
    });
    (frame, cands)
}

/// A usable function name: not empty, not a placeholder a damaged line left.
fn is_name(func: &str) -> bool {
    !func.is_empty() && func != "corrupted" && func.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Out-of-tree modules are the code under test: a stall whose top frame is in a
/// module, or a hung task waiting inside a module, is attributed to that module
/// function; otherwise the format's extractor decides.
fn pick_with_module(cands: &[Frame], sf: &StackFmt) -> Option<String> {
    let mut real = cands
        .iter()
        .filter(|f| !frames::is_skipped(&f.func, sf.skip));
    match sf.extractor {
        pick::Extractor::Stall => {
            if let Some(top) = real.next()
                && top.module.is_some()
            {
                return Some(top.func.clone());
            }
        }
        pick::Extractor::Hung => {
            if let Some(m) = real.find(|f| f.module.is_some()) {
                return Some(m.func.clone());
            }
        }
        pick::Extractor::First | pick::Extractor::Overflow => {}
    }
    let names: Vec<String> = cands.iter().map(|f| f.func.clone()).collect();
    pick::pick(&names, sf.skip, sf.extractor)
}

/// Frames following a point in the report, up to the end of that trace.
fn parse_frames(texts: &[&str], cap: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    for (n, t) in texts.iter().enumerate() {
        if !out.is_empty() && (frames::is_stack_start(t) || t.trim().is_empty()) {
            break;
        }
        if t.contains("---[ end trace") || (n > 0 && t.starts_with("=====") && !out.is_empty()) {
            break;
        }
        // arm32 lines name the caller too: `(f) from (caller+0x1/0x2)`.
        if let Some(caller) = frames::arm_caller(t) {
            out.extend(frames::parse_frame(t));
            out.push(caller);
            continue;
        }
        if let Some(f) = frames::parse_frame(t).or_else(|| rip_frame(t))
            && is_name(&f.func)
        {
            out.push(f);
            if out.len() >= cap {
                break;
            }
        }
    }
    out
}

/// The function of a kernel `RIP: 0010:func+0x1/0x2` line inside a trace (the
/// interrupted context of a stall).
fn rip_frame(t: &str) -> Option<Frame> {
    static RIP_LINE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^\s*RIP: 0010:(?:\[<[0-9a-f]+>\] )?([A-Za-z0-9_]+)[.+]").expect("rip regex")
    });
    if !t.contains("RIP: 0010:") {
        return None;
    }
    let c = RIP_LINE.captures(t)?;
    Some(Frame {
        func: frames::normalize_func(&c[1]),
        module: MODULE_SUFFIX.captures(t).map(|m| m[1].to_string()),
    })
}

/// Frames kept of a report's first trace for the `frames` field.
const FIRST_STACK_FRAMES: usize = 64;

/// Frames of the first stack trace in the report (for the `frames` field).
fn first_stack(texts: &[&str]) -> Vec<Frame> {
    match texts.iter().position(|t| frames::is_stack_start(t)) {
        Some(i) => parse_frames(&texts[i + 1..], FIRST_STACK_FRAMES),
        None => parse_frames(texts, FIRST_STACK_FRAMES),
    }
}

/// True when the report's stack dumps are intact. A stack section header as the
/// last line means the report was cut; report types that carry a trace need a
/// section, and each section needs a frame among its next lines (unreliable `?`
/// frames are not counted as lines).
fn has_stack(texts: &[&str], format: &Format) -> bool {
    let mut seen = false;
    for (i, t) in texts.iter().enumerate() {
        if !frames::is_stack_start(t) {
            continue;
        }
        if texts[i + 1..].iter().all(|w| w.trim().is_empty()) {
            return false;
        }
        if format.no_stack {
            continue;
        }
        let mut window = texts[i + 1..]
            .iter()
            .filter(|w| !w.trim_start().starts_with("? "))
            .take(15);
        if !window.any(|w| frames::parse_frame(w).is_some()) {
            return false;
        }
        seen = true;
    }
    seen || format.no_stack || format.stack.is_none()
}
