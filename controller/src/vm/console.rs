//! Serial console (and QEMU's own stderr) capture: a tokio task per pipe reads lines,
//! writes each with host timestamps to a log file and broadcasts it to subscribers.
//! A bounded history lets late subscribers look back.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// What the kernel prints when it panics: the one console line both the boot wait and
/// the supervisor look for.
pub const PANIC_LINE: &str = "Kernel panic - not syncing";

/// Longest line kept whole; longer ones are split (a guest can print without '\n').
pub const MAX_LINE: usize = 16 * 1024;
/// Lines kept in memory for late subscribers.
const HISTORY_LINES: usize = 20_000;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The guest's serial console (ttyS0).
    Serial,
    /// QEMU's own stderr (e.g. `KVM internal error`).
    QemuStderr,
}

/// One captured line.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    /// Where it came from.
    pub source: Source,
    /// Host wall clock when the line was complete.
    pub at: SystemTime,
    /// Time since the VM was started.
    pub since_start: Duration,
    /// The text, without the line ending; invalid UTF-8 replaced.
    pub text: String,
}

struct Inner {
    start: Instant,
    tx: broadcast::Sender<ConsoleLine>,
    history: Mutex<VecDeque<ConsoleLine>>,
    /// Reader tasks still running (a pipe not yet at EOF).
    readers: tokio::sync::watch::Sender<usize>,
}

/// The console hub of one VM.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A hub whose `since_start` times count from `start`.
    pub fn new(start: Instant) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                start,
                tx,
                history: Mutex::new(VecDeque::new()),
                readers: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    /// Receives every line captured from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ConsoleLine> {
        self.inner.tx.subscribe()
    }

    /// The lines captured so far (bounded).
    pub fn history(&self) -> Vec<ConsoleLine> {
        self.inner
            .history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until a line (already captured or new) satisfies `pred`.
    pub async fn wait_for<F>(&self, timeout: Duration, pred: F) -> Option<ConsoleLine>
    where
        F: Fn(&ConsoleLine) -> bool,
    {
        // Subscribe before looking at history so no line falls between the two.
        let mut rx = self.subscribe();
        if let Some(line) = self.history().into_iter().find(|l| pred(l)) {
            return Some(line);
        }
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(line) if pred(&line) => return Some(line),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    fn publish(&self, line: ConsoleLine, log: &mut Option<File>) {
        if let Some(file) = log.as_mut() {
            let epoch = line.at.duration_since(UNIX_EPOCH).unwrap_or_default();
            let res = writeln!(
                file,
                "[{}.{:06}] [{:>10.6}] {}",
                epoch.as_secs(),
                epoch.subsec_micros(),
                line.since_start.as_secs_f64(),
                line.text
            );
            if let Err(e) = res {
                tracing::warn!(error = %e, "console log write failed; logging stops");
                *log = None;
            }
        }
        if let Ok(mut h) = self.inner.history.lock() {
            if h.len() >= HISTORY_LINES {
                h.pop_front();
            }
            h.push_back(line.clone());
        }
        // No subscriber is fine.
        let _ = self.inner.tx.send(line);
    }

    /// Spawns the task that reads `reader` to EOF, logging lines to `log_path`.
    pub fn attach<R>(
        &self,
        source: Source,
        mut reader: R,
        log_path: &Path,
    ) -> io::Result<JoinHandle<()>>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let mut log = Some(File::create(log_path)?);
        let hub = self.clone();
        self.inner.readers.send_modify(|n| *n += 1);
        Ok(tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut pending: Vec<u8> = Vec::new();
            let emit = |bytes: &[u8], log: &mut Option<File>| {
                let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                let text = String::from_utf8_lossy(bytes).replace('\r', "");
                hub.publish(
                    ConsoleLine {
                        source,
                        at: SystemTime::now(),
                        since_start: hub.inner.start.elapsed(),
                        text,
                    },
                    log,
                );
            };
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "console read ended");
                        break;
                    }
                };
                pending.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(pos) = memchr::memchr(b'\n', &pending[start..]) {
                    let line = &pending[start..start + pos];
                    if line.is_empty() {
                        emit(line, &mut log);
                    }
                    for piece in line.chunks(MAX_LINE) {
                        emit(piece, &mut log);
                    }
                    start += pos + 1;
                }
                pending.drain(..start);
                while pending.len() >= MAX_LINE {
                    let rest = pending.split_off(MAX_LINE);
                    emit(&pending, &mut log);
                    pending = rest;
                }
            }
            if !pending.is_empty() {
                emit(&pending, &mut log);
            }
            if let Some(f) = log.as_mut() {
                let _ = f.flush();
            }
            hub.inner.readers.send_modify(|n| *n = n.saturating_sub(1));
        }))
    }

    /// Waits (up to `timeout`) until every attached pipe reached EOF, i.e. all output
    /// of an exited process has been captured. True when drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.readers.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_are_logged_broadcast_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let console = Console::new(Instant::now());
        let mut rx = console.subscribe();
        let (mut w, r) = tokio::io::duplex(1024);
        let task = console.attach(Source::Serial, r, &log).unwrap();
        w.write_all(b"hello\r\nwor").await.unwrap();
        w.write_all(b"ld\n").await.unwrap();
        w.write_all(&vec![b'x'; MAX_LINE + 10]).await.unwrap();
        w.write_all(b"\n\xfftail").await.unwrap();
        drop(w);
        task.await.unwrap();
        assert!(console.drained(Duration::from_millis(100)).await);
        let texts: Vec<String> = console.history().into_iter().map(|l| l.text).collect();
        assert_eq!(texts[0], "hello");
        assert_eq!(texts[1], "world");
        assert_eq!(texts[2].len(), MAX_LINE);
        assert_eq!(texts[3].len(), 10);
        assert_eq!(texts[4], "\u{fffd}tail");
        assert_eq!(rx.recv().await.unwrap().text, "hello");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(logged.lines().count(), 5);
        assert!(logged.lines().next().unwrap().ends_with("] hello"));
        let found = console
            .wait_for(Duration::from_millis(10), |l| l.text == "world")
            .await;
        assert!(found.is_some());
        let missing = console
            .wait_for(Duration::from_millis(10), |l| l.text == "nope")
            .await;
        assert!(missing.is_none());
    }
}
