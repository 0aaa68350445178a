//! `vexfs-agent probe-vsock CID PORT`: an in-guest diagnostic for the VM tests. It
//! connects over AF_VSOCK, sends the HTTP/2 client preface and an empty SETTINGS frame,
//! and tells whether the server answered with its own SETTINGS ("accepted") or closed
//! the connection ("refused"). It speaks only those first bytes: no gRPC client, so the
//! static agent stays small.

use std::io::{self, Read, Write};
use std::time::Duration;

/// The HTTP/2 client connection preface (RFC 9113, 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
pub const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
/// How long the probe waits for the server's first frame.
pub const TIMEOUT: Duration = Duration::from_secs(5);

const FRAME_SETTINGS: u8 = 4;
const FLAG_ACK: u8 = 1;

/// What the server did with the probe's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It sent an HTTP/2 SETTINGS frame: it serves this peer.
    Accepted,
    /// It closed or reset the connection before sending a frame.
    Refused,
    /// Nothing came back in time.
    Silent,
    /// It sent bytes that do not start an HTTP/2 server preface.
    Unexpected(String),
}

impl Verdict {
    /// The probe's exit code: 0 accepted, 1 refused, 3 silent or unexpected (2 is a
    /// usage error, 4 a failed connect).
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Accepted => 0,
            Verdict::Refused => 1,
            Verdict::Silent | Verdict::Unexpected(_) => 3,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Accepted => f.write_str("accepted"),
            Verdict::Refused => f.write_str("refused"),
            Verdict::Silent => f.write_str("silent: no answer in time"),
            Verdict::Unexpected(what) => write!(f, "unexpected: {what}"),
        }
    }
}

fn closed(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::NotConnected
    )
}

/// Speaks the client's first bytes on a connected stream (whose read timeout the caller
/// set) and judges the server's answer.
pub fn judge<S: Read + Write>(stream: &mut S) -> Verdict {
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&EMPTY_SETTINGS);
    if let Err(e) = stream.write_all(&hello) {
        return if closed(&e) {
            Verdict::Refused
        } else {
            Verdict::Unexpected(format!("write: {e}"))
        };
    }
    let mut head = [0u8; 9];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Verdict::Refused,
            Ok(0) => return Verdict::Unexpected(format!("closed after {got} bytes")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if closed(&e) && got == 0 => return Verdict::Refused,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Verdict::Silent;
            }
            Err(e) => return Verdict::Unexpected(format!("read: {e}")),
        }
    }
    let (kind, flags) = (head[3], head[4]);
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    if kind == FRAME_SETTINGS && flags & FLAG_ACK == 0 && stream_id == 0 {
        Verdict::Accepted
    } else {
        Verdict::Unexpected(format!("first bytes {head:02x?} are not a SETTINGS frame"))
    }
}

/// Connects to `cid:port` over AF_VSOCK and judges the answer. Only meant for guests.
pub fn vsock(cid: u32, port: u32, timeout: Duration) -> io::Result<Verdict> {
    let mut stream = ::vsock::VsockStream::connect_with_cid_port(cid, port)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(judge(&mut stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A connected pair; `server` runs on the far end in a thread.
    fn judged(server: impl FnOnce(UnixStream) + Send + 'static) -> Verdict {
        let (mut near, far) = UnixStream::pair().unwrap();
        near.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let t = std::thread::spawn(move || server(far));
        let v = judge(&mut near);
        t.join().unwrap();
        v
    }

    fn read_hello(s: &mut UnixStream) -> Vec<u8> {
        let mut got = vec![0u8; PREFACE.len() + EMPTY_SETTINGS.len()];
        s.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn settings_from_the_server_is_accepted() {
        let v = judged(|mut s| {
            let hello = read_hello(&mut s);
            assert!(hello.starts_with(PREFACE));
            assert_eq!(hello[PREFACE.len()..], EMPTY_SETTINGS);
            // A real server's SETTINGS carries parameters: 6 bytes each.
            s.write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
                .unwrap();
        });
        assert_eq!(v, Verdict::Accepted);
        assert_eq!(v.exit_code(), 0);
    }

    #[test]
    fn a_close_without_a_frame_is_refused() {
        assert_eq!(judged(drop), Verdict::Refused);
        let v = judged(|mut s| {
            read_hello(&mut s);
        });
        assert_eq!(v, Verdict::Refused);
        assert_eq!(v.exit_code(), 1);
        assert_eq!(v.to_string(), "refused");
    }

    #[test]
    fn silence_and_other_protocols_are_neither() {
        let v = judged(|mut s| {
            read_hello(&mut s);
            std::thread::sleep(Duration::from_millis(600));
        });
        assert_eq!(v, Verdict::Silent);
        let v = judged(|mut s| {
            read_hello(&mut s);
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
        });
        assert!(matches!(v, Verdict::Unexpected(_)), "{v:?}");
        assert_eq!(v.exit_code(), 3);
        // A SETTINGS acknowledgement is not a server preface.
        let v = judged(|mut s| {
            read_hello(&mut s);
            s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap();
        });
        assert!(matches!(v, Verdict::Unexpected(_)), "{v:?}");
        let v = judged(|mut s| {
            read_hello(&mut s);
            s.write_all(&[0, 0, 0, 4]).unwrap();
        });
        assert_eq!(v, Verdict::Unexpected("closed after 4 bytes".into()));
    }
}
