//! The guest agent's /dev/kmsg decoder: well-formed records round-trip (seq, level,
//! facility, timestamp, flags, caller, text, continuation lines) with the gaps and
//! malformed notices a model predicts, whatever the chunking; on mangled streams the
//! output does not depend on chunking and seqs stay contiguous; an endless line costs
//! no more than the line cap.

use vexfs_agent::kmsg::{Decoder, Item, Line, parse_line};
use vexfs_proto::{Gap, KmsgRecord};

use crate::support::{self, Rng, chunk_sizes, message_of, mutate, seed_window};

/// The decoder's longest line.
const MAX_LINE: usize = 64 * 1024;
/// Peak heap of one case.
const HEAP_BOUND: usize = 8 << 20;

const TOKENS: &[&[u8]] = &[
    b"\n",
    b";",
    b",",
    b"6,",
    b",-;",
    b",caller=T1",
    b"\n ",
    b" KEY=v\n",
    b"18446744073709551615",
    b"4294967296",
    b"-1",
];

#[test]
fn kmsg_decoder() {
    support::run("kmsg_decoder", HEAP_BOUND, |rng| {
        if rng.one_in(4) {
            mangled(rng);
        } else {
            well_formed(rng);
        }
    });
    endless_line();
    long_line_in_one_read();
}

/// Bytes that message texts may carry (never a newline).
const TEXT_ODDITIES: &[&[u8]] = &[b"\xff", b"\0", b";", b",", b"\xc3", b"\r", "é".as_bytes()];

/// What one generated line is and what the decoder must make of it.
enum Piece {
    /// A record header line; `line` is its bytes, `rec` what it parses to.
    Record { line: Vec<u8>, rec: KmsgRecord },
    /// A continuation line (` KEY=value`) with the text it carries.
    Continuation { line: Vec<u8>, text: String },
    /// A line that is no record; `text` is what the notice says.
    Malformed { line: Vec<u8>, text: String },
    /// Longer than the cap.
    TooLong(Vec<u8>),
    /// Empty (or a lone CR): skipped.
    Empty(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Record { line, .. }
            | Piece::Continuation { line, .. }
            | Piece::Malformed { line, .. }
            | Piece::TooLong(line)
            | Piece::Empty(line) => line,
        }
    }
}

/// The kernel's escaping of non-UTF-8 bytes, written independently of the agent's.
fn escaped(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
}

/// Message bytes: a seed log line, sometimes with odd bytes (never a newline).
fn message(rng: &mut Rng) -> Vec<u8> {
    let mut m = seed_window(rng, 1)
        .first()
        .map(|l| message_of(l).to_vec())
        .unwrap_or_default();
    if rng.one_in(3) {
        let at = rng.below(m.len() + 1);
        let odd = rng.pick(TEXT_ODDITIES);
        m.splice(at..at, odd.iter().copied());
    }
    m.retain(|&b| b != b'\n');
    // A CR at the very end is the line ending's, not the text's.
    while m.last() == Some(&b'\r') {
        m.pop();
    }
    m
}

fn record(rng: &mut Rng, seq: u64) -> Piece {
    let prefix: u32 = match rng.below(4) {
        0 => rng.number() as u32,
        _ => rng.below(192) as u32,
    };
    let ts_us = rng.number();
    let text = message(rng);
    let (header, flags, caller) = match rng.below(5) {
        0 => (
            format!("{prefix},{seq},{ts_us}"),
            "-".to_string(),
            String::new(),
        ),
        1 => {
            let c = format!("T{}", rng.below(5000));
            (
                format!("{prefix},{seq},{ts_us},-,caller={c}"),
                "-".to_string(),
                c,
            )
        }
        2 => {
            let c = format!("C{}", rng.below(8));
            (
                format!("{prefix},{seq},{ts_us},c,x=1,caller={c},y"),
                "c".to_string(),
                c,
            )
        }
        _ => {
            let flags = rng.pick(&["-", "c", "+", ""]).to_string();
            (
                format!("{prefix},{seq},{ts_us},{flags}"),
                flags,
                String::new(),
            )
        }
    };
    let mut line = header.into_bytes();
    line.push(b';');
    line.extend_from_slice(&text);
    Piece::Record {
        line,
        rec: KmsgRecord {
            seq,
            level: prefix & 7,
            facility: prefix >> 3,
            ts_us,
            caller,
            text: escaped(&text),
            continuation: Vec::new(),
            flags,
        },
    }
}

fn malformed(rng: &mut Rng) -> Piece {
    let line: Vec<u8> = match rng.below(4) {
        // No semicolon at all.
        0 => {
            let mut m = message(rng);
            m.retain(|&b| b != b';');
            m.insert(0, b'x');
            while m.last() == Some(&b'\r') {
                m.pop();
            }
            m
        }
        1 => format!("6,x{},1,-;bad seq", rng.below(9)).into_bytes(),
        2 => b"6,1;too few fields".to_vec(),
        _ => {
            let mut m = b"\xff,1,2,-;".to_vec();
            m.extend(message(rng));
            m
        }
    };
    let text = escaped(&line);
    Piece::Malformed { line, text }
}

/// A stream of well-formed pieces: the decoder's output must be exactly the model's.
fn well_formed(rng: &mut Rng) {
    let from_seq = match rng.below(4) {
        0 => rng.number(),
        _ => rng.below(20) as u64,
    };
    let mut seq = from_seq.saturating_sub(rng.below(4) as u64);
    let mut pieces = Vec::new();
    for _ in 0..rng.range(1, 24) {
        let piece = match rng.below(20) {
            0..=11 => {
                seq = match rng.below(10) {
                    0 => seq.saturating_add(rng.number() % 1000),
                    1 => seq.saturating_sub(rng.below(5) as u64),
                    2 if rng.one_in(20) => u64::MAX - rng.below(2) as u64,
                    _ => seq.saturating_add(1),
                };
                record(rng, seq)
            }
            12..=15 => {
                let mut text = format!("{}=", rng.pick(&["SUBSYSTEM", "DEVICE", "K"])).into_bytes();
                text.extend(message(rng));
                let mut line = vec![b' '];
                line.extend_from_slice(&text);
                Piece::Continuation {
                    line,
                    text: escaped(&text),
                }
            }
            16 | 17 => malformed(rng),
            18 => Piece::Empty(rng.pick(&[&b""[..], b"\r"]).to_vec()),
            // Lines around the cap are costly: about one case in forty has one.
            _ if !rng.one_in(25) => malformed(rng),
            _ => {
                let len = match rng.below(3) {
                    0 => MAX_LINE + 1,
                    1 => rng.range(MAX_LINE + 1, 3 * MAX_LINE),
                    _ => MAX_LINE,
                };
                if len > MAX_LINE {
                    let mut line = format!("6,{seq},1,-;").into_bytes();
                    line.resize(len, b'a');
                    Piece::TooLong(line)
                } else {
                    seq = seq.saturating_add(1);
                    let mut line = format!("6,{seq},1,-;").into_bytes();
                    let head = line.len();
                    line.resize(len, b'a');
                    Piece::Record {
                        rec: KmsgRecord {
                            seq,
                            level: 6,
                            facility: 0,
                            ts_us: 1,
                            caller: String::new(),
                            text: "a".repeat(len - head),
                            continuation: Vec::new(),
                            flags: "-".to_string(),
                        },
                        line,
                    }
                }
            }
        };
        // Well-formed record lines parse to exactly what was written.
        if let Piece::Record { line, rec } = &piece {
            let parsed = parse_line(line);
            assert!(
                parsed == Line::Record(rec.clone()),
                "{} parsed to {}, not {}",
                support::short(&String::from_utf8_lossy(line)),
                support::short(&parsed),
                support::short(rec)
            );
        }
        pieces.push(piece);
    }
    let (stream, boundaries) = encode(rng, &pieces);
    let want = model(from_seq, &pieces);
    let got = decode(rng, from_seq, &stream, &boundaries);
    support::assert_same(&got, &want, "decoder output against the model");
    contiguous(from_seq, &got);
}

/// The bytes of the pieces, each line ending in LF or CRLF, and the offsets where a
/// reader may flush (before a line that is not a continuation).
fn encode(rng: &mut Rng, pieces: &[Piece]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut boundaries = Vec::new();
    for p in pieces {
        if !matches!(p, Piece::Continuation { .. } | Piece::Empty(_)) {
            boundaries.push(stream.len());
        }
        stream.extend_from_slice(p.bytes());
        // A CR ending is stripped once, and counts towards the cap.
        let crlf_ok = p.bytes().len() < MAX_LINE && p.bytes().last() != Some(&b'\r');
        if crlf_ok && rng.one_in(5) {
            stream.push(b'\r');
        }
        stream.push(b'\n');
    }
    boundaries.push(stream.len());
    (stream, boundaries)
}

/// What the decoder must deliver for `pieces`, resuming at `from_seq`.
fn model(from_seq: u64, pieces: &[Piece]) -> Vec<Item> {
    let mut next = from_seq;
    let mut out = Vec::new();
    // The record that continuation lines attach to, if any.
    let mut open: Option<KmsgRecord> = None;
    let close = |open: &mut Option<KmsgRecord>, out: &mut Vec<Item>| {
        out.extend(open.take().map(Item::Record));
    };
    for p in pieces {
        match p {
            Piece::Record { rec, .. } => {
                close(&mut open, &mut out);
                if rec.seq < next {
                    continue;
                }
                if rec.seq == u64::MAX {
                    out.push(Item::Malformed(format!(
                        "record seq {} is out of range",
                        rec.seq
                    )));
                    continue;
                }
                if rec.seq > next {
                    out.push(Item::Gap(Gap {
                        from: next,
                        to: rec.seq - 1,
                    }));
                }
                next = rec.seq + 1;
                open = Some(rec.clone());
            }
            Piece::Continuation { text, .. } => {
                if let Some(rec) = &mut open {
                    rec.continuation.push(text.clone());
                }
            }
            Piece::Malformed { text, .. } => {
                close(&mut open, &mut out);
                out.push(Item::Malformed(text.clone()));
            }
            Piece::TooLong(line) => {
                close(&mut open, &mut out);
                out.push(Item::Malformed(format!(
                    "line longer than {MAX_LINE} bytes: {}",
                    escaped(&line[..120])
                )));
            }
            Piece::Empty(_) => {}
        }
    }
    close(&mut open, &mut out);
    out
}

/// Feeds `stream` in random chunks, flushing after chunks that end on a boundary.
fn decode(rng: &mut Rng, from_seq: u64, stream: &[u8], boundaries: &[usize]) -> Vec<Item> {
    let mut d = Decoder::new(from_seq);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunk_sizes(rng, stream.len());
    // Some reads end exactly at record boundaries, as /dev/kmsg reads do.
    if rng.one_in(2) {
        sizes.clear();
        for &b in boundaries {
            if b > pos {
                sizes.push(b - pos);
                pos = b;
            }
        }
        pos = 0;
    }
    for n in sizes {
        d.feed(&stream[pos..pos + n], &mut out);
        pos += n;
        if boundaries.binary_search(&pos).is_ok() && rng.one_in(2) {
            d.flush(&mut out);
        }
    }
    d.flush(&mut out);
    out
}

/// Records and gaps cover seqs from the resume point on, in order, without overlap;
/// returns the seq that comes next.
fn contiguous(from_seq: u64, items: &[Item]) -> u64 {
    let mut next = from_seq;
    for item in items {
        let (first, last) = match item {
            Item::Record(r) => (r.seq, r.seq),
            Item::Gap(g) => (g.from, g.to),
            Item::Malformed(_) => continue,
        };
        assert!(
            first == next && last >= first,
            "{} out of sequence (next is {next}) in {}",
            support::short(item),
            support::short(&items)
        );
        next = last + 1;
    }
    next
}

/// A mutated stream: chunking cannot change the output, seqs stay contiguous.
fn mangled(rng: &mut Rng) {
    let mut stream = Vec::new();
    for _ in 0..rng.range(1, 20) {
        let seq = rng.number();
        let piece = if rng.one_in(4) {
            malformed(rng)
        } else {
            record(rng, seq)
        };
        stream.extend_from_slice(piece.bytes());
        stream.push(b'\n');
    }
    for _ in 0..rng.range(1, 8) {
        mutate(rng, &mut stream, TOKENS);
    }
    if rng.one_in(50) {
        let at = rng.below(stream.len() + 1);
        let long = vec![b'q'; rng.range(MAX_LINE - 2, MAX_LINE + 2)];
        stream.splice(at..at, long);
    }
    let from_seq = rng.number();
    let mut whole = Vec::new();
    let mut d = Decoder::new(from_seq);
    d.feed(&stream, &mut whole);
    d.flush(&mut whole);
    let mut chunked = Vec::new();
    let mut d = Decoder::new(from_seq);
    let mut pos = 0;
    for n in chunk_sizes(rng, stream.len()) {
        d.feed(&stream[pos..pos + n], &mut chunked);
        pos += n;
    }
    d.flush(&mut chunked);
    support::assert_same(&chunked, &whole, "chunked decoding against one feed");
    assert_eq!(d.next_seq(), contiguous(from_seq, &whole));
}

/// 64 MiB without a newline, in 16 KiB reads: the decoder keeps the cap, reports one
/// malformed line and goes on.
fn endless_line() {
    support::bounded("kmsg_decoder", "64 MiB line, no newline", 1 << 20, || {
        let chunk = vec![b'a'; 16 << 10];
        let mut d = Decoder::new(0);
        let mut out = Vec::new();
        d.feed(b"6,0,1,-;", &mut out);
        for _ in 0..4096 {
            d.feed(&chunk, &mut out);
        }
        d.feed(b"\n6,1,2,-;after\n", &mut out);
        d.flush(&mut out);
        assert!(matches!(&out[0], Item::Malformed(m) if m.starts_with("line longer than")));
        assert!(matches!(&out[1], Item::Gap(Gap { from: 0, to: 0 })));
        assert!(matches!(&out[2], Item::Record(r) if r.seq == 1 && r.text == "after"));
        assert_eq!(out.len(), 3);
    });
}

/// An over-long line that arrives in one read is cut like one that comes in pieces.
fn long_line_in_one_read() {
    let mut line = b"6,0,1,-;".to_vec();
    line.resize(8 << 20, b'a');
    line.extend_from_slice(b"\n6,1,2,-;after\n");
    let out = support::bounded("kmsg_decoder", "8 MiB line in one read", 1 << 20, || {
        let mut d = Decoder::new(0);
        let mut out = Vec::new();
        d.feed(&line, &mut out);
        d.flush(&mut out);
        out
    });
    assert!(matches!(&out[0], Item::Malformed(m) if m.starts_with("line longer than")));
    assert!(matches!(&out[2], Item::Record(r) if r.seq == 1));
}
