//! Live run metrics in the Prometheus text format (0.0.4), served on a loopback
//! address only: tests by kernel and status, crashes by category, recoveries by level
//! and outcome, a recovery-time histogram and the guests running. The exposition is
//! written by hand (a few counters; prometheus-client would add a dependency for it)
//! and served by a minimal tokio HTTP/1 responder (GET /metrics, then close).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::Category;
use crate::results::TestStatus;

/// Upper bounds of the recovery-time histogram, seconds.
pub const RECOVERY_BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Not a loopback address.
    #[error(
        "refusing to serve metrics on {0}: only loopback addresses (127.0.0.0/8, [::1]) \
         are allowed; put a reverse proxy in front to expose them"
    )]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("binding the metrics endpoint {addr}: {cause}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        cause: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct State {
    tests: BTreeMap<(String, &'static str), u64>,
    crashes: BTreeMap<&'static str, u64>,
    recoveries: BTreeMap<(u8, String), u64>,
    buckets: [u64; RECOVERY_BUCKETS.len()],
    recovery_count: u64,
    recovery_sum: f64,
    guests: i64,
}

/// The run's counters; share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// The process's counters: what `vexctl run --metrics` serves, so the runner records
/// into it with one line per event and no handle to pass around.
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// A test ended on `kernel` with `status`.
    pub fn test_finished(&self, kernel: &str, status: TestStatus) {
        self.with(|s| *s.tests.entry((kernel.into(), status.as_str())).or_default() += 1);
    }

    /// A crash was classified.
    pub fn crash(&self, category: Category) {
        self.with(|s| *s.crashes.entry(category.as_str()).or_default() += 1);
    }

    /// A recovery step at `level` ended with `outcome` (succeeded, failed, hung) after
    /// `seconds`.
    pub fn recovery(&self, level: u8, outcome: &str, seconds: f64) {
        self.with(|s| {
            *s.recoveries.entry((level, outcome.into())).or_default() += 1;
            for (i, le) in RECOVERY_BUCKETS.iter().enumerate() {
                if seconds <= *le {
                    s.buckets[i] += 1;
                }
            }
            s.recovery_count += 1;
            s.recovery_sum += seconds;
        });
    }

    /// A guest booted.
    pub fn guest_up(&self) {
        self.with(|s| s.guests += 1);
    }

    /// Counts a guest that booted and hands it back (for `match ... Ok(g) =>`).
    pub fn guest_booted<G>(&self, guest: G) -> G {
        self.guest_up();
        guest
    }

    /// A crash was handled: its category, and each recovery step it took.
    pub fn crashed_and_recovered(&self, category: Category, h: &crate::guest::Handled) {
        self.crash(category);
        for (level, _, outcome, took) in &h.steps {
            self.recovery(*level as u8, outcome.as_str(), took.as_secs_f64());
        }
    }

    /// A guest went away.
    pub fn guest_down(&self) {
        self.with(|s| s.guests = (s.guests - 1).max(0));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "vexfs_tests_total",
            "counter",
            "Tests finished, by kernel and status.",
        );
        for ((k, st), n) in &s.tests {
            let _ = writeln!(
                o,
                "vexfs_tests_total{{kernel=\"{}\",status=\"{st}\"}} {n}",
                label(k)
            );
        }
        head(
            &mut o,
            "vexfs_crashes_total",
            "counter",
            "Crashes classified, by category.",
        );
        for (c, n) in &s.crashes {
            let _ = writeln!(o, "vexfs_crashes_total{{category=\"{c}\"}} {n}");
        }
        head(
            &mut o,
            "vexfs_recoveries_total",
            "counter",
            "Recovery steps, by ladder level and outcome.",
        );
        for ((l, out), n) in &s.recoveries {
            let _ = writeln!(
                o,
                "vexfs_recoveries_total{{level=\"{l}\",outcome=\"{}\"}} {n}",
                label(out)
            );
        }
        head(
            &mut o,
            "vexfs_recovery_seconds",
            "histogram",
            "Time of each recovery step, seconds.",
        );
        for (le, n) in RECOVERY_BUCKETS.iter().zip(s.buckets) {
            let _ = writeln!(o, "vexfs_recovery_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "vexfs_recovery_seconds_bucket{{le=\"+Inf\"}} {c}\n\
             vexfs_recovery_seconds_sum {}\nvexfs_recovery_seconds_count {c}",
            s.recovery_sum,
            c = s.recovery_count
        );
        head(&mut o, "vexfs_guests_running", "gauge", "Guest VMs up now.");
        let _ = writeln!(o, "vexfs_guests_running {}", s.guests);
        o
    }
}

/// Label value escaping of the text format: backslash, quote, newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Refuses anything but a loopback address.
pub fn check_loopback(addr: SocketAddr) -> Result<(), MetricsError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(MetricsError::NotLoopback(addr))
    }
}

/// Binds `addr` (loopback only) and serves `GET /metrics` until the runtime stops;
/// returns the bound address (a port 0 is chosen by the system).
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    check_loopback(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|cause| MetricsError::Bind { addr, cause })?;
    let bound = listener
        .local_addr()
        .map_err(|cause| MetricsError::Bind { addr, cause })?;
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), answer(conn, &m))
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn answer(mut conn: tokio::net::TcpStream, m: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head only; a scraper sends no body with GET.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        ("200 OK", m.render())
    } else {
        ("404 Not Found", "GET /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn scraped_over_http_on_loopback() {
        let m = Metrics::new();
        let addr = serve(m.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let empty = get(addr, "/metrics").await;
        assert!(empty.starts_with("HTTP/1.1 200 OK\r\n"), "{empty}");
        assert!(empty.contains("\nvexfs_guests_running 0\n"), "{empty}");

        m.guest_up();
        m.guest_up();
        m.guest_down();
        m.test_finished("6.12.57+deb12-amd64", TestStatus::Passed);
        m.test_finished("6.12.57+deb12-amd64", TestStatus::Passed);
        m.test_finished("6.1.0-41-amd64", TestStatus::Crashed);
        m.crash(Category::ModuleCrash);
        m.recovery(1, "succeeded", 1.5);
        m.recovery(2, "failed", 45.0);
        let body = get(addr, "/metrics").await;
        for want in [
            "vexfs_tests_total{kernel=\"6.12.57+deb12-amd64\",status=\"passed\"} 2",
            "vexfs_tests_total{kernel=\"6.1.0-41-amd64\",status=\"crashed\"} 1",
            "vexfs_crashes_total{category=\"module_crash\"} 1",
            "vexfs_recoveries_total{level=\"1\",outcome=\"succeeded\"} 1",
            "vexfs_recoveries_total{level=\"2\",outcome=\"failed\"} 1",
            "vexfs_recovery_seconds_bucket{le=\"1\"} 0",
            "vexfs_recovery_seconds_bucket{le=\"2\"} 1",
            "vexfs_recovery_seconds_bucket{le=\"60\"} 2",
            "vexfs_recovery_seconds_bucket{le=\"+Inf\"} 2",
            "vexfs_recovery_seconds_sum 46.5",
            "vexfs_recovery_seconds_count 2",
            "vexfs_guests_running 1",
            "# TYPE vexfs_recovery_seconds histogram",
        ] {
            assert!(
                body.contains(&format!("{want}\n")),
                "missing {want:?} in\n{body}"
            );
        }
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn only_loopback_is_served() {
        for a in ["0.0.0.0:9100", "10.0.0.1:9100", "[::]:9100"] {
            let e = serve(Metrics::new(), a.parse().unwrap()).await.unwrap_err();
            assert!(e.to_string().contains("only loopback"), "{e}");
        }
        assert!(check_loopback("[::1]:9100".parse().unwrap()).is_ok());
        assert!(check_loopback("127.0.0.2:9100".parse().unwrap()).is_ok());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
