//! Byte-level line handling: splitting console output into lines and stripping the
//! prefixes the kernel, the console and the capture tooling put in front of the
//! message (timestamps, printk caller ids, kmsg record headers, syslog levels).

/// One console line after prefix stripping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// The original line (lossy UTF-8, carriage returns removed), for report text.
    pub raw: String,
    /// The message with all recognised prefixes removed.
    pub text: String,
    /// The printk caller id (`T123` or `C1`) when the kernel printed one.
    pub caller: Option<String>,
    /// How many `[ 1.234]` timestamps prefixed the line: lines with fewer than a
    /// report's header are not kernel output (program logs, shell output).
    pub stamps: u8,
}

impl Line {
    /// Parses one line (without its terminating newline).
    pub(crate) fn parse(bytes: &[u8]) -> Line {
        let raw = clean(bytes);
        let (text, caller, stamps) = strip_prefixes(&raw);
        Line {
            text: text.to_string(),
            caller,
            stamps,
            raw,
        }
    }
}

/// Lossy UTF-8 with carriage returns and NULs removed: serial consoles emit `\r\n`
/// and the odd NUL, neither of which belongs to the message.
fn clean(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.bytes().any(|b| b == b'\r' || b == 0) {
        s.chars().filter(|&c| c != '\r' && c != '\0').collect()
    } else {
        s.into_owned()
    }
}

/// Removes any sequence of `[ 12.345678]` timestamps, `[ T123]` caller ids,
/// `<6>` syslog levels and a leading kmsg `6,123,4567,-;` record header.
pub(crate) fn strip_prefixes(line: &str) -> (&str, Option<String>, u8) {
    let mut s = line;
    let mut caller = None;
    let mut stamps = 0u8;
    if let Some((rest, kmsg_caller)) = strip_kmsg_header(s) {
        s = rest;
        caller = kmsg_caller;
    }
    loop {
        if let Some(rest) = strip_syslog_level(s) {
            s = rest;
            continue;
        }
        let Some(inner_end) = s.strip_prefix('[').and_then(|r| r.find(']')) else {
            break;
        };
        let inner = &s[1..1 + inner_end];
        let after = &s[inner_end + 2..];
        let t = inner.trim_start();
        if is_timestamp(t) {
            stamps = stamps.saturating_add(1);
            s = after.strip_prefix(' ').unwrap_or(after);
        } else if is_caller_id(t) {
            caller = Some(t.to_string());
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

fn is_caller_id(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 2 && (b[0] == b'T' || b[0] == b'C') && b[1..].iter().all(u8::is_ascii_digit)
}

fn strip_syslog_level(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    (end > 0 && end <= 3 && rest[..end].bytes().all(|b| b.is_ascii_digit()))
        .then(|| &rest[end + 1..])
}

/// `/dev/kmsg` records: `prio,seq,usec,flags[,caller=T12];message`; returns the
/// message and the caller id when the record carries one.
fn strip_kmsg_header(s: &str) -> Option<(&str, Option<String>)> {
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
        .filter(|c| is_caller_id(c))
        .map(str::to_string);
    Some((&s[semi + 1..], caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_nested_timestamps_and_caller() {
        let l = Line::parse(b"[   7.868] [    3.039359] BUG: kernel NULL pointer\r");
        assert_eq!(l.text, "BUG: kernel NULL pointer");
        assert_eq!(l.caller, None);
        let l = Line::parse(b"[   12.345678][ T123] WARNING: foo");
        assert_eq!(l.text, "WARNING: foo");
        assert_eq!(l.caller.as_deref(), Some("T123"));
        let l = Line::parse(b"[ 1349.302950][    C1]  netlink_unicast+0xfc/0x1dc");
        assert_eq!(l.text, " netlink_unicast+0xfc/0x1dc");
        assert_eq!(l.caller.as_deref(), Some("C1"));
    }

    #[test]
    fn strips_kmsg_and_syslog() {
        assert_eq!(
            Line::parse(b"4,1234,5678901,-;WARNING: x").text,
            "WARNING: x"
        );
        let l = Line::parse(b"4,12,56,-,caller=T12;BUG: y");
        assert_eq!(l.text, "BUG: y");
        assert_eq!(l.caller.as_deref(), Some("T12"));
        assert_eq!(Line::parse(b"<4>[ 1.0] INFO: z").text, "INFO: z");
        assert_eq!(Line::parse(b"[not a ts] x").text, "[not a ts] x");
    }
}
