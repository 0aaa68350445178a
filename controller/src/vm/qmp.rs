//! A small QMP client: JSON lines over QEMU's unix socket. Capabilities negotiation,
//! commands matched to replies by `id`, and asynchronous events (GUEST_PANICKED,
//! RESET, SHUTDOWN, STOP, ...) broadcast to subscribers. Lines are bounded and bad
//! JSON is logged and skipped, never a panic.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// Longest QMP line accepted; longer ones are skipped.
pub const MAX_LINE: usize = 1024 * 1024;
/// Default timeout of one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Socket failure.
    #[error("qmp {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server broke the protocol (bad greeting, reply without id, ...).
    #[error("qmp protocol: {0}")]
    Protocol(String),
    /// A line was longer than [`MAX_LINE`].
    #[error("qmp line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The command failed.
    #[error("qmp {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class.
        class: String,
        /// QMP error text.
        desc: String,
    },
    /// The connection closed (QEMU exited).
    #[error("qmp connection closed")]
    Closed,
    /// No reply in time.
    #[error("qmp {0}: no reply in time")]
    Timeout(String),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// Event name, e.g. `GUEST_PANICKED`.
    pub name: String,
    /// The event's `data` object (Null when absent).
    pub data: Value,
    /// QEMU's timestamp in microseconds since the epoch, when present.
    pub timestamp_us: Option<u64>,
    /// When the controller received it.
    pub received: Instant,
}

/// The answer of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// Whether the guest CPUs run.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `guest-panicked`, `shutdown`, ...).
    pub status: String,
}

/// Reads `\n`-terminated lines of bounded length.
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    /// Bytes after `start` already searched for a newline.
    searched: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(4096),
            start: 0,
            searched: 0,
        }
    }

    /// The next line; `Ok(None)` at EOF; `Err(LineTooLong)` after skipping one.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, QmpError> {
        let mut skipping = false;
        loop {
            let from = self.start + self.searched;
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[from..]) {
                let end = from + pos;
                // Judged on the whole line, so where reads split it cannot matter.
                let line = (!skipping && end - self.start <= MAX_LINE)
                    .then(|| self.buf[self.start..end].to_vec());
                self.start = end + 1;
                self.searched = 0;
                return line.map(Some).ok_or(QmpError::LineTooLong);
            }
            // Compact, then bound what we keep of an unfinished line.
            self.buf.drain(..self.start);
            self.start = 0;
            self.searched = self.buf.len();
            if self.buf.len() > MAX_LINE {
                skipping = true;
                self.buf.clear();
                self.searched = 0;
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .inner
                .read(&mut chunk)
                .await
                .map_err(|source| QmpError::Io {
                    what: "read",
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A negotiated QMP connection.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    reader: JoinHandle<()>,
    version: String,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path` (waiting up to `timeout` for it to
    /// appear), reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && start.elapsed() < timeout =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => {
                    return Err(QmpError::Io {
                        what: "connect",
                        source,
                    });
                }
            }
        };
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        tokio::time::timeout(left, Self::handshake(stream))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))?
    }

    async fn handshake(stream: UnixStream) -> Result<Self, QmpError> {
        let (read, write) = stream.into_split();
        let mut lines = LineReader::new(read);
        let greeting = lines.next_line().await?.ok_or(QmpError::Closed)?;
        let greeting: Value = serde_json::from_slice(&greeting)
            .map_err(|e| QmpError::Protocol(format!("greeting is not JSON: {e}")))?;
        let qemu = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .and_then(|v| v.get("qemu"))
            .ok_or_else(|| QmpError::Protocol("greeting without QMP.version.qemu".into()))?;
        let version = format!(
            "{}.{}.{}",
            qemu.get("major").and_then(Value::as_u64).unwrap_or(0),
            qemu.get("minor").and_then(Value::as_u64).unwrap_or(0),
            qemu.get("micro").and_then(Value::as_u64).unwrap_or(0)
        );
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (events, _) = broadcast::channel(256);
        let reader = tokio::spawn({
            let (pending, events) = (pending.clone(), events.clone());
            async move {
                read_loop(lines, |m| dispatch(m, &pending, &events)).await;
                // Dropping the senders wakes every waiter with Closed.
                if let Ok(mut p) = pending.lock() {
                    p.clear();
                }
            }
        });
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            reader,
            version,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// QEMU's version from the greeting, `major.minor.micro`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Receives the events that arrive from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Runs one command with the default timeout; returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, DEFAULT_TIMEOUT)
            .await
    }

    /// Runs one command; returns its `return` value.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg).map_err(|e| QmpError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| QmpError::Closed)?
            .insert(id, tx);
        // The deadline covers the write too: a QEMU that stopped reading (SIGSTOP, a
        // wedged main loop) fills the socket buffer and would block it for ever.
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = tokio::time::timeout_at(deadline, async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await
        })
        .await;
        let Ok(sent) = sent else {
            self.forget(id);
            return Err(QmpError::Timeout(command.to_string()));
        };
        if let Err(source) = sent {
            self.forget(id);
            return Err(match source.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => QmpError::Closed,
                _ => QmpError::Io {
                    what: "write",
                    source,
                },
            });
        }
        let result = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout(command.to_string()))
            }
        };
        result.map_err(|e| match e {
            QmpError::Command { class, desc, .. } => QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            },
            other => other,
        })
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<VmStatus, QmpError> {
        self.query_status_timeout(DEFAULT_TIMEOUT).await
    }

    /// `query-status`, answered within `timeout`.
    pub async fn query_status_timeout(&self, timeout: Duration) -> Result<VmStatus, QmpError> {
        let v = self.execute_timeout("query-status", None, timeout).await?;
        Ok(VmStatus {
            running: v.get("running").and_then(Value::as_bool).unwrap_or(false),
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        })
    }

    /// Pauses the guest CPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes the guest CPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Hard reset of the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Asks QEMU to exit; a connection closed before the reply counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Presses `keys` together (QKeyCode names such as `alt`, `sysrq`, `h`).
    pub async fn send_key(&self, keys: &[&str]) -> Result<(), QmpError> {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| json!({ "type": "qcode", "data": k }))
            .collect();
        self.execute("send-key", Some(json!({ "keys": keys })))
            .await
            .map(drop)
    }

    /// Magic SysRq through the keyboard: alt+sysrq+`key` (works while the guest
    /// kernel is alive even when userspace and the agent are not; needs a keyboard
    /// driver, which the i8042 on q35 provides).
    pub async fn sysrq(&self, key: &str) -> Result<(), QmpError> {
        self.send_key(&["alt", "sysrq", key]).await
    }
}

/// One message QEMU sent after the greeting.
#[derive(Debug)]
pub enum Message {
    /// An asynchronous event.
    Event(QmpEvent),
    /// The reply to a command.
    Reply {
        /// The command's `id`.
        id: u64,
        /// Its `return` value, or its `error` (or the lack of both) as an error.
        result: Result<Value, QmpError>,
    },
}

/// Reads messages from `reader` until EOF or a read error and hands each to
/// `deliver`; over-long lines and lines that are no QMP message are logged and
/// skipped. The connection's reader task runs this loop; public for the fuzz tests.
#[doc(hidden)]
pub async fn read_messages<R: AsyncRead + Unpin>(reader: R, deliver: impl FnMut(Message)) {
    read_loop(LineReader::new(reader), deliver).await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut lines: LineReader<R>,
    mut deliver: impl FnMut(Message),
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(QmpError::LineTooLong) => {
                tracing::warn!("qmp: skipped an over-long line");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "qmp read ended");
                break;
            }
        };
        if let Some(message) = decode(&line) {
            deliver(message);
        }
    }
}

/// The message one line holds; `None` (logged) for anything else.
fn decode(line: &[u8]) -> Option<Message> {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, line = %String::from_utf8_lossy(&line[..line.len().min(200)]), "qmp: bad JSON");
            return None;
        }
    };
    if let Some(name) = value.get("event").and_then(Value::as_str) {
        let ts = value.get("timestamp");
        // Checked: the numbers come from the peer.
        let timestamp_us = ts.and_then(|t| {
            let s = t.get("seconds")?.as_u64()?;
            let us = t.get("microseconds")?.as_u64()?;
            s.checked_mul(1_000_000)?.checked_add(us)
        });
        tracing::debug!(event = name, "qmp event");
        return Some(Message::Event(QmpEvent {
            name: name.to_string(),
            data: value.get("data").cloned().unwrap_or(Value::Null),
            timestamp_us,
            received: Instant::now(),
        }));
    }
    let Some(id) = value.get("id").and_then(Value::as_u64) else {
        tracing::warn!(%value, "qmp: message without event or id");
        return None;
    };
    let result = if let Some(ret) = value.get("return") {
        Ok(ret.clone())
    } else if let Some(err) = value.get("error") {
        Err(QmpError::Command {
            command: String::new(),
            class: err
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            desc: err
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        })
    } else {
        Err(QmpError::Protocol(format!(
            "reply without return or error: {value}"
        )))
    };
    Some(Message::Reply { id, result })
}

/// Hands an event to the subscribers, a reply to the command waiting for it.
fn dispatch(message: Message, pending: &Pending, events: &broadcast::Sender<QmpEvent>) {
    match message {
        Message::Event(event) => {
            let _ = events.send(event);
        }
        Message::Reply { id, result } => {
            let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
            match waiter {
                Some(tx) => {
                    let _ = tx.send(result);
                }
                None => tracing::debug!(id, "qmp: reply nobody waits for"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU: greets, answers commands, and interleaves noise and events.
    async fn fake_server(listener: UnixListener) -> Vec<Value> {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(format!("{GREETING}\r\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let id = cmd["id"].clone();
            let name = cmd["execute"].as_str().unwrap().to_string();
            seen.push(cmd.clone());
            let reply = match name.as_str() {
                "qmp_capabilities" => json!({"return": {}, "id": id}),
                "query-status" => {
                    // Garbage, an over-long line and an event before the reply.
                    w.write_all(b"{not json\n").await.unwrap();
                    let mut long = vec![b'x'; MAX_LINE + 100];
                    long.push(b'\n');
                    w.write_all(&long).await.unwrap();
                    w.write_all(br#"{"timestamp": {"seconds": 1, "microseconds": 5}, "event": "GUEST_PANICKED", "data": {"action": "pause"}}"#).await.unwrap();
                    w.write_all(b"\n").await.unwrap();
                    json!({"return": {"status": "guest-panicked", "singlestep": false, "running": false}, "id": id})
                }
                "send-key" | "stop" | "cont" | "system_reset" => json!({"return": {}, "id": id}),
                "bogus" => {
                    json!({"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": id})
                }
                "quit" => {
                    // QEMU may close before answering.
                    break;
                }
                _ => json!({"return": {}, "id": id}),
            };
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn negotiates_commands_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_server(listener));
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.version(), "7.2.22");
        let mut events = qmp.subscribe();
        let status = qmp.query_status().await.unwrap();
        assert_eq!(
            status,
            VmStatus {
                running: false,
                status: "guest-panicked".into()
            }
        );
        let ev = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ev.name, "GUEST_PANICKED");
        assert_eq!(ev.data["action"], "pause");
        assert_eq!(ev.timestamp_us, Some(1_000_005));
        let err = qmp.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { class, command, .. } if class == "CommandNotFound" && command == "bogus"),
            "{err}"
        );
        qmp.sysrq("h").await.unwrap();
        qmp.stop().await.unwrap();
        qmp.cont().await.unwrap();
        qmp.system_reset().await.unwrap();
        qmp.quit().await.unwrap();
        let seen = server.await.unwrap();
        let sk = seen.iter().find(|c| c["execute"] == "send-key").unwrap();
        assert_eq!(
            sk["arguments"]["keys"],
            json!([{"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "sysrq"}, {"type": "qcode", "data": "h"}])
        );
        // After the server closed, commands fail fast with Closed.
        let err = qmp.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Closed), "{err}");
    }

    fn read_all(bytes: &[u8], read_size: usize) -> Vec<Message> {
        // A reader that hands out `read_size` bytes at a time.
        struct Pieces<'a>(&'a [u8], usize);
        impl AsyncRead for Pieces<'_> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<io::Result<()>> {
                let n = self.1.min(self.0.len()).min(buf.remaining());
                buf.put_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut out = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_messages(Pieces(bytes, read_size), |m| out.push(m)));
        out
    }

    #[test]
    fn line_cap_does_not_depend_on_read_sizes() {
        let event = |len: usize| {
            let mut line = br#"{"event":"E","data":""#.to_vec();
            line.resize(len - 2, b'x');
            line.extend_from_slice(b"\"}\n");
            line
        };
        for read_size in [1 << 20, 8192, 1000] {
            assert_eq!(read_all(&event(MAX_LINE), read_size).len(), 1);
            assert_eq!(read_all(&event(MAX_LINE + 1), read_size).len(), 0);
            assert_eq!(read_all(&event(MAX_LINE + 4000), read_size).len(), 0);
        }
    }

    #[test]
    fn timestamp_overflow_is_no_timestamp() {
        let line =
            br#"{"event":"STOP","timestamp":{"seconds":18446744073709551615,"microseconds":1}}"#;
        let Some(Message::Event(e)) = decode(line) else {
            panic!("not an event")
        };
        assert_eq!(e.timestamp_us, None);
        let line = br#"{"event":"STOP","timestamp":{"seconds":2,"microseconds":3}}"#;
        let Some(Message::Event(e)) = decode(line) else {
            panic!("not an event")
        };
        assert_eq!(e.timestamp_us, Some(2_000_003));
    }

    #[tokio::test]
    async fn bad_greeting_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"\x00\xffgarbage\n").await.unwrap();
        });
        let err = Qmp::connect(&path, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn connect_times_out_without_socket() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.sock"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Io { .. }), "{err}");
    }
}
