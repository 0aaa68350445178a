//! Agent addresses and the byte streams behind them: `vsock:CID:PORT` (kernel
//! AF_VSOCK), `hvsock:PATH:PORT` (hybrid vsock: a vhost-user backend's unix socket
//! plus the `CONNECT PORT` handshake) and `unix:PATH` (the agent's dev mode). Builds the
//! tonic [`Channel`] over any of them.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Longest hybrid-vsock reply line accepted (`OK 4294967295\n` is 14 bytes); the
/// handshake reads no further than this on a peer that never sends a newline.
pub const MAX_REPLY_LINE: usize = 64;
/// How long the backend may take to answer `CONNECT` (it answers at once when the
/// guest is alive; a stuck backend must not hang the caller).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// Kernel AF_VSOCK: context id and port (needs host kernel vhost-vsock).
    Vsock {
        /// Guest context id.
        cid: u32,
        /// vsock port.
        port: u32,
    },
    /// Hybrid vsock through a vhost-user backend's unix socket.
    Hvsock {
        /// The backend's host-side unix socket (`uds-path`).
        path: PathBuf,
        /// Guest vsock port.
        port: u32,
    },
    /// Plain unix socket (agent dev mode).
    Unix(PathBuf),
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address text does not parse.
    #[error("invalid address {text:?}: {reason}")]
    InvalidAddress {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Socket-level failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The hybrid-vsock backend closed the socket without `OK`: nothing listens yet.
    #[error("no listener on hybrid vsock port {port} (backend closed without OK)")]
    NoListener {
        /// The guest port.
        port: u32,
    },
    /// The hybrid-vsock backend replied something other than `OK <n>`.
    #[error("bad hybrid vsock reply {0:?}")]
    BadReply(String),
    /// The deadline passed before a connection was made.
    #[error("no connection to {addr} within {waited:?}: {last}")]
    Deadline {
        /// The address.
        addr: String,
        /// How long we tried.
        waited: Duration,
        /// The last error seen.
        last: Box<TransportError>,
    },
    /// tonic could not set up the channel.
    #[error("grpc channel: {0}")]
    Channel(#[from] tonic::transport::Error),
}

impl TransportError {
    /// True for errors that go away once the guest (or agent) is up: keep retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::NoListener { .. } => true,
            TransportError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Address::Hvsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason| TransportError::InvalidAddress {
            text: text.to_string(),
            reason,
        };
        let parse_u32 = |s: &str, reason| s.parse::<u32>().map_err(|_| bad(reason));
        let (scheme, rest) = text
            .split_once(':')
            .ok_or_else(|| bad("expected vsock:CID:PORT, hvsock:PATH:PORT or unix:PATH"))?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| bad("expected vsock:CID:PORT"))?;
                Ok(Address::Vsock {
                    cid: parse_u32(cid, "CID is not a number")?,
                    port: parse_u32(port, "port is not a number")?,
                })
            }
            "hvsock" => {
                // The path may itself contain ':'; the port is after the last one.
                let (path, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("expected hvsock:PATH:PORT"))?;
                if path.is_empty() {
                    return Err(bad("empty path"));
                }
                Ok(Address::Hvsock {
                    path: PathBuf::from(path),
                    port: parse_u32(port, "port is not a number")?,
                })
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(bad("empty path"));
                }
                Ok(Address::Unix(PathBuf::from(rest)))
            }
            _ => Err(bad("unknown scheme (vsock, hvsock, unix)")),
        }
    }
}

/// A connected byte stream of any transport.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentStream for T {}

/// A boxed connected stream.
pub type BoxedStream = Box<dyn AgentStream>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

/// Performs the hybrid-vsock handshake on a freshly connected stream: writes
/// `CONNECT PORT\n` and reads `OK <n>\n` one byte at a time, so bytes the guest sends
/// right after (an HTTP/2 SETTINGS frame) stay unread in the stream. Returns `<n>`,
/// the host-side port the backend assigned.
pub async fn hybrid_handshake<S>(stream: &mut S, port: u32) -> Result<u32, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_err("hvsock CONNECT write"))?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            // A reset before any reply means the same as a close: nobody listens.
            Err(e) if line.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(io_err("hvsock reply read")(e)),
        };
        if n == 0 {
            return if line.is_empty() {
                Err(TransportError::NoListener { port })
            } else {
                Err(TransportError::BadReply(
                    String::from_utf8_lossy(&line).into_owned(),
                ))
            };
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY_LINE {
            return Err(TransportError::BadReply(
                String::from_utf8_lossy(&line).into_owned(),
            ));
        }
    }
    // Exactly `OK <decimal port>` as the backend writes it; a CR before the newline
    // is tolerated, signs and spaces are not.
    let text = line.strip_suffix(b"\r").unwrap_or(&line);
    text.strip_prefix(b"OK ")
        .filter(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u32>().ok())
        .ok_or_else(|| TransportError::BadReply(String::from_utf8_lossy(text).into_owned()))
}

async fn connect_unix(path: &Path) -> Result<UnixStream, TransportError> {
    UnixStream::connect(path)
        .await
        .map_err(io_err(format!("connect {}", path.display())))
}

/// Opens one connection to `addr` (no retry).
pub async fn connect(addr: &Address) -> Result<BoxedStream, TransportError> {
    match addr {
        Address::Unix(path) => Ok(Box::new(connect_unix(path).await?)),
        Address::Hvsock { path, port } => {
            let mut stream = connect_unix(path).await?;
            let assigned =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, hybrid_handshake(&mut stream, *port))
                    .await
                    .map_err(|_| TransportError::Io {
                        what: format!(
                            "hvsock CONNECT {port}: no reply within {HANDSHAKE_TIMEOUT:?}"
                        ),
                        source: io::ErrorKind::TimedOut.into(),
                    })??;
            tracing::debug!(%addr, assigned, "hybrid vsock connected");
            Ok(Box::new(stream))
        }
        Address::Vsock { cid, port } => {
            let stream =
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(io_err(format!("connect vsock {cid}:{port}")))?;
            Ok(Box::new(stream))
        }
    }
}

/// Connects to `addr`, retrying retryable failures with backoff (50 ms, then every
/// 100 ms: an attempt is a local unix connect, and a booting guest should be seen
/// the moment its agent listens) until `timeout` has passed.
pub async fn connect_with_retry(
    addr: &Address,
    timeout: Duration,
) -> Result<BoxedStream, TransportError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.is_retryable() && start.elapsed() + delay < timeout => {
                tracing::trace!(%addr, error = %e, "connect retry");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) if e.is_retryable() => {
                return Err(TransportError::Deadline {
                    addr: addr.to_string(),
                    waited: start.elapsed(),
                    last: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Builds a tonic channel to `addr`. The first connection is made now (one attempt);
/// after a disconnect tonic reconnects through the same connector on the next call.
pub async fn channel(addr: &Address) -> Result<Channel, TransportError> {
    let addr = addr.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        async move { connect(&addr).await.map(TokioIo::new) }
    });
    // The URI is a placeholder: the connector ignores it.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_addresses() {
        let cases = [
            ("vsock:3:5000", Address::Vsock { cid: 3, port: 5000 }),
            (
                "hvsock:/tmp/run dir/vm.vsock:5000",
                Address::Hvsock {
                    path: "/tmp/run dir/vm.vsock".into(),
                    port: 5000,
                },
            ),
            (
                "hvsock:/a:b/vm.vsock:7",
                Address::Hvsock {
                    path: "/a:b/vm.vsock".into(),
                    port: 7,
                },
            ),
            (
                "unix:/tmp/agent.sock",
                Address::Unix("/tmp/agent.sock".into()),
            ),
        ];
        for (text, want) in cases {
            let got: Address = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_addresses() {
        for text in [
            "",
            "vsock",
            "vsock:3",
            "vsock:x:1",
            "vsock:3:99999999999",
            "hvsock:/p",
            "hvsock::5",
            "hvsock:/p:x",
            "unix:",
            "tcp:1.2.3.4:5",
            "/tmp/sock",
        ] {
            assert!(
                text.parse::<Address>().is_err(),
                "{text:?} should not parse"
            );
        }
    }

    #[tokio::test]
    async fn handshake_leaves_trailing_bytes_in_stream() {
        let (mut client, mut server) = tokio::io::duplex(256);
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 13];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 5000\n");
            // OK and the first HTTP/2 bytes arrive in one write, as tonic servers do.
            server
                .write_all(b"OK 1073741824\n\x00\x00\x12\x04SETTINGS")
                .await
                .unwrap();
            server
        });
        let assigned = hybrid_handshake(&mut client, 5000).await.unwrap();
        assert_eq!(assigned, 1_073_741_824);
        let mut rest = [0u8; 12];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x00\x00\x12\x04SETTINGS");
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn handshake_close_without_ok_means_no_listener() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut buf = [0u8; 12];
            server.read_exact(&mut buf).await.unwrap();
            drop(server);
        });
        let err = hybrid_handshake(&mut client, 500).await.unwrap_err();
        assert!(
            matches!(err, TransportError::NoListener { port: 500 }),
            "{err}"
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn handshake_rejects_garbage_and_long_lines() {
        for reply in [
            &b"NO 5\n"[..],
            b"OK x\n",
            b"OK 5",
            b"OK +5\n",
            b"OK 5 \n",
            b"OK 4294967296\n",
            &[b'A'; 200][..],
        ] {
            let (mut client, mut server) = tokio::io::duplex(512);
            let reply = reply.to_vec();
            tokio::spawn(async move {
                let mut buf = [0u8; 10];
                server.read_exact(&mut buf).await.unwrap();
                server.write_all(&reply).await.unwrap();
            });
            let err = hybrid_handshake(&mut client, 1).await.unwrap_err();
            assert!(matches!(err, TransportError::BadReply(_)), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[tokio::test]
    async fn retry_gives_up_at_deadline_on_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Hvsock {
            path: dir.path().join("absent.sock"),
            port: 5000,
        };
        let start = Instant::now();
        let err = connect_with_retry(&addr, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, TransportError::Deadline { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn hvsock_connect_over_unix_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            // First connection: nobody listens in the guest yet.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            drop(s);
            // Second: accepted.
            let (mut s, _) = listener.accept().await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"OK 99\nhello").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let addr = Address::Hvsock { path, port: 5000 };
        let mut stream = connect_with_retry(&addr, Duration::from_secs(5))
            .await
            .unwrap();
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
    }
}
