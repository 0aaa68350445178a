//! A hand-written scanner for the x86/arm64 stack-frame line, the line a report has
//! most of: `[<pc>] [<pc>] ? func.isra.0+0x1/0x2 [mod]`. It accepts exactly what the
//! pattern in its tests accepts (checked there against the regex on generated
//! lines); scanning bytes once is several times cheaper than a capturing regex, and
//! every frame of every report passes through here, more than once.

/// A frame line's parts: whether it is a `?` (unreliable) frame, the function as
/// printed (suffixes such as `.isra.0` included, offset excluded), the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawFrame<'a> {
    /// Marked `?`: an unwinder guess.
    pub unreliable: bool,
    /// The function name up to its `.suffix`es.
    pub func: &'a str,
    /// `[mod]` after the offset.
    pub module: Option<&'a str>,
}

fn ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Length of the leading run of bytes satisfying `f`.
fn run(s: &[u8], f: impl Fn(u8) -> bool) -> usize {
    s.iter().take_while(|&&b| f(b)).count()
}

/// Leading whitespace length (Unicode, as the pattern's `\s`).
fn spaces(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// `[<ffffffff81000000>]` (brackets, optional `<>`, optional `0x`, hex): its length.
fn pc(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    if s.first() != Some(&b'[') {
        return None;
    }
    if s.get(i) == Some(&b'<') {
        i += 1;
    }
    if s[i..].starts_with(b"0x") && s.get(i + 2).copied().is_some_and(hex) {
        i += 2;
    }
    let n = run(&s[i..], hex);
    if n == 0 {
        return None;
    }
    i += n;
    if s.get(i) == Some(&b'>') {
        i += 1;
    }
    (s.get(i) == Some(&b']')).then_some(i + 1)
}

/// The function name: `<path::Type>::f` or `a::b::c` / `c`; its length.
fn func(text: &str) -> Option<usize> {
    let s = text.as_bytes();
    let mut i = if s.first() == Some(&b'<') {
        // Any character but `>` and (Unicode) whitespace, as the pattern's `[^>\s]`.
        let inner = text[1..]
            .char_indices()
            .find(|&(_, c)| c == '>' || c.is_whitespace())
            .map_or(text.len() - 1, |(k, _)| k);
        if inner == 0 || s.get(1 + inner) != Some(&b'>') {
            return None;
        }
        // At least one `::segment` must follow the `<...>`.
        let mut i = 2 + inner;
        let mut segments = 0;
        while s[i..].starts_with(b"::") && s.get(i + 2).copied().is_some_and(ident) {
            i += 2 + run(&s[i + 2..], ident);
            segments += 1;
        }
        if segments == 0 {
            return None;
        }
        return Some(i);
    } else {
        let n = run(s, ident);
        if n == 0 {
            return None;
        }
        n
    };
    while s[i..].starts_with(b"::") && s.get(i + 2).copied().is_some_and(ident) {
        i += 2 + run(&s[i + 2..], ident);
    }
    Some(i)
}

/// Scans one line for a frame; `None` when it is not one.
pub(crate) fn scan(line: &str) -> Option<RawFrame<'_>> {
    let b = line.as_bytes();
    let mut i = spaces(line);
    for _ in 0..2 {
        let Some(n) = pc(&b[i..]) else { break };
        let ws = spaces(&line[i + n..]);
        if ws == 0 {
            // A code address glued to what follows is no frame line.
            return None;
        }
        i += n + ws;
    }
    let mut unreliable = false;
    if b.get(i) == Some(&b'?') {
        let ws = spaces(&line[i + 1..]);
        if ws == 0 {
            return None;
        }
        unreliable = true;
        i += 1 + ws;
    }
    let start = i;
    i += func(&line[i..])?;
    let name = &line[start..i];
    // Compiler suffixes: `.isra.0`, `.cold`, `.constprop.1`.
    while b.get(i) == Some(&b'.') && b.get(i + 1).copied().is_some_and(ident) {
        i += 1 + run(&b[i + 1..], ident);
    }
    if !b[i..].starts_with(b"+0x") {
        return None;
    }
    i += 3;
    let n = run(&b[i..], hex);
    if n == 0 {
        return None;
    }
    i += n;
    if b[i..].starts_with(b"/0x") && b.get(i + 3).copied().is_some_and(hex) {
        i += 3 + run(&b[i + 3..], hex);
    }
    let ws = spaces(&line[i..]);
    let module = (ws > 0 && b.get(i + ws) == Some(&b'['))
        .then(|| {
            let m = i + ws + 1;
            let n = run(&b[m..], ident);
            (n > 0 && b.get(m + n) == Some(&b']')).then(|| &line[m..m + n])
        })
        .flatten();
    Some(RawFrame {
        unreliable,
        func: name,
        module,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::classify::frames::PC;

    /// The pattern the scanner implements, as the oracle.
    static FRAME: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(
            r"^\s*(?:{PC}\s+){{0,2}}(\?\s+)?(<[^>\s]+>(?:::[A-Za-z0-9_]+)+|[A-Za-z0-9_]+(?:::[A-Za-z0-9_]+)*)(?:\.[A-Za-z0-9_]+)*\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?(?:\s+\[([A-Za-z0-9_]+)\])?"
        ))
        .expect("frame regex")
    });

    fn oracle(line: &str) -> Option<RawFrame<'_>> {
        let c = FRAME.captures(line)?;
        Some(RawFrame {
            unreliable: c.get(1).is_some(),
            func: c.get(2)?.as_str(),
            module: c.get(3).map(|m| m.as_str()),
        })
    }

    #[test]
    fn frame_forms() {
        for line in [
            " trig_write+0x86/0xbd [crashmod]",
            " ? do_set_pte+0x189/0x1d0",
            " [<ffffffff813a0886>] _sched_show_task+0x2a6/0x4f0",
            " [<ffffffff813a0886>] [<ffffffff813a0886>] ? f.isra.1+0x2/0x4",
            "  check_cpu_stall.isra.61+0x6e6/0x15b0",
            " <rust_binder::process::Process>::update_ref+0x1/0x2",
            " a::b::c+0x1",
            "f+0x1/0x2 [mod",
            "f+0x1/0x2  [m_1] trailing",
            "[<0x12>] g+0x1/0x2",
            "[<0x>] g+0x1/0x2",
            "[<ff>]g+0x1/0x2",
            "?g+0x1/0x2",
            "Hardware name: QEMU",
            "RIP: 0010:f+0x1/0x2",
            "<a>+0x1",
            "<a b>::c+0x1",
            "f.+0x1",
            "f+0xZ",
            "f+0x1/0xZ",
            "\u{a0}f+0x1",
        ] {
            assert_eq!(scan(line), oracle(line), "{line:?}");
        }
        assert_eq!(
            scan(" ? f.isra.0+0x1/0x2 [vexfs]"),
            Some(RawFrame {
                unreliable: true,
                func: "f",
                module: Some("vexfs")
            })
        );
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just(" "),
            Just("\t"),
            Just("[<ffff8100>]"),
            Just("[0x12]"),
            Just("[<"),
            Just(">]"),
            Just("?"),
            Just("func_a"),
            Just("b9"),
            Just("::"),
            Just("<"),
            Just(">"),
            Just("."),
            Just("isra"),
            Just("+0x"),
            Just("1f"),
            Just("/0x"),
            Just("["),
            Just("]"),
            Just("mod"),
            Just("Z"),
            Just("x"),
        ]
    }

    proptest! {
        #[test]
        fn scanner_equals_the_pattern(parts in proptest::collection::vec(piece(), 0..14)) {
            let line: String = parts.concat();
            prop_assert_eq!(scan(&line), oracle(&line), "{:?}", line);
        }
    }
}
