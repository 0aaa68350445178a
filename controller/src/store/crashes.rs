//! Crashes, their buckets and recovery attempts: what the supervisor records and the
//! reports read back.

use rusqlite::{OptionalExtension, params};

use super::{Bucket, Crash, Error, NewAttempt, NewCrash, RECOVERY_SUMMARY, Result, Store};
use crate::scorecard::{RecoveryRecord, TestRecord};

impl Store {
    /// Records a crash and files it into its bucket, in one transaction. Call this
    /// before any recovery action.
    pub fn record_crash(&mut self, c: &NewCrash) -> Result<i64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO buckets (signature, title, category, first_seen_ms, last_seen_ms, count)
             VALUES (?1, ?2, ?3, ?4, ?4, 1)
             ON CONFLICT (signature) DO UPDATE SET
                 count = count + 1,
                 last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
            params![c.signature, c.title, c.category, c.detected_at_ms],
        )?;
        let bucket_id: i64 = tx.query_row(
            "SELECT id FROM buckets WHERE signature = ?1",
            params![c.signature],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO crashes (run_id, test_id, bucket_id, category, severity, recovery, title,
                 signature, corrupted, kernel, module, test_name, verdict, detected_at_ms,
                 report, console_excerpt, forensics)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                c.run_id,
                c.test_id,
                bucket_id,
                c.category,
                c.severity,
                c.recovery,
                c.title,
                c.signature,
                c.corrupted,
                c.kernel,
                c.module,
                c.test_name,
                c.verdict,
                c.detected_at_ms,
                c.report,
                c.console_excerpt,
                c.forensics
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// Adds forensics collected after the crash row was written.
    pub fn add_forensics(&self, crash_id: i64, text: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE crashes SET forensics = forensics || ?2 WHERE id = ?1",
            params![crash_id, text],
        )?;
        Ok(())
    }

    /// Records one recovery attempt.
    pub fn record_attempt(&self, a: &NewAttempt) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO recovery_attempts (run_id, crash_id, test_id, level, action,
                 started_at_ms, duration_ms, outcome, fate, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                a.run_id,
                a.crash_id,
                a.test_id,
                a.level,
                a.action,
                a.started_at_ms,
                a.duration_ms,
                a.outcome,
                a.fate,
                a.detail
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Recovery attempts of a crash, in order.
    pub fn attempts(&self, crash_id: i64) -> Result<Vec<NewAttempt>> {
        let mut st = self.conn.prepare(
            "SELECT run_id, crash_id, test_id, level, action, started_at_ms, duration_ms,
                    outcome, fate, detail
             FROM recovery_attempts WHERE crash_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![crash_id], |r| {
            Ok(NewAttempt {
                run_id: r.get(0)?,
                crash_id: r.get(1)?,
                test_id: r.get(2)?,
                level: r.get(3)?,
                action: r.get(4)?,
                started_at_ms: r.get(5)?,
                duration_ms: r.get(6)?,
                outcome: r.get(7)?,
                fate: r.get(8)?,
                detail: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    const CRASH_COLUMNS: &'static str = "id, bucket_id, run_id, test_id, category, severity,
        recovery, title, signature, corrupted, kernel, module, test_name, verdict,
        detected_at_ms, report, console_excerpt, forensics, intact";

    fn crash_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Crash> {
        Ok(Crash {
            id: r.get(0)?,
            bucket_id: r.get(1)?,
            intact: r.get(18)?,
            crash: NewCrash {
                run_id: r.get(2)?,
                test_id: r.get(3)?,
                category: r.get(4)?,
                severity: r.get(5)?,
                recovery: r.get(6)?,
                title: r.get(7)?,
                signature: r.get(8)?,
                corrupted: r.get(9)?,
                kernel: r.get(10)?,
                module: r.get(11)?,
                test_name: r.get(12)?,
                verdict: r.get(13)?,
                detected_at_ms: r.get(14)?,
                report: r.get(15)?,
                console_excerpt: r.get(16)?,
                forensics: r.get(17)?,
            },
        })
    }

    /// Crashes, newest first, optionally of one run.
    pub fn crashes(&self, run_id: Option<i64>, limit: i64) -> Result<Vec<Crash>> {
        let sql = format!(
            "SELECT {} FROM crashes WHERE (?1 IS NULL OR run_id = ?1) ORDER BY id DESC LIMIT ?2",
            Self::CRASH_COLUMNS
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![run_id, limit], Self::crash_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// One crash.
    pub fn crash(&self, id: i64) -> Result<Crash> {
        let sql = format!("SELECT {} FROM crashes WHERE id = ?1", Self::CRASH_COLUMNS);
        self.conn
            .query_row(&sql, params![id], Self::crash_row)
            .optional()?
            .ok_or(Error::NotFound { what: "crash", id })
    }

    /// Buckets with the kernels and tests they were seen on, most frequent first.
    pub fn buckets(&self) -> Result<Vec<Bucket>> {
        let mut st = self.conn.prepare(
            "SELECT b.id, b.signature, b.title, b.category, b.first_seen_ms, b.last_seen_ms,
                    b.count,
                    (SELECT group_concat(k, char(10)) FROM
                        (SELECT DISTINCT kernel AS k FROM crashes
                         WHERE bucket_id = b.id AND kernel != '' ORDER BY kernel)),
                    (SELECT group_concat(t, char(10)) FROM
                        (SELECT DISTINCT test_name AS t FROM crashes
                         WHERE bucket_id = b.id AND test_name != '' ORDER BY test_name))
             FROM buckets b ORDER BY b.count DESC, b.id",
        )?;
        let split = |s: Option<String>| -> Vec<String> {
            s.map(|s| s.split('\n').map(str::to_string).collect())
                .unwrap_or_default()
        };
        let rows = st.query_map([], |r| {
            Ok(Bucket {
                id: r.get(0)?,
                signature: r.get(1)?,
                title: r.get(2)?,
                category: r.get(3)?,
                first_seen_ms: r.get(4)?,
                last_seen_ms: r.get(5)?,
                count: r.get(6)?,
                kernels: split(r.get(7)?),
                tests: split(r.get(8)?),
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Reads a crash's report, console excerpt and forensics back and records whether
    /// they are what was written: the data-integrity check, made before the first
    /// recovery action (and again once forensics are added). A crash already found
    /// damaged stays damaged.
    pub fn verify_crash(&self, crash_id: i64, written: &NewCrash) -> Result<bool> {
        let (report, excerpt, forensics): (String, String, String) = self
            .conn
            .query_row(
                "SELECT report, console_excerpt, forensics FROM crashes WHERE id = ?1",
                params![crash_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "crash",
                id: crash_id,
            })?;
        let intact = report == written.report
            && excerpt == written.console_excerpt
            && forensics == written.forensics;
        self.conn.execute(
            "UPDATE crashes SET intact = (coalesce(intact, 1) AND ?2) WHERE id = ?1",
            params![crash_id, intact],
        )?;
        Ok(intact)
    }

    /// Records that a test's `after_restart` checks failed after this crash: data loss.
    /// Unless the test expected it, the crash no longer counts as intact (data
    /// integrity is the share of crashes after which the records read back and these
    /// checks pass).
    pub fn record_data_loss(&self, crash_id: i64, detail: &str, expected: bool) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE crashes SET data_loss = ?2, data_loss_expected = ?3,
                 intact = CASE WHEN ?3 THEN intact ELSE 0 END
             WHERE id = ?1",
            params![crash_id, detail, expected],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "crash",
                id: crash_id,
            });
        }
        Ok(())
    }

    /// The data loss recorded for a crash (its check's output, and whether expected).
    pub fn data_loss(&self, crash_id: i64) -> Result<Option<(String, bool)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT data_loss, data_loss_expected FROM crashes WHERE id = ?1",
                params![crash_id],
                |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, bool>(1)?)),
            )
            .optional()?
            .and_then(|(d, e)| d.map(|d| (d, e))))
    }

    /// Per crash with a finished recovery: its summary row's duration and outcome and
    /// the integrity check (for [`crate::scorecard`]).
    pub fn recovery_records(&self, run_id: Option<i64>) -> Result<Vec<RecoveryRecord>> {
        let mut st = self.conn.prepare(
            "SELECT a.duration_ms, a.outcome = 'succeeded', coalesce(c.intact, 0)
             FROM crashes c JOIN recovery_attempts a ON a.crash_id = c.id AND a.action = ?2
             WHERE (?1 IS NULL OR c.run_id = ?1)
             ORDER BY c.id",
        )?;
        let rows = st.query_map(params![run_id, RECOVERY_SUMMARY], |r| {
            Ok(RecoveryRecord {
                duration_ms: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                succeeded: r.get(1)?,
                intact: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Every test of a run (or of all runs) in the order they were scheduled, with
    /// whether it crashed (for [`crate::scorecard`]).
    pub fn test_records(&self, run_id: Option<i64>) -> Result<Vec<TestRecord>> {
        let mut st = self.conn.prepare(
            "SELECT t.run_id, t.kernel, t.status,
                    EXISTS (SELECT 1 FROM crashes c WHERE c.test_id = t.id)
             FROM tests t WHERE (?1 IS NULL OR t.run_id = ?1) ORDER BY t.id",
        )?;
        let rows = st.query_map(params![run_id], |r| {
            let run: i64 = r.get(0)?;
            let kernel: String = r.get(1)?;
            let status: String = r.get(2)?;
            Ok(TestRecord {
                group: format!("{run}/{kernel}"),
                verdict: !matches!(status.as_str(), "error" | "pending" | "running"),
                crashed: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Crash and bucket counts (of one run, or all).
    pub fn crash_counts(&self, run_id: Option<i64>) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT count(*), count(DISTINCT bucket_id) FROM crashes
             WHERE (?1 IS NULL OR run_id = ?1)",
            params![run_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// The recovery metrics of one run, or of the whole database.
    pub fn stats(&self, run_id: Option<i64>) -> Result<crate::scorecard::Stats> {
        let (crashes, buckets) = self.crash_counts(run_id)?;
        Ok(crate::scorecard::score(
            crashes,
            buckets,
            &self.recovery_records(run_id)?,
            &self.test_records(run_id)?,
        ))
    }
}
