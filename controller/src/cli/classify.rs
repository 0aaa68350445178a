//! `vexctl classify [FILE|-] [--json]`: classifies the crashes in a kernel log.
//! Exit code 0 when the log holds no crash, 1 when it does, 2 on errors.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{EXIT_FAILURES, EXIT_OK};
use crate::classify::{Classifier, CrashReport};

/// `classify` options.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Log file to read; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// Print exactly one JSON object (the primary crash plus all reports).
    #[arg(long)]
    pub json: bool,
}

/// Runs `vexctl classify`.
pub fn run(args: ClassifyArgs) -> anyhow::Result<u8> {
    let reports = match args.file.as_deref() {
        None => read_stream(std::io::stdin().lock())?,
        Some(p) if p.as_os_str() == "-" => read_stream(std::io::stdin().lock())?,
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            read_stream(f).with_context(|| format!("read {}", p.display()))?
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&to_json(&reports))?)?;
    } else {
        let color = std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal();
        print_human(&mut out, &reports, color)?;
    }
    Ok(if reports.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILURES
    })
}

/// Streams the input through the incremental classifier (logs can be large).
fn read_stream(mut r: impl Read) -> anyhow::Result<Vec<CrashReport>> {
    let mut c = Classifier::new();
    let mut reports = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reports.extend(c.feed(&buf[..n]));
    }
    reports.extend(c.finish());
    Ok(reports)
}

/// The `--json` document: the primary (first) crash's fields plus all reports, in
/// this field order.
#[derive(Debug, Serialize)]
pub struct JsonOut<'a> {
    /// Whether any crash was found.
    pub crash: bool,
    /// Category of the first crash, `none` without one.
    pub category: &'a str,
    /// Title of the first crash, empty without one.
    pub title: &'a str,
    /// Whether the first crash's report is corrupted.
    pub corrupted: bool,
    /// Severity of the first crash, `none` without one.
    pub severity: &'a str,
    /// Recovery for the first crash, `none` without one.
    pub recovery: &'a str,
    /// All reports, in log order.
    pub crashes: &'a [CrashReport],
}

/// Builds the `--json` document for `reports`.
pub fn to_json(reports: &[CrashReport]) -> JsonOut<'_> {
    let first = reports.first();
    JsonOut {
        crash: first.is_some(),
        category: first.map_or("none", |r| r.category.as_str()),
        title: first.map_or("", |r| r.title.as_str()),
        corrupted: first.is_some_and(|r| r.corrupted),
        severity: first.map_or("none", |r| r.severity.as_str()),
        recovery: first.map_or("none", |r| r.recovery.as_str()),
        crashes: reports,
    }
}

fn print_human(out: &mut impl Write, reports: &[CrashReport], color: bool) -> std::io::Result<()> {
    if reports.is_empty() {
        return writeln!(out, "no crash found");
    }
    let (bold, red, reset) = if color {
        ("\x1b[1m", "\x1b[31m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    for (i, r) in reports.iter().enumerate() {
        writeln!(
            out,
            "{bold}{red}crash {}{reset}{bold}: {}{reset}",
            i + 1,
            r.title
        )?;
        writeln!(
            out,
            "  category: {}  severity: {}  recovery: {}{}",
            r.category.as_str(),
            r.severity.as_str(),
            r.recovery.as_str(),
            if r.corrupted { "  (corrupted)" } else { "" }
        )?;
        writeln!(out, "  line: {}", r.start_line + 1)?;
        if let Some(m) = &r.guilty_module {
            writeln!(out, "  module: {m}")?;
        }
        if let Some(t) = &r.taint {
            writeln!(out, "  taint: {t}")?;
        }
        if !r.frames.is_empty() {
            let shown: Vec<&str> = r.frames.iter().take(8).map(String::as_str).collect();
            writeln!(out, "  frames: {}", shown.join(" < "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_without_crash() {
        let v = serde_json::to_value(to_json(&[])).expect("json");
        assert_eq!(v["crash"], false);
        assert_eq!(v["category"], "none");
        assert_eq!(v["title"], "");
        assert_eq!(v["crashes"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn json_with_crash() {
        let log = b"[    1.0] WARNING: CPU: 0 PID: 1 at fs/vexfs/super.c:10 vexfs_fill_super+0x1/0x2 [vexfs]\n[    1.0] RIP: 0010:vexfs_fill_super+0x1/0x2 [vexfs]\n[    1.0] Call Trace:\n[    1.0]  mount_bdev+0x1/0x2\n";
        let reports = crate::classify::classify(log);
        let text = serde_json::to_string(&to_json(&reports)).expect("json");
        assert!(text.starts_with(r#"{"crash":true,"category":"warning","title":"#));
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(v["crash"], true);
        assert_eq!(v["category"], "warning");
        assert_eq!(v["title"], "WARNING in vexfs_fill_super");
        assert_eq!(v["severity"], "low");
        assert_eq!(v["recovery"], "none");
    }
}
