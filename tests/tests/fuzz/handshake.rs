//! The hybrid-vsock handshake reader: it accepts exactly `OK <decimal u32>` (an
//! optional CR) before the first newline, reports everything else as a bad reply or
//! a missing listener, never reads past the newline (what follows belongs to the
//! tunnelled protocol), and stops reading after the reply-line cap on a peer that
//! never sends a newline.

use std::io;

use vexfs_controller::transport::{MAX_REPLY_LINE, TransportError, hybrid_handshake};

use crate::support::{self, Peer, Rng, block_on, mutate};

/// Peak heap of one case (replies are at most a few hundred bytes).
const HEAP_BOUND: usize = 1 << 20;

const TOKENS: &[&[u8]] = &[
    b"OK ",
    b"OK",
    b"ok ",
    b" ",
    b"\n",
    b"\r",
    b"+",
    b"-",
    b"0",
    b"4294967295",
    b"4294967296",
    b"99999999999999999999",
];

#[test]
fn hybrid_handshake_reader() {
    support::run("hybrid_handshake", HEAP_BOUND, |rng| {
        let port = rng.number() as u32;
        let reply = reply(rng);
        let reset_at = rng.one_in(10).then(|| rng.below(reply.len() + 2));
        let endless = rng.one_in(500);
        check(rng, port, reply, reset_at, endless);
    });
    support::bounded(
        "hybrid_handshake",
        "endless reply, no newline",
        64 << 10,
        || {
            let mut rng = Rng::for_case(0, "endless", 0);
            let mut peer = Peer::new(&mut rng, b"").endless(b'A');
            let r = block_on(hybrid_handshake(&mut peer, 5000));
            assert!(matches!(r, Err(TransportError::BadReply(_))), "{r:?}");
            assert_eq!(peer.read, MAX_REPLY_LINE + 1);
        },
    );
}

/// A reply: well formed, mangled, or junk.
fn reply(rng: &mut Rng) -> Vec<u8> {
    let mut r = match rng.below(10) {
        0..=5 => well_formed(rng),
        6 => (0..rng.size(120)).map(|_| rng.byte()).collect(),
        7 => {
            // Around the line cap.
            let n = rng.range(MAX_REPLY_LINE - 3, MAX_REPLY_LINE + 3);
            let mut r = b"OK ".to_vec();
            r.resize(n, b'0');
            r.push(b'7');
            r.push(b'\n');
            r
        }
        8 => Vec::new(),
        _ => {
            let n = rng.number();
            let sep = rng.pick(&[" ", "  ", "\t", "", " +", " -"]);
            let end = rng.pick(&["\n", " \n", "\r\n", "\r\r\n", "\n\r"]);
            format!(
                "{}{sep}{n}{end}",
                rng.pick(&["OK", "ok", "Ok", "OK:", "OKAY"])
            )
            .into_bytes()
        }
    };
    if rng.one_in(2) {
        for _ in 0..rng.range(1, 4) {
            mutate(rng, &mut r, TOKENS);
        }
    }
    r
}

fn well_formed(rng: &mut Rng) -> Vec<u8> {
    let n = rng.number() as u32;
    let zeros = if rng.one_in(10) {
        "0".repeat(rng.range(1, 5))
    } else {
        String::new()
    };
    let cr = if rng.one_in(5) { "\r" } else { "" };
    let mut r = format!("OK {zeros}{n}{cr}\n").into_bytes();
    // The tunnelled protocol's first bytes often arrive in the same read.
    for _ in 0..rng.size(40) {
        r.push(rng.byte());
    }
    r
}

/// What the handshake must return and how many reply bytes it may consume.
#[derive(Debug, PartialEq)]
enum Expect {
    Port(u32),
    NoListener,
    BadReply,
    Reset,
}

/// The protocol, written out: read to the first newline, at most the cap.
fn expect(reply: &[u8], reset_at: Option<usize>, endless: bool) -> (Expect, usize) {
    let mut line = Vec::new();
    let mut i = 0;
    loop {
        if reset_at == Some(i) {
            let e = if line.is_empty() {
                Expect::NoListener
            } else {
                Expect::Reset
            };
            return (e, i);
        }
        let b = match reply.get(i) {
            Some(&b) => b,
            None if endless => b'A',
            None if line.is_empty() => return (Expect::NoListener, i),
            None => return (Expect::BadReply, i),
        };
        i += 1;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_REPLY_LINE {
            return (Expect::BadReply, i);
        }
    }
    let text = line.strip_suffix(b"\r").unwrap_or(&line);
    let port = text.strip_prefix(b"OK ").and_then(|digits| {
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in digits {
            n = n * 10 + u64::from(d - b'0');
            if n > u64::from(u32::MAX) {
                return None;
            }
        }
        u32::try_from(n).ok()
    });
    match port {
        Some(p) => (Expect::Port(p), i),
        None => (Expect::BadReply, i),
    }
}

fn check(rng: &mut Rng, port: u32, reply: Vec<u8>, reset_at: Option<usize>, endless: bool) {
    let (want, consumed) = expect(&reply, reset_at, endless);
    let mut peer = Peer::new(rng, &reply).reset_at(reset_at);
    if endless {
        peer = peer.endless(b'A');
    }
    let got = block_on(hybrid_handshake(&mut peer, port));
    let got_kind = match &got {
        Ok(p) => Expect::Port(*p),
        Err(TransportError::NoListener { port: p }) => {
            assert_eq!(*p, port);
            Expect::NoListener
        }
        Err(TransportError::BadReply(_)) => Expect::BadReply,
        Err(TransportError::Io { source, .. }) => {
            assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
            Expect::Reset
        }
        Err(e) => panic!("unexpected error {e}"),
    };
    let shown = String::from_utf8_lossy(&reply);
    assert_eq!(got_kind, want, "reply {shown:?}: got {got:?}");
    assert_eq!(
        peer.read, consumed,
        "read {} bytes of the reply {shown:?}, the protocol allows {consumed}",
        peer.read
    );
    assert_eq!(peer.written, format!("CONNECT {port}\n").as_bytes());
}
