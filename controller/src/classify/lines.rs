//! Byte-level line handling: splitting console output into lines and stripping the
//! prefixes the kernel, the console and the capture tooling put in front of the
//! message (timestamps, printk caller ids, kmsg record headers, syslog levels); and
//! building the same lines straight from the agent's structured kmsg records.

/// The printk caller id (`CONFIG_PRINTK_CALLER`): the task that printed, or the CPU
/// when it printed from interrupt context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// `T123`: task context, by PID.
    Task(u32),
    /// `C1`: interrupt context, by CPU.
    Cpu(u32),
}

impl Caller {
    /// Parses `T123` / `C1` (surrounding spaces already trimmed).
    pub(crate) fn parse(t: &str) -> Option<Caller> {
        let b = t.as_bytes();
        if b.len() < 2 || !b[1..].iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u32 = t[1..].parse().ok()?;
        match b[0] {
            b'T' => Some(Caller::Task(n)),
            b'C' => Some(Caller::Cpu(n)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Task(n) => write!(f, "T{n}"),
            Caller::Cpu(n) => write!(f, "C{n}"),
        }
    }
}

/// One console line after prefix stripping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The original line (lossy UTF-8, carriage returns removed), for report text.
    pub raw: String,
    /// Where the message starts in `raw`: the message is always a suffix of the line,
    /// so it is kept as an offset rather than a second copy (one allocation a line).
    text_start: usize,
    /// The printk caller id when the kernel printed one.
    pub caller: Option<Caller>,
    /// How many `[ 1.234]` timestamps prefixed the line: lines with fewer than a
    /// report's header are not kernel output (program logs, shell output).
    pub stamps: u8,
    /// A record user space wrote to `/dev/kmsg` (a facility other than the kernel's):
    /// it can neither start nor continue a kernel report. Console text cannot tell.
    pub user: bool,
}

impl Line {
    /// Parses one line (without its terminating newline).
    pub(crate) fn parse(bytes: &[u8]) -> Line {
        let raw = clean(bytes);
        let (text, caller, stamps) = strip_prefixes(&raw);
        let text_start = raw.len() - text.len();
        Line {
            raw,
            text_start,
            caller,
            stamps,
            user: false,
        }
    }

    /// The message with all recognised prefixes removed.
    pub(crate) fn text(&self) -> &str {
        &self.raw[self.text_start..]
    }

    /// The line a console prints for one line of a kmsg record's message:
    /// `[    1.234567][  T123] message`, built from the record's fields and cut to
    /// `max` bytes as the console reader cuts it. The message may itself carry
    /// timestamps (a relayed console); those count as they do on the console.
    pub(crate) fn from_record(
        ts_us: u64,
        caller: Option<Caller>,
        user: bool,
        message: &[u8],
        max: usize,
    ) -> Line {
        use std::fmt::Write;
        let mut raw = String::with_capacity(message.len().min(max) + 24);
        let _ = write!(raw, "[{:5}.{:06}]", ts_us / 1_000_000, ts_us % 1_000_000);
        if let Some(c) = caller {
            let _ = write!(raw, "[{:>6}]", c.to_string());
        }
        raw.push(' ');
        let prefix = raw.len();
        let room = max.saturating_sub(prefix).min(message.len());
        raw.push_str(&clean(&message[..room]));
        let (text, nested_caller, nested) = strip_stamps(&raw[prefix..]);
        let text_start = raw.len() - text.len();
        Line {
            caller: nested_caller.or(caller),
            stamps: nested.saturating_add(1),
            text_start,
            raw,
            user,
        }
    }
}

/// Lossy UTF-8 with carriage returns and NULs removed: serial consoles emit `\r\n`
/// and the odd NUL, neither of which belongs to the message.
fn clean(bytes: &[u8]) -> String {
    // Strict validation first: console text is nearly always valid UTF-8, and the
    // check is cheaper than the lossy decoder's chunking.
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    if memchr::memchr2(b'\r', 0, s.as_bytes()).is_some() {
        s.chars().filter(|&c| c != '\r' && c != '\0').collect()
    } else {
        s.into_owned()
    }
}

/// Removes any sequence of `[ 12.345678]` timestamps, `[ T123]` caller ids,
/// `<6>` syslog levels and a leading kmsg `6,123,4567,-;` record header.
pub(crate) fn strip_prefixes(line: &str) -> (&str, Option<Caller>, u8) {
    let mut s = line;
    let mut kmsg_caller = None;
    if let Some((rest, c)) = strip_kmsg_header(s) {
        s = rest;
        kmsg_caller = c;
    }
    let (s, caller, stamps) = strip_stamps(s);
    (s, caller.or(kmsg_caller), stamps)
}

/// Removes any sequence of timestamps, caller ids and syslog levels.
fn strip_stamps(line: &str) -> (&str, Option<Caller>, u8) {
    let mut s = line;
    let mut caller = None;
    let mut stamps = 0u8;
    loop {
        // Most message text starts with neither: one byte test decides.
        match s.as_bytes().first() {
            Some(b'<') => {
                if let Some(rest) = strip_syslog_level(s) {
                    s = rest;
                    continue;
                }
                break;
            }
            Some(b'[') => {}
            _ => break,
        }
        let Some(inner_end) = s[1..].find(']') else {
            break;
        };
        let inner = &s[1..1 + inner_end];
        let after = &s[inner_end + 2..];
        let t = inner.trim_start();
        if is_timestamp(t) {
            stamps = stamps.saturating_add(1);
            s = after.strip_prefix(' ').unwrap_or(after);
        } else if let Some(c) = Caller::parse(t) {
            caller = Some(c);
            s = after.strip_prefix(' ').unwrap_or(after);
        } else {
            break;
        }
    }
    (s, caller, stamps)
}

fn is_timestamp(t: &str) -> bool {
    let Some((secs, frac)) = t.split_once('.') else {
        return false;
    };
    !secs.is_empty()
        && !frac.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn strip_syslog_level(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    (end > 0 && end <= 3 && rest[..end].bytes().all(|b| b.is_ascii_digit()))
        .then(|| &rest[end + 1..])
}

/// `/dev/kmsg` records: `prio,seq,usec,flags[,caller=T12];message`; returns the
/// message and the caller id when the record carries one.
fn strip_kmsg_header(s: &str) -> Option<(&str, Option<Caller>)> {
    // Cheap reject first: a record header starts with its priority digits.
    if !s.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let semi = s.find(';')?;
    let head = &s[..semi];
    let mut fields = head.split(',');
    let numeric =
        |f: Option<&str>| f.is_some_and(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !(numeric(fields.next()) && numeric(fields.next()) && numeric(fields.next())) {
        return None;
    }
    let caller = fields
        .find_map(|f| f.strip_prefix("caller="))
        .and_then(Caller::parse);
    Some((&s[semi + 1..], caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_nested_timestamps_and_caller() {
        let l = Line::parse(b"[   7.868] [    3.039359] BUG: kernel NULL pointer\r");
        assert_eq!(l.text(), "BUG: kernel NULL pointer");
        assert_eq!(l.caller, None);
        let l = Line::parse(b"[   12.345678][ T123] WARNING: foo");
        assert_eq!(l.text(), "WARNING: foo");
        assert_eq!(l.caller, Some(Caller::Task(123)));
        let l = Line::parse(b"[ 1349.302950][    C1]  netlink_unicast+0xfc/0x1dc");
        assert_eq!(l.text(), " netlink_unicast+0xfc/0x1dc");
        assert_eq!(l.caller, Some(Caller::Cpu(1)));
    }

    #[test]
    fn strips_kmsg_and_syslog() {
        assert_eq!(
            Line::parse(b"4,1234,5678901,-;WARNING: x").text(),
            "WARNING: x"
        );
        let l = Line::parse(b"4,12,56,-,caller=T12;BUG: y");
        assert_eq!(l.text(), "BUG: y");
        assert_eq!(l.caller, Some(Caller::Task(12)));
        assert_eq!(Line::parse(b"<4>[ 1.0] INFO: z").text(), "INFO: z");
        assert_eq!(Line::parse(b"[not a ts] x").text(), "[not a ts] x");
    }
}
