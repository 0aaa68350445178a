//! Measures the crash classifier on a syzkaller-format crash corpus (JSON lines with
//! `log`/`log_b64`, `expect_crash`, `category`, `title`, `alt_titles`, `corrupted`).
//!
//! Usage: `cargo run -p vexfs-controller --release --example classify_corpus -- [CORPUS.jsonl] [-v]`
//! (default corpus: the development split in `tests/fixtures/crash-corpus/`).
//! `-v` prints every mismatch.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use vexfs_controller::classify::classify;

fn main() -> ExitCode {
    let mut path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crash-corpus/syzkaller-dev.jsonl");
    let mut verbose = false;
    for arg in std::env::args().skip(1) {
        if arg == "-v" || arg == "--verbose" {
            verbose = true;
        } else {
            path = PathBuf::from(arg);
        }
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("classify_corpus: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let (mut n, mut detect, mut cat, mut title, mut corrupt) = (0usize, 0, 0, 0, 0);
    let (mut n_crash, mut title_crash) = (0usize, 0usize);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("classify_corpus: bad line: {e}");
                return ExitCode::from(2);
            }
        };
        let log: Vec<u8> = match row["log_b64"].as_str() {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            None => row["log"].as_str().unwrap_or_default().as_bytes().to_vec(),
        };
        let id = row["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| row["id"].to_string());
        let want_crash = row["expect_crash"].as_bool().unwrap_or(false);
        let want_cat = row["category"].as_str().unwrap_or("none");
        let want_title = row["title"].as_str().unwrap_or("");
        let want_alts: Vec<&str> = row["alt_titles"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let want_corrupted = row["corrupted"].as_bool().unwrap_or(false);

        let reports = classify(&log);
        let got = reports.first();
        let got_cat = got.map_or("none", |r| r.category.as_str());
        let got_title = got.map_or("", |r| r.title.as_str());
        let got_corrupted = got.is_some_and(|r| r.corrupted);

        n += 1;
        let ok_detect = got.is_some() == want_crash;
        let ok_cat = got_cat == want_cat;
        let ok_title = got_title == want_title || want_alts.contains(&got_title);
        let ok_corrupt = got_corrupted == want_corrupted;
        detect += usize::from(ok_detect);
        cat += usize::from(ok_cat);
        title += usize::from(ok_title);
        corrupt += usize::from(ok_corrupt);
        if want_crash {
            n_crash += 1;
            title_crash += usize::from(ok_title);
        }
        if verbose && !(ok_detect && ok_cat && ok_title && ok_corrupt) {
            println!(
                "MISMATCH {id}: want [{want_cat}] {want_title:?} corrupted={want_corrupted}\n             got  [{got_cat}] {got_title:?} corrupted={got_corrupted}"
            );
        }
    }
    let pct = |k: usize, d: usize| {
        if d == 0 {
            0.0
        } else {
            100.0 * k as f64 / d as f64
        }
    };
    println!(
        "corpus: {} ({n} logs, {n_crash} with a crash)",
        path.display()
    );
    println!(
        "crash detected right: {detect}/{n} = {:.1}%",
        pct(detect, n)
    );
    println!("category accuracy:    {cat}/{n} = {:.1}%", pct(cat, n));
    println!(
        "exact title match:    {title}/{n} = {:.1}% (crash logs only: {:.1}%)",
        pct(title, n),
        pct(title_crash, n_crash)
    );
    println!(
        "corrupted accuracy:   {corrupt}/{n} = {:.1}%",
        pct(corrupt, n)
    );
    ExitCode::SUCCESS
}
