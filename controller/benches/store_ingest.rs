//! Benchmark (harness = false): crash database ingest with concurrent writers, the way
//! the controller writes it. Each kernel task of `vexctl run` opens its own connection
//! to the one database file (writer threads here), and two controllers (shards, or a
//! run and its `--resume`) may share the file (writer processes here: this binary
//! re-run as a child). Every row is a realistic crash: a classified report, a console
//! excerpt and forensics, ~45 KB of kernel log text.
//!
//! Run: `cargo bench -p vexfs-controller --bench store_ingest [-- ROWS]` (ROWS per
//! writer, default 500). Prints rows/s per writer count, then checks that the file
//! holds every row written and that no writer saw an error.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vexfs_controller::classify::{Category, Recovery, Severity};
use vexfs_controller::store::{NewCrash, Store, now_ms};

/// Set in a child process: `PATH THREADS ROWS START_AT_MS` of its share of the work.
const CHILD_ENV: &str = "VEXFS_INGEST_CHILD";
/// Distinct crash signatures: most crashes land in an existing bucket.
const SIGNATURES: usize = 16;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../guest-image/fixtures/6.12.117+deb12-amd64/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The crash that writer `w` records as its `i`th row.
fn crash(texts: &(String, String, String), run_id: i64, w: usize, i: usize) -> NewCrash {
    let sig = (w * 7 + i) % SIGNATURES;
    NewCrash {
        run_id: Some(run_id),
        category: Category::ModuleCrash,
        severity: Severity::Moderate,
        recovery: Recovery::ModuleReload,
        title: format!("BUG: kernel NULL pointer dereference in vexfs_op_{sig}"),
        signature: format!("null-deref:vexfs_op_{sig}"),
        kernel: "6.12.117+deb12-amd64".into(),
        module: "vexfs".into(),
        test_name: format!("writer{w}-test{i}"),
        verdict: "healthy".into(),
        detected_at_ms: now_ms(),
        report: texts.0.clone(),
        console_excerpt: texts.1.clone(),
        forensics: texts.2.clone(),
        ..Default::default()
    }
}

fn texts() -> (String, String, String) {
    let null = fixture("null.log");
    let report: String = null.chars().skip(null.len() / 2).take(6 * 1024).collect();
    let forensics: String = fixture("deadlock.log").chars().take(12 * 1024).collect();
    (report, null, forensics)
}

/// Runs `threads` writers of `rows` crashes each on `db` (one connection per thread),
/// all starting at `start_at_ms` (wall clock, so processes start together). Returns
/// the errors seen, as text.
fn write_rows(db: &Path, threads: usize, rows: usize, start_at_ms: i64, id: usize) -> Vec<String> {
    let texts = texts();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let db = db.to_path_buf();
            let texts = texts.clone();
            std::thread::spawn(move || {
                let wait = start_at_ms - now_ms();
                if wait > 0 {
                    std::thread::sleep(Duration::from_millis(wait as u64));
                }
                let w = id * 100 + t;
                let mut store = match Store::open(&db) {
                    Ok(s) => s,
                    Err(e) => return vec![format!("writer {w}: open: {e}")],
                };
                let run = match store.begin_run("ingest", "{}") {
                    Ok(r) => r,
                    Err(e) => return vec![format!("writer {w}: begin_run: {e}")],
                };
                let mut errors = Vec::new();
                for i in 0..rows {
                    if let Err(e) = store.record_crash(&crash(&texts, run, w, i)) {
                        errors.push(format!("writer {w} row {i}: {e}"));
                    }
                }
                errors
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect()
}

/// One measurement: `procs` processes of `threads` writers each on a fresh database.
fn measure(procs: usize, threads: usize, rows: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crashes.db");
    // Everyone starts at once, on a database nobody has created yet: the first
    // writers race to create and migrate it, as two controllers started together do.
    let start_at_ms = now_ms() + 300;
    let begin = Instant::now() + Duration::from_millis(300);
    let children: Vec<_> = (1..procs)
        .map(|p| {
            Command::new(std::env::current_exe().expect("own path"))
                .env(
                    CHILD_ENV,
                    format!("{} {threads} {rows} {start_at_ms} {p}", db.display()),
                )
                .spawn()
                .expect("spawn writer process")
        })
        .collect();
    let mut errors = write_rows(&db, threads, rows, start_at_ms, 0);
    for mut c in children {
        let status = c.wait().expect("wait writer process");
        if !status.success() {
            errors.push(format!("writer process failed: {status}"));
        }
    }
    let elapsed = begin.elapsed();
    let writers = procs * threads;
    let expected = (writers * rows) as i64;
    let store = Store::open(&db).expect("reopen");
    let stats = store.stats(None).expect("stats");
    let bucketed: i64 = store
        .buckets()
        .expect("buckets")
        .iter()
        .map(|b| b.count)
        .sum();
    let size = std::fs::metadata(&db).map_or(0, |m| m.len())
        + std::fs::metadata(dir.path().join("crashes.db-wal")).map_or(0, |m| m.len());
    println!(
        "{procs} process{} x {threads} writer thread{} ({writers} writers): {:.0} rows/s ({expected} rows in {:.2} s, {:.0} MiB); rows in file {}, in buckets {bucketed}, errors {}",
        if procs == 1 { "" } else { "es" },
        if threads == 1 { "" } else { "s" },
        expected as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        size as f64 / (1 << 20) as f64,
        stats.crashes,
        errors.len()
    );
    for e in errors.iter().take(5) {
        println!("  error: {e}");
    }
    assert!(errors.is_empty(), "writers saw {} errors", errors.len());
    assert_eq!(stats.crashes, expected, "rows lost");
    assert_eq!(bucketed, expected, "bucket counts disagree with rows");
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let f: Vec<&str> = spec.split(' ').collect();
        let errors = write_rows(
            Path::new(f[0]),
            f[1].parse().expect("threads"),
            f[2].parse().expect("rows"),
            f[3].parse().expect("start"),
            f[4].parse().expect("id"),
        );
        for e in &errors {
            eprintln!("{e}");
        }
        std::process::exit(i32::from(!errors.is_empty()));
    }
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let row_kib = {
        let t = texts();
        (t.0.len() + t.1.len() + t.2.len()) / 1024
    };
    println!("store_ingest: {rows} crash rows per writer, ~{row_kib} KiB of text per row");
    for threads in [1, 2, 4, 8] {
        measure(1, threads, rows);
    }
    for threads in [1, 2, 4] {
        measure(2, threads, rows);
    }
}
