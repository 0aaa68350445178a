//! `vexctl crashes list|show|stats`: read the crash database.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::store::{self, Store};
use crate::symbolize;

use super::EXIT_OK;

/// Arguments of `vexctl crashes`.
#[derive(Debug, Args)]
pub struct CrashesArgs {
    /// Crash database (default: $VEXFS_DB, else ~/.local/share/vexfs/crashes.db).
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to show.
    #[command(subcommand)]
    pub command: CrashesCommand,
}

/// `vexctl crashes` subcommands.
#[derive(Debug, Subcommand)]
pub enum CrashesCommand {
    /// Recorded crashes, newest first.
    List {
        /// Only this run's crashes.
        #[arg(long)]
        run: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One crash with its report, forensics and recovery attempts.
    Show {
        /// Crash id.
        id: i64,
    },
    /// Buckets and the recovery metrics against the design's targets.
    Stats {
        /// Only this run.
        #[arg(long)]
        run: Option<i64>,
    },
}

/// The crash database path: --db, else $VEXFS_DB, else the user data dir.
pub fn db_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("VEXFS_DB").map(PathBuf::from))
        .unwrap_or_else(store::default_path)
}

fn time(ms: i64) -> String {
    crate::report::iso_time(ms).replacen('T', " ", 1)
}

/// Runs `vexctl crashes`.
pub fn run(args: CrashesArgs) -> anyhow::Result<u8> {
    let path = db_path(args.db);
    if !path.exists() {
        anyhow::bail!(
            "no crash database at {} (run `vexctl run` first, or pass --db)",
            path.display()
        );
    }
    let store = Store::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    match args.command {
        CrashesCommand::List { run, limit } => {
            let crashes = store.crashes(run, limit)?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&json!({ "crashes": crashes }))?
                )?;
            } else if crashes.is_empty() {
                writeln!(out, "no crashes recorded")?;
            } else {
                writeln!(
                    out,
                    "{:>5}  {:19}  {:17}  {:8}  {:22}  TITLE",
                    "ID", "DETECTED (UTC)", "CATEGORY", "SEVERITY", "KERNEL"
                )?;
                for c in &crashes {
                    writeln!(
                        out,
                        "{:>5}  {:19}  {:17}  {:8}  {:22}  {}",
                        c.id,
                        time(c.crash.detected_at_ms),
                        c.crash.category,
                        c.crash.severity,
                        c.crash.kernel,
                        c.crash.title
                    )?;
                }
            }
        }
        CrashesCommand::Show { id } => {
            let c = store.crash(id)?;
            let attempts = store.attempts(id)?;
            let lines = SourceLines::of(&path, id, &c.crash);
            let artifacts = crate::artifacts::list(&path, id)?;
            if args.json {
                let v = json!({
                    "crash": c,
                    "attempts": attempts,
                    "symbolized": lines.json(),
                    "artifacts": artifacts,
                });
                writeln!(out, "{}", serde_json::to_string(&v)?)?;
            } else {
                let k = &c.crash;
                writeln!(out, "crash {}: {}", c.id, k.title)?;
                writeln!(
                    out,
                    "category {}, severity {}, recovery {}, verdict {}{}",
                    k.category,
                    k.severity,
                    k.recovery,
                    k.verdict,
                    if k.corrupted {
                        ", report corrupted"
                    } else {
                        ""
                    }
                )?;
                writeln!(
                    out,
                    "kernel {}, module {}, test {}, detected {} UTC, bucket {}",
                    k.kernel,
                    k.module,
                    k.test_name,
                    time(k.detected_at_ms),
                    c.bucket_id
                )?;
                writeln!(out, "\n--- report{} ---", lines.note())?;
                writeln!(out, "{}", lines.report.as_deref().unwrap_or(&k.report))?;
                if !k.forensics.is_empty() {
                    writeln!(
                        out,
                        "\n--- forensics ---\n{}",
                        lines.forensics.as_deref().unwrap_or(&k.forensics)
                    )?;
                }
                if !artifacts.is_empty() {
                    writeln!(
                        out,
                        "\n--- artifacts ({}) ---",
                        crate::artifacts::dir(&path, id).display()
                    )?;
                    for a in &artifacts {
                        writeln!(
                            out,
                            "{:11} {:>12} bytes  {}",
                            format!("{:?}", a.kind).to_lowercase(),
                            a.bytes,
                            a.path.display()
                        )?;
                    }
                }
                writeln!(out, "\n--- recovery ---")?;
                for a in &attempts {
                    writeln!(
                        out,
                        "level {} {:24} {:>8} ms  {}{}",
                        a.level,
                        a.action,
                        a.duration_ms,
                        a.outcome,
                        if a.fate.is_empty() {
                            String::new()
                        } else {
                            format!(" -> {}", a.fate)
                        }
                    )?;
                }
            }
        }
        CrashesCommand::Stats { run } => {
            let s = store.stats(run)?;
            let buckets = store.buckets()?;
            let targets = crate::report::targets(&s);
            if args.json {
                let t: Vec<_> = targets
                    .iter()
                    .map(|t| json!({"metric": t.name, "value": t.value, "target": t.target, "met": t.met}))
                    .collect();
                let v = json!({ "stats": s, "targets": t, "buckets": buckets });
                writeln!(out, "{}", serde_json::to_string(&v)?)?;
            } else {
                writeln!(
                    out,
                    "{} crashes in {} buckets; {} recoveries, {} succeeded",
                    s.crashes, s.buckets, s.recoveries, s.recovered
                )?;
                for t in &targets {
                    let mark = if t.met { "ok  " } else { "MISS" };
                    writeln!(
                        out,
                        "  {mark} {:24} {:>9}  (target {})",
                        t.name, t.value, t.target
                    )?;
                }
                if !buckets.is_empty() {
                    writeln!(
                        out,
                        "\n{:>6}  {:17}  {:30}  TITLE",
                        "COUNT", "CATEGORY", "KERNELS"
                    )?;
                    for b in &buckets {
                        writeln!(
                            out,
                            "{:>6}  {:17}  {:30}  {}",
                            b.count,
                            b.category,
                            b.kernels.join(","),
                            b.title
                        )?;
                    }
                }
            }
        }
    }
    Ok(EXIT_OK)
}

/// Source lines for a crash's module frames, computed at display time from the .ko
/// in its artifacts folder or the cached guest image.
#[derive(Debug, Default)]
struct SourceLines {
    /// The .ko used.
    ko: Option<PathBuf>,
    /// The report with source lines, when any frame resolved.
    report: Option<String>,
    /// The forensics with source lines, when any frame resolved.
    forensics: Option<String>,
    /// Every resolved frame (report first, then forensics).
    frames: Vec<symbolize::Frame>,
    /// Why there are none.
    error: Option<String>,
}

impl SourceLines {
    fn of(db: &std::path::Path, id: i64, k: &store::NewCrash) -> Self {
        let Some(ko) = crate::artifacts::module_ko(db, id, &k.kernel, &k.module) else {
            return Self {
                error: Some(format!("no module .ko for kernel {:?}", k.kernel)),
                ..Self::default()
            };
        };
        let mut s = Self {
            ko: Some(ko.clone()),
            ..Self::default()
        };
        for (text, slot) in [(&k.report, &mut s.report), (&k.forensics, &mut s.forensics)] {
            match symbolize::report(text, &ko) {
                Ok(r) if !r.frames.is_empty() => {
                    *slot = Some(r.text);
                    s.frames.extend(r.frames);
                }
                Ok(_) => {}
                Err(e) => s.error = Some(e.to_string()),
            }
        }
        s
    }

    fn note(&self) -> String {
        match (&self.ko, &self.error, self.report.is_some()) {
            (Some(ko), None, true) => format!(" (source lines from {})", ko.display()),
            (_, Some(e), _) => format!(" (no source lines: {e})"),
            _ => String::new(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "ko": self.ko,
            "report": self.report,
            "forensics": self.forensics,
            "frames": self.frames,
            "error": self.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_come_from_the_crash_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("crashes.db");
        let ko = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/symbolize/6.12.117+deb12-amd64/vexfs.ko"
        );
        let k = store::NewCrash {
            // No kernel: nothing is looked up outside the folder.
            report: "RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs]\n".into(),
            forensics: " vexfs_fault_deadlock+0x2a/0x41 [vexfs]\n".into(),
            module: "vexfs".into(),
            ..Default::default()
        };
        let none = SourceLines::of(&db, 3, &k);
        assert!(none.note().contains("no module .ko"), "{}", none.note());
        assert!(none.report.is_none());
        crate::artifacts::write(
            &db,
            3,
            &crate::artifacts::Inputs {
                report: &k.report,
                module_ko: Some(std::path::Path::new(ko)),
                ..Default::default()
            },
        )
        .unwrap();
        let s = SourceLines::of(&db, 3, &k);
        assert!(s.report.as_deref().unwrap().contains("vexfs.c:715"));
        assert!(s.forensics.as_deref().unwrap().contains(" vexfs.c:"));
        assert_eq!(s.frames.len(), 2);
        assert!(s.note().contains("artifacts/3/vexfs.ko"), "{}", s.note());
        let j = s.json();
        assert_eq!(j["frames"][0]["symbol"], "vexfs_fault_null");
        assert!(j["error"].is_null());
    }

    #[test]
    fn times_are_utc_with_a_space() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(951_782_400_000 + 3_661_000), "2000-02-29 01:01:01");
    }
}
