//! /dev/kmsg: the record parser (pure) and a resumable reader that reports gaps.
//!
//! Every stream opens its own descriptor: the kernel then starts it at the oldest record
//! still in the ring, so resuming from any seq needs no state in the agent. Records the
//! ring overwrote show up as a jump in sequence numbers (and EPIPE on /dev/kmsg); the
//! reader turns every jump into an explicit gap.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use vexfs_proto::{Gap, KmsgRecord};

/// Longest record line accepted; the kernel caps records at 8 KiB (PRINTK_MESSAGE_MAX 2 KiB
/// of text, escaped to at most 4x). Longer lines are cut and flagged malformed.
const MAX_LINE: usize = 64 * 1024;

/// Read buffer size: one /dev/kmsg read returns exactly one record of at most 8 KiB.
const READ_BUF: usize = 16 * 1024;

/// What the parser made of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A record header line: `pri,seq,ts,flags[,caller=..];text`.
    Record(KmsgRecord),
    /// A continuation (dictionary) line, which starts with a space.
    Continuation(String),
    /// Anything else: reported, never fatal.
    Malformed(String),
}

/// Parses one kmsg line (without its trailing newline).
pub fn parse_line(line: &[u8]) -> Line {
    if let Some(rest) = line.strip_prefix(b" ") {
        return Line::Continuation(escape(rest));
    }
    let Some(semi) = memchr::memchr(b';', line) else {
        return Line::Malformed(escape(line));
    };
    let (head, text) = (&line[..semi], &line[semi + 1..]);
    let Ok(head) = std::str::from_utf8(head) else {
        return Line::Malformed(escape(line));
    };
    let mut fields = head.split(',');
    let prefix = fields.next().and_then(|f| f.parse::<u32>().ok());
    let seq = fields.next().and_then(|f| f.parse::<u64>().ok());
    let ts_us = fields.next().and_then(|f| f.parse::<u64>().ok());
    let (Some(prefix), Some(seq), Some(ts_us)) = (prefix, seq, ts_us) else {
        return Line::Malformed(escape(line));
    };
    let flags = fields.next().unwrap_or("-").to_string();
    // Further fields are optional key=value pairs; the one we know is the caller id.
    let caller = fields
        .find_map(|f| f.strip_prefix("caller="))
        .unwrap_or_default()
        .to_string();
    Line::Record(KmsgRecord {
        seq,
        level: prefix & 7,
        facility: prefix >> 3,
        ts_us,
        caller,
        text: escape(text),
        continuation: Vec::new(),
        flags,
    })
}

/// Renders bytes as text, escaping non-UTF-8 bytes as `\xNN` the way the kernel does.
pub fn escape(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 16);
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            out
        }
    }
}

/// An item the reader delivers, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A kernel log record.
    Record(KmsgRecord),
    /// Records that were overwritten before they could be read.
    Gap(Gap),
    /// A line that could not be parsed (text kept for diagnosis).
    Malformed(String),
}

/// Turns a byte stream of kmsg lines into records, gaps and malformed notices, skipping
/// records below `from_seq`. Pure: feed it bytes, collect items.
#[derive(Debug)]
pub struct Decoder {
    /// Next seq we expect to deliver (records below it are skipped).
    next_seq: u64,
    /// The last record, held until we know no continuation lines follow.
    pending: Option<KmsgRecord>,
    partial: Vec<u8>,
    partial_overflow: bool,
}

impl Decoder {
    /// A decoder that delivers records with seq >= `from_seq`.
    pub fn new(from_seq: u64) -> Self {
        Self {
            next_seq: from_seq,
            pending: None,
            partial: Vec::new(),
            partial_overflow: false,
        }
    }

    /// Next seq the decoder will deliver.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Feeds bytes. Complete lines are parsed; a record is held back until the next line
    /// shows whether continuation lines follow, or until [`Decoder::flush`].
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Item>) {
        while !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    let chunk = &bytes[..nl];
                    bytes = &bytes[nl + 1..];
                    if self.partial.is_empty() {
                        // Held to the same cap as a line that came in pieces.
                        self.line(chunk, chunk.len() > MAX_LINE, out);
                    } else {
                        let room = MAX_LINE.saturating_sub(self.partial.len());
                        let overflow = self.partial_overflow || chunk.len() > room;
                        self.partial
                            .extend_from_slice(&chunk[..chunk.len().min(room)]);
                        let line = std::mem::take(&mut self.partial);
                        self.partial_overflow = false;
                        self.line(&line, overflow, out);
                    }
                }
                None => {
                    let room = MAX_LINE.saturating_sub(self.partial.len());
                    if bytes.len() > room {
                        self.partial_overflow = true;
                    }
                    self.partial
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                    bytes = &[];
                }
            }
        }
    }

    /// Delivers a held-back record: call when the source has no more data for now
    /// (a /dev/kmsg read always returns whole records).
    pub fn flush(&mut self, out: &mut Vec<Item>) {
        if let Some(rec) = self.pending.take() {
            out.push(Item::Record(rec));
        }
    }

    fn line(&mut self, line: &[u8], overflow: bool, out: &mut Vec<Item>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        if overflow {
            self.flush(out);
            out.push(Item::Malformed(format!(
                "line longer than {MAX_LINE} bytes: {}",
                escape(&line[..line.len().min(120)])
            )));
            return;
        }
        match parse_line(line) {
            Line::Continuation(text) => {
                // A continuation of a record we skipped (below from_seq) is dropped.
                if let Some(rec) = &mut self.pending {
                    rec.continuation.push(text);
                }
            }
            Line::Malformed(text) => {
                self.flush(out);
                out.push(Item::Malformed(text));
            }
            Line::Record(rec) => {
                self.flush(out);
                if rec.seq < self.next_seq {
                    return; // already delivered before the resume point
                }
                // The kernel's seq never gets near u64::MAX; one that does leaves no
                // next seq to expect, so it is not a record we can deliver in order.
                let Some(next_seq) = rec.seq.checked_add(1) else {
                    out.push(Item::Malformed(format!(
                        "record seq {} is out of range",
                        rec.seq
                    )));
                    return;
                };
                if rec.seq > self.next_seq {
                    out.push(Item::Gap(Gap {
                        from: self.next_seq,
                        to: rec.seq - 1,
                    }));
                }
                self.next_seq = next_seq;
                self.pending = Some(rec);
            }
        }
    }
}

/// Reads a kmsg source (the real /dev/kmsg or a plain file that grows) and hands
/// decoded items to `sink` until the sink returns false. Blocking: run on its own thread.
///
/// `stop` is polled at least every `poll` so a disconnected client frees the thread even
/// when the kernel logs nothing.
pub fn follow(
    path: &Path,
    from_seq: u64,
    poll: Duration,
    stop: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(Vec<Item>) -> bool,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let (is_char_dev, pollable) = {
        use std::os::unix::fs::FileTypeExt;
        let ft = file.metadata()?.file_type();
        // A FIFO wakes readers like /dev/kmsg does (the benchmark measures latency so).
        (ft.is_char_device(), ft.is_char_device() || ft.is_fifo())
    };
    let mut decoder = Decoder::new(from_seq);
    let mut buf = vec![0u8; READ_BUF];
    let poll_ms = u16::try_from(poll.as_millis()).unwrap_or(u16::MAX);
    loop {
        if stop() {
            return Ok(());
        }
        if pollable {
            let mut fds = [nix::poll::PollFd::new(
                file.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, poll_ms) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut items = Vec::new();
        match file.read(&mut buf) {
            Ok(0) => {
                // A plain file at its end (or a FIFO without writers): deliver what we
                // hold and wait for growth.
                decoder.flush(&mut items);
                if !items.is_empty() && !sink(items) {
                    return Ok(());
                }
                std::thread::sleep(poll.min(Duration::from_millis(5)));
                continue;
            }
            Ok(n) => {
                decoder.feed(&buf[..n], &mut items);
                // /dev/kmsg returns one whole record per read; a file read that ends on a
                // line boundary most likely ends a record too, and latency matters more.
                if is_char_dev || buf[n - 1] == b'\n' {
                    decoder.flush(&mut items);
                }
            }
            // The ring overwrote records we had not read yet: the next read returns the
            // oldest record still present and the decoder reports the jump as a gap.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // EINVAL: a read buffer too small for a record; ours is larger than the kernel's
            // maximum, so treat it as a malformed record and keep going.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                items.push(Item::Malformed("kmsg read returned EINVAL".into()));
            }
            Err(e) => return Err(e),
        }
        if !items.is_empty() && !sink(items) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Record(r) => Some(r.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_record_with_caller_and_continuation() {
        let mut d = Decoder::new(0);
        let mut out = Vec::new();
        d.feed(
            b"6,0,1000,-,caller=T1;Linux version 6.12\n SUBSYSTEM=cpu\n 4,1,2000,c;next\n",
            &mut out,
        );
        d.flush(&mut out);
        // " 4,1,..." starts with a space: it is a continuation, not a record.
        assert_eq!(records(&out), vec![0]);
        let Item::Record(r) = &out[0] else { panic!() };
        assert_eq!(r.level, 6);
        assert_eq!(r.facility, 0);
        assert_eq!(r.ts_us, 1000);
        assert_eq!(r.caller, "T1");
        assert_eq!(r.text, "Linux version 6.12");
        assert_eq!(r.continuation, vec!["SUBSYSTEM=cpu", "4,1,2000,c;next"]);
    }

    #[test]
    fn facility_and_level_split() {
        let Line::Record(r) = parse_line(b"30,7,5,-;systemd") else {
            panic!()
        };
        assert_eq!((r.facility, r.level), (3, 6));
    }

    #[test]
    fn gap_reported_on_seq_jump_and_resume_point() {
        let mut d = Decoder::new(5);
        let mut out = Vec::new();
        d.feed(b"6,3,1,-;old\n6,5,1,-;a\n6,6,1,-;b\n6,9,1,-;c\n", &mut out);
        d.flush(&mut out);
        assert_eq!(records(&out), vec![5, 6, 9]);
        assert!(out.contains(&Item::Gap(Gap { from: 7, to: 8 })));
    }

    #[test]
    fn first_record_above_resume_point_is_a_gap() {
        let mut d = Decoder::new(2);
        let mut out = Vec::new();
        d.feed(b"6,10,1,-;x\n", &mut out);
        d.flush(&mut out);
        assert_eq!(out[0], Item::Gap(Gap { from: 2, to: 9 }));
    }

    #[test]
    fn malformed_and_non_utf8_lines_do_not_stop_the_decoder() {
        let mut d = Decoder::new(0);
        let mut out = Vec::new();
        d.feed(b"garbage\n6,x,1,-;bad seq\n6,0,1,-;ok \xff\xfe\n", &mut out);
        d.flush(&mut out);
        assert_eq!(records(&out), vec![0]);
        let Some(Item::Record(r)) = out.last() else {
            panic!()
        };
        assert_eq!(r.text, "ok \\xff\\xfe");
        assert_eq!(
            out.iter()
                .filter(|i| matches!(i, Item::Malformed(_)))
                .count(),
            2
        );
    }

    #[test]
    fn overlong_line_is_cut_and_reported() {
        let mut d = Decoder::new(0);
        let mut out = Vec::new();
        let mut long = b"6,0,1,-;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE * 2));
        d.feed(&long, &mut out);
        d.feed(b"\n6,1,1,-;after\n", &mut out);
        d.flush(&mut out);
        assert!(matches!(out[0], Item::Malformed(_)));
        assert_eq!(records(&out), vec![1]);
    }

    #[test]
    fn overlong_line_in_one_read_is_cut_too() {
        let mut long = b"6,0,1,-;".to_vec();
        long.resize(MAX_LINE + 1, b'a');
        long.extend_from_slice(b"\n6,1,1,-;after\n");
        let mut d = Decoder::new(0);
        let mut out = Vec::new();
        d.feed(&long, &mut out);
        d.flush(&mut out);
        assert!(matches!(&out[0], Item::Malformed(m) if m.starts_with("line longer than")));
        assert_eq!(records(&out), vec![1]);
        // Exactly at the cap is still a record.
        long.truncate(MAX_LINE);
        long.push(b'\n');
        let mut out = Vec::new();
        let mut d = Decoder::new(0);
        d.feed(&long, &mut out);
        d.flush(&mut out);
        assert_eq!(records(&out), vec![0]);
    }

    #[test]
    fn last_possible_seq_is_malformed_not_an_overflow() {
        let mut d = Decoder::new(u64::MAX - 1);
        let mut out = Vec::new();
        d.feed(
            b"6,18446744073709551614,1,-;a\n6,18446744073709551615,1,-;b\n KEY=v\n",
            &mut out,
        );
        d.flush(&mut out);
        assert_eq!(records(&out), vec![u64::MAX - 1]);
        assert!(matches!(&out[1], Item::Malformed(m) if m.contains("out of range")));
        assert_eq!(out.len(), 2);
        assert_eq!(d.next_seq(), u64::MAX);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut d = Decoder::new(0);
            let mut out = Vec::new();
            d.feed(&data, &mut out);
            d.flush(&mut out);
        }

        #[test]
        fn chunking_does_not_change_records(split in 1usize..200, n in 1u64..40) {
            let mut text = Vec::new();
            for seq in 0..n {
                text.extend(format!("6,{seq},{},-;line {seq}\n KEY=v{seq}\n", seq * 10).bytes());
            }
            let mut whole = Vec::new();
            let mut d = Decoder::new(0);
            d.feed(&text, &mut whole);
            d.flush(&mut whole);
            let mut chunked = Vec::new();
            let mut d = Decoder::new(0);
            for c in text.chunks(split) {
                d.feed(c, &mut chunked);
            }
            d.flush(&mut chunked);
            prop_assert_eq!(whole, chunked);
        }
    }
}
