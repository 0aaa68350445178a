//! The QMP reader: from a stream of JSON lines in random reads it delivers exactly the
//! well-formed events and replies, in order, with their data, ids, errors and
//! timestamps; it skips broken JSON, non-messages, over-long lines and deep nesting,
//! and stops at EOF or a read error. A line that never ends costs at most the line cap.

use serde_json::{Map, Value};
use vexfs_controller::vm::qmp::{MAX_LINE, Message, QmpError, read_messages};

use crate::support::{self, Peer, Rng, block_on, mutate};

/// Peak heap of one case; some carry a line of about `MAX_LINE` (1 MiB).
const HEAP_BOUND: usize = 24 << 20;

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\"event\"",
    b"\"id\"",
    b"\"return\"",
    b"\"error\"",
    b"\"timestamp\"",
    b"null",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"\n",
];

/// Bytes JSON text may not hold raw: invalid UTF-8 (a lone surrogate too) and NUL.
const NOT_UTF8: &[&[u8]] = &[b"\xff", b"\xc3", b"\xed\xa0\x80", b"\0"];

/// What the reader must deliver for one line.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Event {
        name: String,
        data: Value,
        ts: Option<u64>,
    },
    Reply {
        id: u64,
        result: WantResult,
    },
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
enum WantResult {
    Return(Value),
    Command { class: String, desc: String },
    Protocol,
}

#[test]
fn qmp_reader() {
    support::run("qmp_reader", HEAP_BOUND, |rng| {
        let lines: Vec<(Vec<u8>, Want)> = (0..rng.range(1, 8)).map(|_| line(rng)).collect();
        check(rng, &lines);
    });
    endless_line();
    amplification();
}

/// One line (without its terminator) and what it must give.
fn line(rng: &mut Rng) -> (Vec<u8>, Want) {
    if rng.one_in(3000) {
        return long_line(rng);
    }
    let (mut text, want) = match rng.below(12) {
        0..=2 => event(rng),
        3..=5 => reply(rng),
        6 => {
            // Valid JSON that is no message.
            let v = match rng.below(5) {
                0 => Value::Array(vec![random_value(rng, 2)]),
                1 => Value::from(rng.number()),
                2 => obj(vec![("id", Value::from(-1 - rng.below(100) as i64))]),
                3 => obj(vec![
                    ("id", Value::from("7")),
                    ("event", Value::from(rng.number())),
                ]),
                _ => obj(vec![("foo", random_value(rng, 2))]),
            };
            (emit_line(rng, &v), Want::Skip)
        }
        7 => {
            // A proper prefix of a message is never valid JSON.
            let (full, _) = event(rng);
            let close = full.iter().rposition(|&b| b == b'}').unwrap_or(0);
            let cut = rng.below(close + 1);
            (full[..cut].to_vec(), Want::Skip)
        }
        8 => {
            let depth = rng.size(4000).max(1);
            let mut t = b"{\"event\":\"DEEP\",\"data\":".to_vec();
            t.extend(std::iter::repeat_n(b'[', depth));
            t.extend(std::iter::repeat_n(b']', depth));
            t.push(b'}');
            let want = spec(&t);
            if depth > 200 {
                assert_eq!(want, Want::Skip, "serde_json's recursion limit");
            }
            (t, want)
        }
        9 => {
            // A string with bytes that are not UTF-8.
            let mut t = b"{\"event\":\"X".to_vec();
            let bad = *rng.pick(NOT_UTF8);
            t.extend_from_slice(bad);
            t.extend_from_slice(b"\"}");
            (t, Want::Skip)
        }
        10 => {
            let t = rng
                .pick(&[&b""[..], b" ", b"\r", b"\t", b"{}", b"null"])
                .to_vec();
            (t, Want::Skip)
        }
        _ => {
            let (mut t, _) = if rng.one_in(2) {
                event(rng)
            } else {
                reply(rng)
            };
            for _ in 0..rng.range(1, 4) {
                mutate(rng, &mut t, TOKENS);
            }
            t.retain(|&b| b != b'\n');
            let want = spec(&t);
            (t, want)
        }
    };
    text.retain(|&b| b != b'\n');
    (text, want)
}

fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn event(rng: &mut Rng) -> (Vec<u8>, Want) {
    let name: String = match rng.below(4) {
        0 => random_string(rng),
        _ => rng
            .pick(&[
                "GUEST_PANICKED",
                "RESET",
                "SHUTDOWN",
                "STOP",
                "RESUME",
                "POWERDOWN",
            ])
            .to_string(),
    };
    let mut fields = vec![("event", Value::from(name.clone()))];
    let data = rng.one_in(4).then(|| random_value(rng, 3));
    if let Some(d) = &data {
        fields.push(("data", d.clone()));
    }
    let mut ts = None;
    if rng.below(4) > 0 {
        let (s, us) = (rng.number(), rng.number());
        match rng.below(5) {
            0 => fields.push(("timestamp", obj(vec![("seconds", Value::from(s))]))),
            1 => fields.push((
                "timestamp",
                obj(vec![
                    ("seconds", Value::from(-1)),
                    ("microseconds", Value::from(us)),
                ]),
            )),
            _ => {
                fields.push((
                    "timestamp",
                    obj(vec![
                        ("seconds", Value::from(s)),
                        ("microseconds", Value::from(us)),
                    ]),
                ));
                ts = s.checked_mul(1_000_000).and_then(|v| v.checked_add(us));
            }
        }
    }
    if rng.one_in(5) {
        fields.push(("id", Value::from(rng.number())));
    }
    let text = emit_line(rng, &obj(fields));
    let want = Want::Event {
        name,
        data: data.unwrap_or(Value::Null),
        ts,
    };
    (text, want)
}

fn reply(rng: &mut Rng) -> (Vec<u8>, Want) {
    let id = rng.number();
    let mut fields = vec![("id", Value::from(id))];
    let result = match rng.below(5) {
        0..=2 => {
            let v = random_value(rng, 3);
            fields.push(("return", v.clone()));
            if rng.one_in(5) {
                fields.push(("error", obj(vec![])));
            }
            WantResult::Return(v)
        }
        3 => {
            let class = rng.one_in(5).then(|| random_string(rng));
            let desc = rng.one_in(5).then(|| random_string(rng));
            let mut err = Vec::new();
            if let Some(c) = &class {
                err.push(("class", Value::from(c.clone())));
            } else if rng.one_in(2) {
                err.push(("class", Value::from(5)));
            }
            if let Some(d) = &desc {
                err.push(("desc", Value::from(d.clone())));
            }
            fields.push(("error", obj(err)));
            WantResult::Command {
                class: class.unwrap_or_else(|| "?".into()),
                desc: desc.unwrap_or_else(|| "?".into()),
            }
        }
        _ => WantResult::Protocol,
    };
    (emit_line(rng, &obj(fields)), Want::Reply { id, result })
}

/// A line near the cap: delivered up to `MAX_LINE` bytes, skipped beyond.
fn long_line(rng: &mut Rng) -> (Vec<u8>, Want) {
    let len = match rng.below(2) {
        0 => rng.range(MAX_LINE - 2, MAX_LINE + 2),
        _ => rng.range(MAX_LINE - 20_000, MAX_LINE + 20_000),
    };
    let mut t = b"{\"event\":\"BIG\",\"data\":\"".to_vec();
    let fill = len - t.len() - 2;
    t.resize(t.len() + fill, b'x');
    t.extend_from_slice(b"\"}");
    let want = if t.len() <= MAX_LINE {
        Want::Event {
            name: "BIG".into(),
            data: Value::from("x".repeat(fill)),
            ts: None,
        }
    } else {
        Want::Skip
    };
    (t, want)
}

fn random_string(rng: &mut Rng) -> String {
    let alphabet = [
        'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\u{1}', 'é', '🦀', '\u{2028}', '\u{fffd}',
    ];
    (0..rng.size(12)).map(|_| *rng.pick(&alphabet)).collect()
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => match rng.below(3) {
            0 => Value::from(-(rng.below(1 << 40) as i64) - 1),
            1 => Value::from((rng.below(40_001) as f64 - 20_000.0) / 4.0),
            _ => Value::from(rng.number()),
        },
        3 | 4 => Value::from(random_string(rng)),
        5 => Value::Array(
            (0..rng.size(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.size(4) {
                m.insert(random_string(rng), random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// JSON text of `v` on one line, with random spacing, key order and string escapes.
fn emit_line(rng: &mut Rng, v: &Value) -> Vec<u8> {
    let mut out = String::new();
    ws(rng, &mut out);
    emit(rng, v, &mut out);
    ws(rng, &mut out);
    out.into_bytes()
}

fn ws(rng: &mut Rng, out: &mut String) {
    if rng.one_in(4) {
        for _ in 0..rng.range(1, 3) {
            out.push(*rng.pick(&[' ', '\t', '\r']));
        }
    }
}

fn emit(rng: &mut Rng, v: &Value, out: &mut String) {
    match v {
        Value::Null | Value::Bool(_) => out.push_str(&v.to_string()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&format!("{f:?}")),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => emit_str(rng, s, out),
        Value::Array(items) => emit_list(rng, out, ('[', ']'), items, |rng, item, out| {
            emit(rng, item, out);
        }),
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            for i in (1..entries.len()).rev() {
                let j = rng.below(i + 1);
                entries.swap(i, j);
            }
            emit_list(rng, out, ('{', '}'), &entries, |rng, (k, item), out| {
                emit_str(rng, k, out);
                ws(rng, out);
                out.push(':');
                ws(rng, out);
                emit(rng, item, out);
            });
        }
    }
}

/// `items` between `brackets`, comma-separated, with random spacing.
fn emit_list<T>(
    rng: &mut Rng,
    out: &mut String,
    brackets: (char, char),
    items: &[T],
    mut each: impl FnMut(&mut Rng, &T, &mut String),
) {
    out.push(brackets.0);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ws(rng, out);
        each(rng, item, out);
        ws(rng, out);
    }
    out.push(brackets.1);
}

fn emit_str(rng: &mut Rng, s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || rng.one_in(8) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The QMP rules for one line, for lines whose meaning is not known by construction.
fn spec(line: &[u8]) -> Want {
    if line.len() > MAX_LINE {
        return Want::Skip;
    }
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return Want::Skip;
    };
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let ts = v.get("timestamp").and_then(|t| {
            let s = t.get("seconds")?.as_u64()?;
            let us = t.get("microseconds")?.as_u64()?;
            s.checked_mul(1_000_000)?.checked_add(us)
        });
        return Want::Event {
            name: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            ts,
        };
    }
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        return Want::Skip;
    };
    let result = if let Some(r) = v.get("return") {
        WantResult::Return(r.clone())
    } else if let Some(e) = v.get("error") {
        let field = |k| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        WantResult::Command {
            class: field("class"),
            desc: field("desc"),
        }
    } else {
        WantResult::Protocol
    };
    Want::Reply { id, result }
}

/// What a delivered message is, in the terms of [`Want`].
fn seen(m: &Message) -> Want {
    match m {
        Message::Event(e) => Want::Event {
            name: e.name.clone(),
            data: e.data.clone(),
            ts: e.timestamp_us,
        },
        Message::Reply { id, result } => Want::Reply {
            id: *id,
            result: match result {
                Ok(v) => WantResult::Return(v.clone()),
                Err(QmpError::Command {
                    command,
                    class,
                    desc,
                }) => {
                    assert!(command.is_empty(), "the reader cannot know the command");
                    WantResult::Command {
                        class: class.clone(),
                        desc: desc.clone(),
                    }
                }
                Err(QmpError::Protocol(_)) => WantResult::Protocol,
                Err(e) => panic!("unexpected reply error {e}"),
            },
        },
    }
}

fn check(rng: &mut Rng, lines: &[(Vec<u8>, Want)]) {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    // Where each line's terminator ends: a line is delivered once its newline is read.
    let mut ends = Vec::new();
    for (i, (text, w)) in lines.iter().enumerate() {
        stream.extend_from_slice(text);
        if i + 1 == lines.len() && rng.one_in(5) {
            break; // cut off by EOF: never delivered
        }
        // A CR counts towards the line cap.
        let crlf = text.len() < MAX_LINE && rng.one_in(4);
        stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        ends.push((stream.len(), w.clone()));
    }
    let fail_at = rng.one_in(8).then(|| rng.below(stream.len() + 1));
    for (end, w) in ends {
        if fail_at.is_some_and(|f| end > f) {
            break;
        }
        if w != Want::Skip {
            want.push(w);
        }
    }
    let mut got = Vec::new();
    let peer = Peer::new(rng, &stream).reset_at(fail_at);
    block_on(read_messages(peer, |m| got.push(seen(&m))));
    support::assert_same(&got, &want, "QMP messages");
}

/// 64 MiB without a newline, then a good event: only the event comes out, and the
/// reader holds no more than the cap.
fn endless_line() {
    support::bounded("qmp_reader", "64 MiB line, no newline", 4 << 20, || {
        let tail = b"\n{\"event\": \"RESET\", \"data\": {\"guest\": true}}\n";
        let mut rng = Rng::for_case(0, "qmp endless", 0);
        let peer = Peer::new(&mut rng, tail).prefix(64 << 20, b'x');
        let mut got = Vec::new();
        block_on(read_messages(peer, |m| got.push(seen(&m))));
        assert_eq!(
            got,
            vec![Want::Event {
                name: "RESET".into(),
                data: serde_json::json!({"guest": true}),
                ts: None,
            }]
        );
    });
}

/// The costliest line within the cap: `[0,0,...]` of 1 MiB becomes about half a
/// million JSON values. Bounded, and the bound is stated here.
fn amplification() {
    let mut line = b"{\"event\":\"E\",\"data\":[0".to_vec();
    while line.len() < MAX_LINE - 4 {
        line.extend_from_slice(b",0");
    }
    line.extend_from_slice(b"]}\n");
    let elements = (line.len() - 22) / 2;
    support::bounded("qmp_reader", "1 MiB line of [0,0,...]", 40 << 20, || {
        let mut rng = Rng::for_case(0, "qmp amplification", 0);
        let peer = Peer::new(&mut rng, &line);
        let mut got = 0;
        block_on(read_messages(peer, |m| {
            let Message::Event(e) = m else {
                panic!("not an event")
            };
            assert_eq!(e.data.as_array().map(Vec::len), Some(elements));
            got += 1;
        }));
        assert_eq!(got, 1);
    });
}
