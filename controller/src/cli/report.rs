//! `vexctl report merge|show|kcidb`: combine shard results files, re-render a results
//! file, convert results to KernelCI's KCIDB (and submit them).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::report;
use crate::results::RunResults;

use super::{EXIT_FAILURES, EXIT_OK};

/// Arguments of `vexctl report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// `vexctl report` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge the results files of the shards of one plan, print the summary and
    /// write the requested reports. Exit 0 when everything passed, 1 otherwise.
    Merge {
        /// Results JSON files (`--json` output of each shard).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the merged results JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Print a results file's summary and re-render its reports. Exit 0 when
    /// everything passed, 1 otherwise.
    Show {
        /// Results JSON file.
        file: PathBuf,
        /// Write the HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write JUnit XML here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Convert results files (merged first, like `merge`) to KernelCI KCIDB v5.3 JSON
    /// and optionally submit it. Exit 0 once written (and submitted), whatever the
    /// tests' outcome: the statuses are in the JSON.
    Kcidb(KcidbArgs),
}

/// Arguments of `vexctl report kcidb`.
#[derive(Debug, Args)]
pub struct KcidbArgs {
    /// Results JSON files (`--json` output of a run or of each shard).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// KCIDB origin: the name of the submitting CI system ([a-z0-9_]+).
    #[arg(long)]
    pub origin: String,
    /// Write the KCIDB JSON here (default: standard output, unless --submit).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// The module's source folder: its git repository and commit make the checkout.
    #[arg(long, default_value = "guest-image/vexfs")]
    pub source: PathBuf,
    /// Tree name of the checkout.
    #[arg(long, default_value = "vexfs")]
    pub tree_name: String,
    /// Write each crash report here as a file, listed in the tests' output_files.
    #[arg(long)]
    pub artifacts: Option<PathBuf>,
    /// URL the --artifacts folder is published at (default: its file:// URL).
    #[arg(long, requires = "artifacts")]
    pub artifacts_url: Option<String>,
    /// Guest image cache, for each build's compiler and log (default: $VEXFS_CACHE,
    /// else ~/.cache/vexfs).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// POST the JSON to this KCIDB submission URL.
    #[arg(long)]
    pub submit: Option<String>,
    /// Environment variable holding the submission token (sent as a Bearer token).
    #[arg(long, default_value = "KCIDB_TOKEN")]
    pub token_env: String,
}

/// Runs `vexctl report`.
pub fn run(args: ReportArgs) -> anyhow::Result<u8> {
    run_to(
        args,
        &mut std::io::stdout().lock(),
        report::summary::stdout_color(),
    )
}

fn run_to(args: ReportArgs, out: &mut dyn Write, color: bool) -> anyhow::Result<u8> {
    let (r, junit, json, html) = match args.command {
        ReportCommand::Kcidb(a) => return kcidb(a, out),
        ReportCommand::Merge {
            files,
            junit,
            json,
            html,
        } => {
            let parts = files.iter().map(|f| read(f)).collect::<Result<_, _>>()?;
            let merged = report::merge(parts).context("merging results")?;
            (merged, junit, json, html)
        }
        ReportCommand::Show { file, html, junit } => (read(&file)?, junit, None, html),
    };
    // Summary first: a report that cannot be written (full disk) should not hide it.
    out.write_all(report::summary(&r, color).as_bytes())?;
    out.flush()?;
    report::write_all(&r, junit.as_deref(), json.as_deref(), html.as_deref())?;
    Ok(if r.all_ok() { EXIT_OK } else { EXIT_FAILURES })
}

/// `vexctl report kcidb`: merge, gather the machine's facts, convert, write, submit.
fn kcidb(a: KcidbArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    use crate::report::{kcidb, kcidb_facts};
    kcidb::check_origin(&a.origin)?;
    // Before any work: a missing token should not cost a conversion.
    let token = match &a.submit {
        Some(_) => Some(kcidb_facts::token_from_env(&a.token_env)?),
        None => None,
    };
    let parts = a.files.iter().map(|f| read(f)).collect::<Result<_, _>>()?;
    let r = report::merge(parts).context("merging results")?;
    let cache = a.cache.clone().or_else(kcidb_facts::cache_dir);
    let artifacts_url = match (&a.artifacts, &a.artifacts_url) {
        (_, Some(u)) => Some(u.clone()),
        (Some(dir), None) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let abs = dir
                .canonicalize()
                .with_context(|| format!("reading {}", dir.display()))?;
            Some(format!("file://{}", abs.display()))
        }
        (None, None) => None,
    };
    let facts = kcidb::Facts {
        origin: a.origin.clone(),
        tree_name: Some(a.tree_name.clone()),
        git: kcidb_facts::git_source(&a.source),
        builds: r
            .kernels
            .iter()
            .map(|k| {
                let f = cache
                    .as_deref()
                    .map(|c| kcidb_facts::build_facts(c, &k.kernel))
                    .unwrap_or_default();
                (k.kernel.clone(), f)
            })
            .collect(),
        artifacts_url,
    };
    let doc = kcidb::kcidb(&r, &facts)?;
    if let Some(dir) = &a.artifacts {
        for f in kcidb::artifacts(&r) {
            let path = dir.join(&f.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            report::write_atomic(&path, f.content.as_bytes())?;
        }
    }
    let text = kcidb::to_json(&doc);
    match &a.output {
        Some(p) => report::write_atomic(p, text.as_bytes())?,
        None if a.submit.is_none() => out.write_all(text.as_bytes())?,
        None => {}
    }
    if let (Some(url), Some(token)) = (&a.submit, &token) {
        let answer = kcidb_facts::submit(url, token, text.as_bytes())?;
        writeln!(
            out,
            "submitted {} tests, {} builds, {} incidents to {url}{}",
            doc.tests.len(),
            doc.builds.len(),
            doc.incidents.len(),
            if answer.is_empty() {
                String::new()
            } else {
                format!(": {answer}")
            }
        )?;
    }
    out.flush()?;
    Ok(EXIT_OK)
}

fn read(path: &Path) -> anyhow::Result<RunResults> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    report::parse(&text).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;
    use crate::results::TestStatus;

    fn merge_args(files: Vec<PathBuf>, dir: &Path) -> ReportArgs {
        ReportArgs {
            command: ReportCommand::Merge {
                files,
                junit: Some(dir.join("junit.xml")),
                json: Some(dir.join("merged.json")),
                html: Some(dir.join("report.html")),
            },
        }
    }

    #[test]
    fn merge_writes_reports_and_maps_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (sample(), sample());
        a.kernels.truncate(1);
        b.kernels.remove(0);
        b.shard = Some("2/2".into());
        let (fa, fb) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&fa, report::json(&a)).unwrap();
        std::fs::write(&fb, report::json(&b)).unwrap();
        let mut out = Vec::new();
        let code = run_to(
            merge_args(vec![fb.clone(), fa.clone()], dir.path()),
            &mut out,
            false,
        );
        assert_eq!(code.unwrap(), EXIT_FAILURES);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("vexfs plan smoke (run 42)"), "{out}");
        let merged = read(&dir.path().join("merged.json")).unwrap();
        assert_eq!(merged.kernels, sample().kernels);
        assert!(dir.path().join("junit.xml").exists() && dir.path().join("report.html").exists());

        // Everything passing: exit 0.
        let mut ok = sample();
        ok.kernels.truncate(1);
        ok.kernels[0]
            .tests
            .retain(|t| t.status == TestStatus::Passed);
        std::fs::write(&fa, report::json(&ok)).unwrap();
        let show = ReportArgs {
            command: ReportCommand::Show {
                file: fa.clone(),
                html: None,
                junit: None,
            },
        };
        assert_eq!(run_to(show, &mut Vec::new(), false).unwrap(), EXIT_OK);

        // Errors (exit 2 in main) name the file.
        let missing = dir.path().join("missing.json");
        let e = run_to(
            merge_args(vec![fa, missing], dir.path()),
            &mut Vec::new(),
            false,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("missing.json"), "{e:#}");
        std::fs::write(&fb, "not json").unwrap();
        let e = run_to(merge_args(vec![fb], dir.path()), &mut Vec::new(), false).unwrap_err();
        assert!(
            format!("{e:#}").contains("b.json: invalid results JSON"),
            "{e:#}"
        );
    }

    /// A one-shot HTTP server on 127.0.0.1: answers `status` with `body` and hands
    /// back the request it got (headers, body).
    fn one_shot_server(
        status: &'static str,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/submit", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut data = vec![0; len];
            reader.read_exact(&mut data).unwrap();
            let mut conn = conn;
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            (head, data)
        });
        (url, handle)
    }

    fn kcidb_args(files: Vec<PathBuf>, dir: &Path) -> KcidbArgs {
        KcidbArgs {
            files,
            origin: "vexfs_ci".into(),
            output: Some(dir.join("kcidb.json")),
            source: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            tree_name: "vexfs".into(),
            artifacts: Some(dir.join("artifacts")),
            artifacts_url: None,
            cache: Some(dir.join("no-cache")),
            submit: None,
            token_env: "VEXCTL_TEST_KCIDB_TOKEN_UNSET".into(),
        }
    }

    #[test]
    fn kcidb_merges_shards_writes_artifacts_and_validates() {
        use crate::report::kcidb::tests::{demo, validate};
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (demo(), demo());
        a.kernels.truncate(1);
        a.shard = Some("1/2".into());
        b.kernels.remove(0);
        b.shard = Some("2/2".into());
        let (fa, fb) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&fa, report::json(&a)).unwrap();
        std::fs::write(&fb, report::json(&b)).unwrap();
        let args = ReportArgs {
            command: ReportCommand::Kcidb(kcidb_args(vec![fa, fb], dir.path())),
        };
        // Test failures are in the JSON, not in the exit code.
        assert_eq!(run_to(args, &mut Vec::new(), false).unwrap(), EXIT_OK);
        let doc = std::fs::read_to_string(dir.path().join("kcidb.json")).unwrap();
        assert_eq!(validate(&doc), Ok("v5.3".to_string()), "{doc}");
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["tests"].as_array().unwrap().len(), 12);
        // The repository is a git tree: the checkout names its commit.
        let commit = v["checkouts"][0]["git_commit_hash"].as_str().unwrap();
        assert_eq!(commit.len(), 40, "{commit}");
        // Every listed output file exists with the crash report.
        let mut listed = 0;
        for t in v["tests"].as_array().unwrap() {
            for f in t["output_files"].as_array().into_iter().flatten() {
                let url = f["url"].as_str().unwrap();
                let path = url.strip_prefix("file://").unwrap().replace("%2B", "+");
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains("vexfs"), "{path}: {text}");
                listed += 1;
            }
        }
        assert_eq!(listed, 6);
    }

    #[test]
    fn kcidb_submits_with_the_token_to_a_local_server() {
        use crate::report::kcidb_facts;
        let dir = tempfile::tempdir().unwrap();
        let (url, server) = one_shot_server("200 OK", "{\"ok\": true}");
        let body = br#"{"version": {"major": 5, "minor": 3}}"#;
        let answer = kcidb_facts::submit(&url, "s3cret-token", body).unwrap();
        assert_eq!(answer, "{\"ok\": true}");
        let (head, data) = server.join().unwrap();
        assert!(head.starts_with("POST /submit HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains("Authorization: Bearer s3cret-token\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Content-Type: application/json\r\n"),
            "{head}"
        );
        assert_eq!(data, body);

        // A refusal carries the server's answer.
        let (url, server) = one_shot_server("403 Forbidden", "bad token");
        let e = kcidb_facts::submit(&url, "wrong", body)
            .unwrap_err()
            .to_string();
        assert!(e.contains("403") && e.contains("bad token"), "{e}");
        server.join().unwrap();

        // No token: refused before any work, naming the variable.
        let mut a = kcidb_args(vec![dir.path().join("missing.json")], dir.path());
        a.submit = Some("http://127.0.0.1:9/".into());
        let e = run_to(
            ReportArgs {
                command: ReportCommand::Kcidb(a),
            },
            &mut Vec::new(),
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("VEXCTL_TEST_KCIDB_TOKEN_UNSET"),
            "{e}"
        );
        let e = kcidb_facts::submit("ftp://x/", "t", body).unwrap_err();
        assert!(e.to_string().contains("http:// or https://"), "{e}");
    }
}
