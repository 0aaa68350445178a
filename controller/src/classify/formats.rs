//! Building blocks of the oops table: title formats, stack-extraction recipes
//! (which lines lead to the title frame, which frames to skip, how to pick) and the
//! shared format families (lockdep, kernel panics).

use regex::Regex;

use super::frames::{FUNC, PC};
use super::pick::Extractor;

/// One step of stack-frame extraction.
pub(crate) enum Part {
    /// The next line matching this regex; its first group, if any, is a candidate.
    Re(Regex),
    /// Parse the frames that follow.
    Parse,
}

/// How to find the frame a title names.
pub(crate) struct StackFmt {
    /// Primary sequence of steps.
    pub parts: Vec<Part>,
    /// Fallback sequence when `parts` does not match.
    pub parts2: Vec<Part>,
    /// Extra skip patterns (substrings) for this report type.
    pub skip: &'static [&'static str],
    /// How to pick among the candidates.
    pub extractor: Extractor,
    /// Without a qualifying trace frame, title the frame the report names itself
    /// (lock site, faulting RIP). Off for sanitizers, whose header names the
    /// accessing helper rather than the culprit.
    pub named_fallback: bool,
}

/// One title format of a header.
pub(crate) struct Format {
    /// Must match at the start of the report (may span lines).
    pub title: Regex,
    /// Must match somewhere in the report for this format to apply.
    pub report: Option<Regex>,
    /// Template: `{1}`.. are title groups, `{F}` the stack frame.
    pub fmt: &'static str,
    /// Alternative title templates.
    pub alt: &'static [&'static str],
    /// How to find `{F}`.
    pub stack: Option<StackFmt>,
    /// The report type carries no stack trace; its absence is not corruption.
    pub no_stack: bool,
    /// Matching this format means the report is corrupted.
    pub corrupted: bool,
}

/// A header and its formats.
pub(crate) struct Oops {
    /// Literal text that starts a report (searched anywhere in a line).
    pub header: &'static str,
    /// Title formats, first match wins.
    pub formats: Vec<Format>,
    /// Lines containing the header that are not crashes.
    pub suppressions: Vec<Regex>,
}

/// Expands the `{{FUNC}}`, `{{PC}}`, `{{ADDR}}`, `{{SRC}}` placeholders and compiles.
pub(crate) fn re(s: &str) -> Regex {
    let s = format!("(?m){s}")
        .replace("{{FUNC}}", FUNC)
        .replace("{{PC}}", PC)
        .replace("{{ADDR}}", "0x[0-9a-f]+")
        .replace("{{SRC}}", r"([a-zA-Z0-9\-_/.]+\.[a-z]+:[0-9]+)");
    Regex::new(&s).unwrap_or_else(|e| panic!("bad oops regex {s}: {e}"))
}

pub(crate) fn f(title: &str, fmt: &'static str) -> Format {
    Format {
        // Titles start at the header, which starts the report text.
        title: re(&format!(r"\A(?:{title})")),
        report: None,
        fmt,
        alt: &[],
        stack: None,
        no_stack: false,
        corrupted: false,
    }
}

impl Format {
    pub(crate) fn stack(mut self, s: StackFmt) -> Self {
        self.stack = Some(s);
        self
    }
    pub(crate) fn alt(mut self, alt: &'static [&'static str]) -> Self {
        self.alt = alt;
        self
    }
    pub(crate) fn no_stack(mut self) -> Self {
        self.no_stack = true;
        self
    }
    pub(crate) fn corrupted(mut self) -> Self {
        self.corrupted = true;
        self
    }
    pub(crate) fn report(mut self, r: &str) -> Self {
        self.report = Some(re(r));
        self
    }
}

pub(crate) const CALL_TRACE: &str = r"Call (?:T|t)race:|Backtrace:|^\s*backtrace:|Call trace:";
pub(crate) const RIP: &str = r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{{PC}} +){0,2}{{FUNC}}|(?:[0-9]+:)?0x[0-9a-f]+|(?:[0-9]+:)?{{PC}} +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))";

pub(crate) fn parts(list: &[&str]) -> Vec<Part> {
    list.iter()
        .map(|p| {
            if *p == "PARSE" {
                Part::Parse
            } else {
                Part::Re(re(p))
            }
        })
        .collect()
}

pub(crate) fn stack(p: &[&str], skip: &'static [&'static str]) -> StackFmt {
    StackFmt {
        parts: parts(p),
        parts2: Vec::new(),
        skip,
        extractor: Extractor::First,
        named_fallback: true,
    }
}

/// Frames after the call trace line.
pub(crate) fn call_trace(skip: &'static [&'static str]) -> StackFmt {
    stack(&[CALL_TRACE, "PARSE"], skip)
}

/// The faulting instruction's function, then the call trace.
pub(crate) fn rip_stack(skip: &'static [&'static str]) -> StackFmt {
    StackFmt {
        parts: parts(&[RIP, CALL_TRACE, "PARSE"]),
        parts2: parts(&[CALL_TRACE, "PARSE"]),
        skip,
        extractor: Extractor::First,
        named_fallback: true,
    }
}

/// WARNINGs: the RIP frame and what follows, else the call trace.
pub(crate) fn warning_stack(skip: &'static [&'static str]) -> StackFmt {
    StackFmt {
        parts: parts(&[RIP, "PARSE"]),
        parts2: parts(&[CALL_TRACE, "PARSE"]),
        skip,
        extractor: Extractor::First,
        named_fallback: true,
    }
}

/// Stalls: frames of the interrupted context, anchored on dispatch functions.
/// Where the interrupted context starts in a stall dump.
pub(crate) const STALL_IRQ: &str =
    r"apic_timer_interrupt|Exception stack|el1_irq|el1h_64_irq|sysvec_apic_timer_interrupt";
pub(crate) const STALL_FALLBACK: &str = r"^\s*RIP: 0010:(?:{{PC}} )?([A-Za-z0-9_]+)[.+]|^\s*pc : ([A-Za-z0-9_]+)[.+]|PC is at ([A-Za-z0-9_]+)[.+]|Call (?:T|t)race:|Backtrace:";

pub(crate) fn stall_stack(first: &str) -> StackFmt {
    StackFmt {
        parts: parts(&[first, "PARSE"]),
        // No interrupt frame: the interrupted context's RIP, else the call trace.
        parts2: parts(&[STALL_FALLBACK, "PARSE"]),
        skip: &[
            "apic_timer_interrupt",
            "rcu",
            "hrtimer",
            "tick_",
            "update_process_times",
            "sched_show_task",
            "irq",
            "nmi",
            "timer_interrupt",
            "sysvec",
            "print_cpu_stall",
            "print_other_cpu_stall",
            "watchdog",
            "smp_call_function",
            "trigger_all_cpu_backtrace",
            "arch_trigger",
            "cpu_stop",
            // Compat ioctl shims (`lo_compat_ioctl`) only forward to the handler,
            // which is the frame a stall names.
            "_compat_ioctl",
        ],
        extractor: Extractor::Stall,
        named_fallback: true,
    }
}

/// Stack overflows: the call trace read to its end, titled by the recursion's
/// entry ([`Extractor::Overflow`]). The faulting RIP is wherever the stack ran out,
/// so a report without its trace has no name (no `named_fallback`).
pub(crate) fn overflow_stack() -> StackFmt {
    StackFmt {
        parts: parts(&[CALL_TRACE, "PARSE"]),
        parts2: Vec::new(),
        // The overflow handler's own frames, on arches that print them.
        skip: &["bad_stack", "handle_bad_stack", "panic_bad_stack"],
        extractor: Extractor::Overflow,
        named_fallback: false,
    }
}

pub(crate) const IRQ_LOCK_SKIP: &[&str] = &[
    "lock_acquire",
    "_raw_spin_lock",
    "_raw_read_lock",
    "_raw_write_lock",
];
pub(crate) const LOCK_SKIP: &[&str] = &[
    "lock_acquire",
    "__lock_acquire",
    "lock_sock",
    "lock_timer_base",
    "process_one_work",
    "worker_thread",
];

/// Lockdep reports name the lock acquisition site (`at: func`).
pub(crate) fn lockdep_at() -> StackFmt {
    stack(
        &[
            "at: (?:{{PC}} +)?{{FUNC}}",
            "at: (?:{{PC}} +)?{{FUNC}}",
            "PARSE",
        ],
        LOCK_SKIP,
    )
}

/// Lockdep reports shared by the `WARNING:` and (older kernels) `INFO:` headers.
pub(crate) fn lockdep_formats(h: &str) -> Vec<Format> {
    vec![
        f(&format!("{h}: possible circular locking dependency detected"), "possible deadlock in {F}")
            .report("is trying to acquire lock")
            .stack(lockdep_at()),
        f(&format!("{h}: possible circular locking dependency detected"), "WARNING: possible circular locking dependency detected")
            .no_stack()
            .corrupted(),
        f(&format!("{h}: possible recursive locking detected"), "possible deadlock in {F}")
            .stack(lockdep_at()),
        f(&format!("{h}: (?:SOFTIRQ|HARDIRQ)-(?:READ-)?safe -> (?:SOFTIRQ|HARDIRQ)-(?:READ-)?unsafe lock order detected"), "possible deadlock in {F}")
            .stack(StackFmt {
                parts: parts(&["which became (?:SOFTIRQ|HARDIRQ)-(?:READ-)?irq-safe at:", "PARSE"]),
                parts2: lockdep_at().parts,
                ..stack(&[], IRQ_LOCK_SKIP)
            }),
        f(&format!("{h}: possible irq lock inversion dependency detected"), "possible deadlock in {F}")
            .stack(lockdep_at()),
        f(&format!("{h}: inconsistent lock state"), "inconsistent lock state in {F}")
            .stack(stack(&["takes:", "at: (?:{{PC}} +)?{{FUNC}}", CALL_TRACE, "PARSE"], LOCK_SKIP)),
        f(&format!("{h}: suspicious RCU usage"), if h == "WARNING" { "WARNING: suspicious RCU usage in {F}" } else { "INFO: suspicious RCU usage in {F}" })
            .stack(call_trace(&["rcu", "kmem", "slab", "lockdep"])),
    ]
}

pub(crate) fn kernel_panic_formats() -> Vec<Format> {
    vec![
        f(
            "Kernel panic - not syncing: Attempted to kill init!",
            "kernel panic: Attempted to kill init!",
        )
        .no_stack(),
        f(
            "Kernel panic - not syncing: Couldn't open N_TTY ldisc",
            "kernel panic: Couldn't open N_TTY ldisc",
        )
        .no_stack(),
        f(
            "Kernel panic - not syncing: (?:Fatal exception|Fatal exception in interrupt)",
            "kernel panic: Fatal exception",
        )
        .no_stack()
        .corrupted(),
        f(
            "Kernel panic - not syncing: corrupted stack end detected inside scheduler",
            "kernel panic: corrupted stack end in {F}",
        )
        .stack(StackFmt {
            extractor: Extractor::Stall,
            ..call_trace(&["schedule", "retint_kernel", "panic"])
        }),
        f(
            "Kernel panic - not syncing: kernel stack overflow",
            "kernel stack overflow in {F}",
        )
        .stack(overflow_stack()),
        f(
            "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in",
            "kernel panic: stack is corrupted in {F}",
        )
        // The function is named in the message, or (older kernels print only its
        // address) found in the call trace.
        .no_stack()
        .stack(stack(
            &["stack is corrupted in: (?:{{FUNC}})?", CALL_TRACE, "PARSE"],
            &["stack_chk", "__stack_chk"],
        )),
        f(
            "Kernel panic - not syncing: hung_task: blocked tasks",
            "kernel panic: hung_task: blocked tasks",
        )
        .no_stack()
        .corrupted(),
        f(
            "Kernel panic - not syncing: (?:panic_on_warn set|Fatal exception in interrupt)",
            "kernel panic: panic_on_warn set",
        )
        .no_stack()
        .corrupted(),
        f(
            "Kernel panic - not syncing: VFS: Unable to mount root fs on (.*)",
            "kernel panic: VFS: Unable to mount root fs on {1}",
        )
        .no_stack(),
        f(
            r"Kernel panic - not syncing: ([^\n]*?)\s*$",
            "kernel panic: {1}",
        )
        .no_stack(),
    ]
}
