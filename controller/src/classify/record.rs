//! The classifier's second input: the agent's structured `/dev/kmsg` records. Their
//! fields (timestamp, caller id, facility) are taken as they are, never printed into
//! a console line and parsed back; only the message is text.

use super::incremental::MAX_LINE_BYTES;
use super::lines::{Caller, Line};

/// One kernel log record, borrowed (from a `vexfs_proto::KmsgRecord` or elsewhere).
///
/// The syslog level is not part of it on purpose: one report mixes `KERN_EMERG`,
/// `KERN_WARNING` and `KERN_DEFAULT` lines, so the level decides nothing. Nor are the
/// record's dictionary lines (`SUBSYSTEM=`, `DEVICE=`): the console never prints
/// them, so they are no part of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Monotonic timestamp, microseconds since boot.
    pub ts_us: u64,
    /// Syslog facility: 0 is the kernel; anything else is user space writing to
    /// `/dev/kmsg`, which can neither start nor continue a kernel report.
    pub facility: u32,
    /// The printk caller id (`T123`, `C1`), empty when the kernel adds none.
    pub caller: &'a str,
    /// The message as `/dev/kmsg` gives it: the kernel escapes control bytes, bytes
    /// above 126 and the backslash as `\xNN`, so an embedded newline is `\x0a`.
    pub text: &'a str,
}

impl<'a> From<&'a vexfs_proto::KmsgRecord> for Record<'a> {
    fn from(r: &'a vexfs_proto::KmsgRecord) -> Self {
        Record {
            ts_us: r.ts_us,
            facility: r.facility,
            caller: &r.caller,
            text: &r.text,
        }
    }
}

impl Record<'_> {
    /// The console lines this record prints as: one per line of its message (the
    /// console prefixes every line of a multi-line record), each cut to
    /// [`MAX_LINE_BYTES`] like a console line.
    pub(crate) fn lines(&self) -> Vec<Line> {
        let caller = Caller::parse(self.caller.trim());
        let user = self.facility != 0;
        let message = unescape(self.text);
        message
            .split(|&b| b == b'\n')
            .map(|m| Line::from_record(self.ts_us, caller, user, m, MAX_LINE_BYTES))
            .collect()
    }
}

/// Undoes the kernel's `\xNN` escaping of `/dev/kmsg` text (borrowing when there is
/// none, the common case). A backslash not followed by two hex digits stays.
fn unescape(text: &str) -> std::borrow::Cow<'_, [u8]> {
    let b = text.as_bytes();
    if memchr::memmem::find(b, b"\\x").is_none() {
        return std::borrow::Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let (Some(h), Some(l)) = (
                b.get(i + 2).copied().and_then(hex),
                b.get(i + 3).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_kernel_escapes() {
        assert_eq!(&*unescape("plain"), b"plain");
        assert_eq!(&*unescape(r"a\x0ab\x5cc\xc3\xa9"), "a\nb\\cé".as_bytes());
        assert_eq!(&*unescape(r"cut \x4"), br"cut \x4");
    }

    #[test]
    fn fields_become_the_line_directly() {
        let r = Record {
            ts_us: 12_345_678,
            facility: 0,
            caller: "T42",
            text: r"first\x0a second+0x1/0x2",
        };
        let lines = r.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].raw, "[   12.345678][   T42] first");
        assert_eq!(lines[0].text(), "first");
        assert_eq!(lines[0].caller, Some(Caller::Task(42)));
        assert_eq!(lines[0].stamps, 1);
        assert!(!lines[0].user);
        assert_eq!(lines[1].text(), " second+0x1/0x2");
        let user = Record {
            facility: 1,
            caller: "",
            ..r
        };
        let l = &user.lines()[0];
        assert!(l.user);
        assert_eq!(l.caller, None);
        assert_eq!(l.raw, "[   12.345678] first");
    }
}
