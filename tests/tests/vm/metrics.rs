//! `vexctl run --metrics`: the Prometheus endpoint scraped over loopback while a real
//! run boots a guest, crashes it, recovers and goes on.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::runner::vexctl;
use super::serial;

const PLAN: &str = r#"
name = "metrics-e2e"
kernels = ["latest-6.12"]

[[test]]
name = "first"
timeout_s = 60
steps = ["load", { exec = { cmd = "true" } }]

[[test]]
name = "crash"
timeout_s = 60
expect_crash = "NULL pointer dereference in vexfs_fault_null"
steps = [{ trigger = "null" }]

[[test]]
name = "slow"
timeout_s = 60
steps = [{ exec = { cmd = "sleep 4" } }]
"#;

/// One scrape: `name{labels}` to value.
type Sample = BTreeMap<String, f64>;

fn scrape(addr: &str) -> Option<Sample> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    c.read_to_string(&mut reply).ok()?;
    let body = reply.split_once("\r\n\r\n")?.1;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    let mut s = Sample::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("`name value` lines");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        s.insert(key.to_string(), v);
    }
    Some(s)
}

fn sum(s: &Sample, prefix: &str) -> f64 {
    s.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
#[ignore = "VM test: run with --ignored (scripts/test.sh)"]
fn metrics_endpoint_answers_during_a_run() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let mut child = std::process::Command::new(vexctl())
        .args(["run", "--quiet", "--metrics", "127.0.0.1:0", "--plan"])
        .arg(&plan)
        .arg("--db")
        .arg(dir.path().join("crashes.db"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The bound address is the first thing vexctl says on stderr.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("metrics: http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {first:?}"))
        .to_string();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut scrapes: Vec<Sample> = Vec::new();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("vexctl run did not finish in 300 s");
        }
        if let Some(s) = scrape(&addr) {
            scrapes.push(s);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let stderr = rest.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(scrapes.len() >= 10, "only {} scrapes", scrapes.len());

    // Counters never go down between scrapes; the gauge stays 0 or 1 (one kernel).
    for pair in scrapes.windows(2) {
        for (k, v) in &pair[0] {
            if k.starts_with("vexfs_guests_running") {
                continue;
            }
            let now = pair[1].get(k).copied().unwrap_or(0.0);
            assert!(now >= *v, "{k} went from {v} to {now}");
        }
    }
    let guests: Vec<f64> = scrapes.iter().map(|s| s["vexfs_guests_running"]).collect();
    assert!(guests.iter().all(|g| *g == 0.0 || *g == 1.0), "{guests:?}");
    assert!(
        guests.contains(&1.0),
        "never saw the guest running: {guests:?}"
    );

    // The run seen from outside: tests finishing, the crash, its recovery.
    let last = scrapes.last().unwrap();
    let passed: f64 = last
        .iter()
        .filter(|(k, _)| k.starts_with("vexfs_tests_total{") && k.ends_with("status=\"passed\"}"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        (2.0..=3.0).contains(&passed),
        "passed tests {passed} in {last:?}"
    );
    assert_eq!(
        sum(last, "vexfs_tests_total{") - passed,
        0.0,
        "a test did not pass: {last:?}"
    );
    assert_eq!(
        last.get("vexfs_crashes_total{category=\"module_crash\"}"),
        Some(&1.0),
        "{last:?}"
    );
    assert_eq!(sum(last, "vexfs_crashes_total{"), 1.0, "{last:?}");
    let recoveries = sum(last, "vexfs_recoveries_total{");
    assert!(recoveries >= 1.0, "{last:?}");
    assert!(
        last.keys()
            .any(|k| k.starts_with("vexfs_recoveries_total{level=\"2\"")
                && k.ends_with("outcome=\"succeeded\"}")),
        "an oops is recovered by a restart (level 2): {last:?}"
    );
    assert_eq!(last["vexfs_recovery_seconds_count"], recoveries);
    assert_eq!(
        last["vexfs_recovery_seconds_bucket{le=\"+Inf\"}"],
        recoveries
    );
    let secs = last["vexfs_recovery_seconds_sum"];
    assert!(
        secs > 0.0 && secs < 120.0 * recoveries,
        "recovery seconds {secs}"
    );
    // The crash was counted while the run still went on (the slow test after it).
    let crash_seen = scrapes
        .iter()
        .position(|s| sum(s, "vexfs_crashes_total{") >= 1.0)
        .expect("the crash in some scrape");
    assert!(
        scrapes[crash_seen..]
            .iter()
            .any(|s| s["vexfs_guests_running"] == 1.0),
        "no scrape with a guest running after the crash"
    );
}
