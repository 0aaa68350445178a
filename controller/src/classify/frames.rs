//! Stack frames: recognising frame lines in the kernel's several trace formats and
//! normalising their function names; the skip table is in [`super::skip`], frame
//! selection in [`super::pick`].

use std::sync::LazyLock;

use regex::Regex;

/// Function-name pattern: C identifiers, plus Rust paths like `<a::B>::f`.
pub(crate) const FUNC: &str =
    r"(<[^>\s]+>(?:::[A-Za-z0-9_]+)+|[A-Za-z0-9_]+(?:::[A-Za-z0-9_]+)*)(?:\.|\+)";
/// A printed code address: `[<ffffffff813a0886>]`.
pub(crate) const PC: &str = r"\[<?(?:0x)?[0-9a-f]+>?\]";

/// Substring searchers built once: these tests run on every line of every report.
pub(crate) static PLUS_0X: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new("+0x"));
static ARM_FROM: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(") from ["));

/// arm32 frame: `[<pc>] (func) from [<pc>] (caller)`.
static ARM_FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*\[<?(?:0x)?[0-9a-f]+>?\] \(([A-Za-z0-9_.]+)\) from \[<?(?:0x)?[0-9a-f]+>?\] \(([A-Za-z0-9_.]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?\)")
        .expect("arm frame regex")
});

/// Lines that begin a stack trace section of a report.
static STACK_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Call (?:T|t)race|Backtrace:|Allocated:|Allocated by task [0-9]+:|Freed:|Freed by task [0-9]+:|Allocated in |Freed in |Last potentially related work creation:|Second to last potentially related work creation:|Stack:\s*$|^\s*(?:allocated|freed) by task [0-9]+|\(in kfence-#[0-9]+\):|Uninit was (?:stored|created)|^\s*Local variable|BUG: (?:KMSAN|KCSAN|KFENCE): |^\s*backtrace(?: \(crc [0-9a-f]+\))?:")
        .expect("stack start regex")
});

/// Literals one of which every [`STACK_START`] match contains: most report lines hold
/// none, and one multi-literal scan rejects them before the regex runs.
static STACK_START_LITERALS: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build([
            "Call ",
            "Backtrace:",
            "Allocated",
            "Freed",
            "potentially related",
            "Stack:",
            "llocated by task",
            "reed by task",
            "kfence-#",
            "Uninit was",
            "Local variable",
            "BUG: K",
            "backtrace",
        ])
        .expect("stack start literals")
});

/// True when `t` begins a stack trace section ([`STACK_START`]).
pub(crate) fn is_stack_start(t: &str) -> bool {
    STACK_START_LITERALS.is_match(t) && STACK_START.is_match(t)
}

/// A frame recognised on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Normalised function name (offsets and compiler suffixes removed).
    pub func: String,
    /// Module in brackets after the frame, e.g. `vexfs`.
    pub module: Option<String>,
}

/// Parses a frame line; `?` (unreliable) frames give `None`.
pub(crate) fn parse_frame(line: &str) -> Option<Frame> {
    // powerpc marks the interrupted function: `--- interrupt: 700 at func+0x2c/0x70`.
    if let Some(rest) = line.trim_start().strip_prefix("--- interrupt: ") {
        let at = rest.find(" at ")?;
        let name = &rest[at + 4..];
        let end = name.find('+')?;
        return Some(Frame {
            func: normalize_func(&name[..end]),
            module: None,
        });
    }
    // Every frame form carries an offset (`+0x`); most report lines (registers,
    // code bytes, lockdep prose) do not, and skipping the regexes for them is most
    // of the cost of parsing a crash-dense log.
    let arm = ARM_FROM.find(line.as_bytes()).is_some();
    if !arm && PLUS_0X.find(line.as_bytes()).is_none() {
        return None;
    }
    if arm && let Some(c) = ARM_FRAME.captures(line) {
        return Some(Frame {
            func: normalize_func(&c[1]),
            module: None,
        });
    }
    // x86/arm64 frames: `[<pc>] [<pc>] ? func.isra.0+0x1/0x2 [mod]`; `?` frames are
    // unreliable guesses of the unwinder and are not frames for titles.
    let f = super::frame_scan::scan(line)?;
    if f.unreliable {
        return None;
    }
    Some(Frame {
        func: normalize_func(f.func),
        module: f.module.map(str::to_string),
    })
}

/// The caller named by an arm32 `(f) from (caller)` frame line.
pub(crate) fn arm_caller(line: &str) -> Option<Frame> {
    ARM_FROM.find(line.as_bytes())?;
    let c = ARM_FRAME.captures(line)?;
    Some(Frame {
        func: normalize_func(&c[2]),
        module: None,
    })
}

/// Strips syscall-entry wrappers so one syscall gets one name across kernel
/// versions: arch wrappers become `sys_foo`, inner wrappers become `foo`; demangles
/// the plain Itanium C++ names of user-space reports (`_Z8fakeNameiii` -> `fakeName`).
pub(crate) fn normalize_func(f: &str) -> String {
    let f = f.split('.').next().unwrap_or(f);
    // Prefix checks first: this runs for every frame of every report.
    if let Some(rest) = f.strip_prefix("__") {
        const ARCHES: &[&str] = &[
            "x64_", "ia32_", "arm64_", "riscv_", "s390x_", "s390_", "powerpc_", "mips_",
        ];
        for a in ARCHES {
            if let Some(r) = rest.strip_prefix(a) {
                let r = r.strip_prefix("compat_").unwrap_or(r);
                if let Some(name) = r.strip_prefix("sys_").filter(|n| !n.is_empty()) {
                    return format!("sys_{name}");
                }
            }
        }
    }
    const INNER: &[&str] = &[
        "compat_SyS_",
        "SyS_",
        "ksys_",
        "__se_compat_sys_",
        "__se_sys_",
        "__do_compat_sys_",
        "__do_sys_",
        "C_SYSC_",
        "SYSC_",
    ];
    for p in INNER {
        if let Some(name) = f.strip_prefix(p).filter(|n| !n.is_empty()) {
            return name.to_string();
        }
    }
    if let Some(name) = demangle(f) {
        return name.to_string();
    }
    f.to_string()
}

/// The unqualified name of an Itanium-mangled function, `_Z<len><name>...`.
fn demangle(f: &str) -> Option<&str> {
    let rest = f.strip_prefix("_Z")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let len: usize = rest[..digits].parse().ok()?;
    rest.get(digits..digits + len).filter(|n| !n.is_empty())
}

/// True when `func` is generic infrastructure, per the global list or `extra`.
pub(crate) fn is_skipped(func: &str, extra: &[&str]) -> bool {
    super::skip::SKIP.is_match(func) || extra.iter().any(|s| func.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_forms() {
        let f = parse_frame(" trig_write+0x86/0xbd [crashmod]").unwrap();
        assert_eq!(f.func, "trig_write");
        assert_eq!(f.module.as_deref(), Some("crashmod"));
        assert_eq!(parse_frame(" ? do_set_pte+0x189/0x1d0"), None);
        let f = parse_frame(" [<ffffffff813a0886>] _sched_show_task+0x2a6/0x4f0").unwrap();
        assert_eq!(f.func, "_sched_show_task");
        let f = parse_frame("  check_cpu_stall.isra.61+0x6e6/0x15b0").unwrap();
        assert_eq!(f.func, "check_cpu_stall");
        let f = parse_frame(" __x64_sys_rmdir+0x1/0x2").unwrap();
        assert_eq!(f.func, "sys_rmdir");
        assert_eq!(normalize_func("SyS_rmdir"), "rmdir");
        assert_eq!(normalize_func("__se_sys_mremap"), "mremap");
        let f = parse_frame(
            "[<803b18e8>] (nfs_wait.part.3) from [<803b1d64>] (nfs_get_client+0x2b0/0x488)",
        )
        .unwrap();
        assert_eq!(f.func, "nfs_wait");
        assert_eq!(parse_frame("Hardware name: QEMU"), None);
        assert_eq!(normalize_func("_Z8fakeNameiii"), "fakeName");
        assert_eq!(normalize_func("__arm64_compat_sys_ioctl"), "sys_ioctl");
        assert_eq!(normalize_func("__do_sys_rmdir"), "rmdir");
        let f = parse_frame("--- interrupt: 700 at assert_slb_presence+0x2c/0x70").unwrap();
        assert_eq!(f.func, "assert_slb_presence");
        let f = parse_frame(" <rust_binder::process::Process>::update_ref+0x1/0x2").unwrap();
        assert_eq!(f.func, "<rust_binder::process::Process>::update_ref");
    }
}
