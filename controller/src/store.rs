//! The crash database: SQLite in WAL mode, versioned migrations, and every SQL statement
//! of the project. A crash is committed before any recovery starts, so a controller
//! killed at any moment loses nothing it had seen.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Errors of the crash database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed (disk full, corrupt file, locked, ...).
    #[error("crash database: {}", sqlite_reason(.0))]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer vexctl.
    #[error("crash database schema version {found} is newer than this vexctl knows ({known})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version known here.
        known: i64,
    },
    /// The database directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A row that should exist does not.
    #[error("no {what} with id {id}")]
    NotFound {
        /// Kind of row.
        what: &'static str,
        /// Its id.
        id: i64,
    },
}

/// Action name of the one attempt row per crash that sums up its whole recovery: its
/// outcome and duration are what the recovery metrics count.
pub const RECOVERY_SUMMARY: &str = "recovery";

/// Result alias for the store.
pub type Result<T> = std::result::Result<T, Error>;

/// Schema migrations, in order; index + 1 is the schema version after applying.
const MIGRATIONS: &[&str] = &[
    // 1: runs, tests, crashes with buckets, recovery attempts, resource samples.
    "
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        plan TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'running',
        config_json TEXT NOT NULL DEFAULT '{}',
        checkpoint_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE tests (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        kernel TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        started_at_ms INTEGER,
        finished_at_ms INTEGER,
        message TEXT NOT NULL DEFAULT '',
        UNIQUE (run_id, kernel, name)
    );
    CREATE TABLE buckets (
        id INTEGER PRIMARY KEY,
        signature TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        category TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        count INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE crashes (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        test_id INTEGER REFERENCES tests(id),
        bucket_id INTEGER NOT NULL REFERENCES buckets(id),
        category TEXT NOT NULL,
        severity TEXT NOT NULL,
        recovery TEXT NOT NULL,
        title TEXT NOT NULL,
        signature TEXT NOT NULL,
        corrupted INTEGER NOT NULL DEFAULT 0,
        kernel TEXT NOT NULL DEFAULT '',
        module TEXT NOT NULL DEFAULT '',
        test_name TEXT NOT NULL DEFAULT '',
        verdict TEXT NOT NULL DEFAULT '',
        detected_at_ms INTEGER NOT NULL,
        report TEXT NOT NULL DEFAULT '',
        console_excerpt TEXT NOT NULL DEFAULT '',
        forensics TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX crashes_run ON crashes(run_id);
    CREATE INDEX crashes_bucket ON crashes(bucket_id);
    CREATE TABLE recovery_attempts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        crash_id INTEGER REFERENCES crashes(id),
        test_id INTEGER REFERENCES tests(id),
        level INTEGER NOT NULL,
        action TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        fate TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX recovery_crash ON recovery_attempts(crash_id);
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        test_id INTEGER REFERENCES tests(id),
        kernel TEXT NOT NULL DEFAULT '',
        taken_at_ms INTEGER NOT NULL,
        guest_ts_us INTEGER NOT NULL DEFAULT 0,
        counters_json TEXT NOT NULL
    );
    CREATE INDEX samples_run ON samples(run_id);
    ",
];

/// A crash to record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewCrash {
    /// Run it happened in, if any.
    pub run_id: Option<i64>,
    /// Test it happened in, if any.
    pub test_id: Option<i64>,
    /// Category (snake_case name).
    pub category: String,
    /// Severity name.
    pub severity: String,
    /// Recovery the crash type calls for.
    pub recovery: String,
    /// One-line title.
    pub title: String,
    /// Deduplication signature (the bucket key).
    pub signature: String,
    /// The report could not be titled reliably.
    pub corrupted: bool,
    /// Guest kernel release.
    pub kernel: String,
    /// Guilty module, if known.
    pub module: String,
    /// Test name, denormalised for listing.
    pub test_name: String,
    /// The supervisor's verdict that led here.
    pub verdict: String,
    /// When it was detected (ms since the epoch).
    pub detected_at_ms: i64,
    /// The report text.
    pub report: String,
    /// Console lines around the crash.
    pub console_excerpt: String,
    /// Forensics (sysrq output, hung-task stacks).
    pub forensics: String,
}

/// A recorded crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crash {
    /// Row id.
    pub id: i64,
    /// Bucket id.
    pub bucket_id: i64,
    /// The recorded fields.
    #[serde(flatten)]
    pub crash: NewCrash,
}

/// A group of crashes with one signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Row id.
    pub id: i64,
    /// The signature.
    pub signature: String,
    /// Title of the first crash.
    pub title: String,
    /// Category.
    pub category: String,
    /// First and last time seen (ms since the epoch).
    pub first_seen_ms: i64,
    /// Last time seen.
    pub last_seen_ms: i64,
    /// Number of crashes.
    pub count: i64,
    /// Kernels the bucket was seen on.
    pub kernels: Vec<String>,
    /// Tests the bucket was seen in.
    pub tests: Vec<String>,
}

/// One recovery attempt to record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewAttempt {
    /// Run id.
    pub run_id: Option<i64>,
    /// The crash being recovered from.
    pub crash_id: Option<i64>,
    /// The test it belongs to.
    pub test_id: Option<i64>,
    /// Ladder level: 1 graceful, 2 system reset, 3 test isolation.
    pub level: i64,
    /// What was done (unload, reload, system_reset, relaunch, isolate, ...).
    pub action: String,
    /// Start time (ms since the epoch).
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// succeeded / failed.
    pub outcome: String,
    /// The test's fate decided by it (continue, skip, restart_required, abort).
    pub fate: String,
    /// Free-form detail.
    pub detail: String,
}

/// A test of a run: (id, kernel, name, status, attempts).
pub type TestRow = (i64, String, String, String, i64);

/// Recovery metrics against the design's targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Crashes recorded.
    pub crashes: i64,
    /// Distinct buckets.
    pub buckets: i64,
    /// Crashes that had at least one recovery attempt.
    pub recoveries: i64,
    /// Of those, how many ended with a successful attempt.
    pub recovered: i64,
    /// recovered / recoveries (1.0 when there were none).
    pub recovery_success_rate: f64,
    /// Mean total recovery time per crash, ms.
    pub mean_recovery_ms: f64,
    /// 95th percentile of total recovery time per crash, ms.
    pub p95_recovery_ms: f64,
    /// Crashes whose row was written before their first recovery action (data
    /// integrity), as a fraction.
    pub data_integrity: f64,
    /// Tests that finished (passed, failed or crashed-and-recorded) after a recovery in
    /// their run, as a fraction of tests scheduled after a recovery.
    pub test_continuity: f64,
}

/// SQLite's text for a full disk says "database or disk is full" twice and not what
/// to do; everything else is clear enough as it is.
fn sqlite_reason(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => "the disk is full (SQLITE_FULL), nothing more \
            can be recorded: free space, then `vexctl run --resume RUN` picks up where the \
            run stopped"
            .into(),
        _ => e.to_string(),
    }
}

/// The crash database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// The default crash database: `$XDG_DATA_HOME/vexfs/crashes.db` (else
/// `~/.local/share/vexfs/crashes.db`).
pub fn default_path() -> std::path::PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    data.join("vexfs").join("crashes.db")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long a connection waits for another's lock before it reports the file busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Puts the file in WAL mode. WAL is a property of the file, so once one connection has
/// switched it the others only read it back. The switch needs the file to itself, and
/// SQLite answers SQLITE_BUSY at once there without calling the busy handler, so
/// connections opening a new file together retry it here within the same timeout.
fn set_wal(conn: &Connection) -> Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        Self::setup(Connection::open(path)?)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self> {
        // Several connections share the file (each kernel task of a run, two
        // controllers): wait for their locks, from the very first statement on.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers (vexctl crashes) never block the supervisor's writes, and a
        // killed writer loses no committed row.
        set_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let version = self.schema_version()?;
        if version == known {
            return Ok(());
        }
        // Take the write lock before looking again: of connections opening a new file
        // together, one migrates and the others then find the schema done.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > known {
            return Err(Error::TooNew {
                found: version,
                known,
            });
        }
        for sql in MIGRATIONS.iter().skip(version as usize) {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", known)?;
        tx.commit()?;
        Ok(())
    }

    /// Schema version in the file.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Starts a run and returns its id.
    pub fn begin_run(&self, plan: &str, config_json: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO runs (started_at_ms, plan, config_json) VALUES (?1, ?2, ?3)",
            params![now_ms(), plan, config_json],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Starts a run with its first checkpoint in the same statement, so a controller
    /// killed at any point leaves either no run or a resumable one.
    pub fn begin_resumable_run(&self, plan: &str, checkpoint_json: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO runs (started_at_ms, plan, config_json, checkpoint_json) \
             VALUES (?1, ?2, '{}', ?3)",
            params![now_ms(), plan, checkpoint_json],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Saves a run's checkpoint (opaque JSON the runner resumes from).
    pub fn checkpoint(&self, run_id: i64, checkpoint_json: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE runs SET checkpoint_json = ?2 WHERE id = ?1",
            params![run_id, checkpoint_json],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "run",
                id: run_id,
            });
        }
        Ok(())
    }

    /// A run's checkpoint and status.
    pub fn run_checkpoint(&self, run_id: i64) -> Result<(String, String)> {
        self.conn
            .query_row(
                "SELECT status, checkpoint_json FROM runs WHERE id = ?1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "run",
                id: run_id,
            })
    }

    /// Marks a run finished with a status.
    pub fn finish_run(&self, run_id: i64, status: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET status = ?2, finished_at_ms = ?3 WHERE id = ?1",
            params![run_id, status, now_ms()],
        )?;
        Ok(())
    }

    /// Creates (or finds) a test row of a run and returns its id.
    pub fn test_id(&self, run_id: i64, kernel: &str, name: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT OR IGNORE INTO tests (run_id, kernel, name) VALUES (?1, ?2, ?3)",
            params![run_id, kernel, name],
        )?;
        Ok(self.conn.query_row(
            "SELECT id FROM tests WHERE run_id = ?1 AND kernel = ?2 AND name = ?3",
            params![run_id, kernel, name],
            |r| r.get(0),
        )?)
    }

    /// Updates a test's status (pending, running, passed, failed, crashed, skipped).
    pub fn set_test_status(&self, test_id: i64, status: &str, message: &str) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "UPDATE tests SET status = ?2, message = ?3,
                 attempts = attempts + (?2 = 'running'),
                 started_at_ms = CASE WHEN ?2 = 'running' THEN ?4 ELSE started_at_ms END,
                 finished_at_ms = CASE WHEN ?2 = 'running' THEN NULL ELSE ?4 END
             WHERE id = ?1",
            params![test_id, status, message, now],
        )?;
        Ok(())
    }

    /// Tests of a run, in creation order.
    pub fn tests(&self, run_id: i64) -> Result<Vec<TestRow>> {
        let mut st = self.conn.prepare(
            "SELECT id, kernel, name, status, attempts FROM tests WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map(params![run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

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

    /// Records a resource sample (the agent's counters as JSON).
    pub fn record_sample(
        &self,
        run_id: Option<i64>,
        test_id: Option<i64>,
        kernel: &str,
        guest_ts_us: u64,
        counters_json: &str,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO samples (run_id, test_id, kernel, taken_at_ms, guest_ts_us, counters_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run_id,
                test_id,
                kernel,
                now_ms(),
                i64::try_from(guest_ts_us).unwrap_or(i64::MAX),
                counters_json
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    const CRASH_COLUMNS: &'static str = "id, bucket_id, run_id, test_id, category, severity,
        recovery, title, signature, corrupted, kernel, module, test_name, verdict,
        detected_at_ms, report, console_excerpt, forensics";

    fn crash_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Crash> {
        Ok(Crash {
            id: r.get(0)?,
            bucket_id: r.get(1)?,
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

    /// Recovery metrics over all crashes (or one run's).
    pub fn stats(&self, run_id: Option<i64>) -> Result<Stats> {
        let mut s = Stats {
            crashes: self.conn.query_row(
                "SELECT count(*) FROM crashes WHERE (?1 IS NULL OR run_id = ?1)",
                params![run_id],
                |r| r.get(0),
            )?,
            buckets: self.conn.query_row(
                "SELECT count(DISTINCT bucket_id) FROM crashes WHERE (?1 IS NULL OR run_id = ?1)",
                params![run_id],
                |r| r.get(0),
            )?,
            ..Default::default()
        };
        // Per crash: its summary row's duration and outcome, and whether the crash was
        // detected before the first recovery action started.
        let mut st = self.conn.prepare(
            "SELECT c.detected_at_ms, min(a.started_at_ms),
                    sum(CASE WHEN a.action = ?2 THEN a.duration_ms ELSE 0 END),
                    max(CASE WHEN a.action = ?2 AND a.outcome = 'succeeded' THEN 1 ELSE 0 END)
             FROM crashes c JOIN recovery_attempts a ON a.crash_id = c.id
             WHERE (?1 IS NULL OR c.run_id = ?1)
             GROUP BY c.id
             HAVING sum(a.action = ?2) > 0",
        )?;
        let rows: Vec<(i64, i64, i64, i64)> = st
            .query_map(params![run_id, RECOVERY_SUMMARY], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<std::result::Result<_, _>>()?;
        s.recoveries = rows.len() as i64;
        s.recovered = rows.iter().filter(|r| r.3 == 1).count() as i64;
        s.recovery_success_rate = ratio(s.recovered, s.recoveries);
        let mut times: Vec<i64> = rows.iter().map(|r| r.2).collect();
        times.sort_unstable();
        if !times.is_empty() {
            s.mean_recovery_ms = times.iter().sum::<i64>() as f64 / times.len() as f64;
            let idx = ((times.len() as f64) * 0.95).ceil() as usize;
            s.p95_recovery_ms = times[idx.clamp(1, times.len()) - 1] as f64;
        }
        let intact = rows.iter().filter(|r| r.0 <= r.1).count() as i64;
        s.data_integrity = ratio(intact, s.recoveries);
        // Continuity: of tests that started after the first recovery of their run, how
        // many reached a final state.
        let (after, finished): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(t.status IN ('passed', 'failed', 'crashed', 'skipped')), 0)
             FROM tests t
             WHERE (?1 IS NULL OR t.run_id = ?1)
               AND t.started_at_ms >= (SELECT min(a.started_at_ms) FROM recovery_attempts a
                                       WHERE a.run_id = t.run_id)",
            params![run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        s.test_continuity = ratio(finished, after);
        Ok(s)
    }
}

fn ratio(a: i64, b: i64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(sig: &str, kernel: &str, test: &str, at: i64) -> NewCrash {
        NewCrash {
            category: "module_crash".into(),
            severity: "moderate".into(),
            recovery: "module_reload".into(),
            title: format!("title of {sig}"),
            signature: sig.into(),
            kernel: kernel.into(),
            test_name: test.into(),
            detected_at_ms: at,
            report: "BUG: kernel NULL pointer dereference".into(),
            ..Default::default()
        }
    }

    #[test]
    fn concurrent_writers_on_one_new_file_all_succeed() {
        // Kernel tasks of one run, or two controllers (shards, a resume), open the same
        // file at once, the first time too: every open and every row must succeed.
        const WRITERS: usize = 8;
        const ROWS: usize = 20;
        for round in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("crashes.db");
            let start = std::sync::Arc::new(std::sync::Barrier::new(WRITERS));
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (db, start) = (db.clone(), start.clone());
                    std::thread::spawn(move || -> Result<()> {
                        start.wait();
                        let mut s = Store::open(&db)?;
                        let run = s.begin_run("concurrent", "{}")?;
                        for i in 0..ROWS {
                            let mut c = crash(&format!("sig{}", i % 3), "6.12", "t", 1);
                            c.run_id = Some(run);
                            c.test_name = format!("w{w}-{i}");
                            s.record_crash(&c)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for (w, h) in writers.into_iter().enumerate() {
                if let Err(e) = h.join().unwrap() {
                    panic!("round {round}, writer {w}: {e}");
                }
            }
            let s = Store::open(&db).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
            assert_eq!(s.stats(None).unwrap().crashes, (WRITERS * ROWS) as i64);
            let bucketed: i64 = s.buckets().unwrap().iter().map(|b| b.count).sum();
            assert_eq!(bucketed, (WRITERS * ROWS) as i64);
        }
    }

    #[test]
    fn crashes_are_bucketed_by_signature() {
        let mut s = Store::open_in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.record_crash(&crash("a", "6.12", "t1", 10)).unwrap();
        s.record_crash(&crash("a", "6.1", "t2", 20)).unwrap();
        let c = s.record_crash(&crash("b", "6.12", "t1", 30)).unwrap();
        let b = s.buckets().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].signature.as_str(), b[0].count), ("a", 2));
        assert_eq!((b[0].first_seen_ms, b[0].last_seen_ms), (10, 20));
        assert_eq!(b[0].kernels, ["6.1", "6.12"]);
        assert_eq!(b[0].tests, ["t1", "t2"]);
        assert_eq!(s.crash(c).unwrap().crash.signature, "b");
        assert!(matches!(s.crash(999), Err(Error::NotFound { .. })));
        assert_eq!(s.crashes(None, 10).unwrap().len(), 3);
    }

    #[test]
    fn a_resumable_run_has_its_checkpoint_from_the_start() {
        let s = Store::open_in_memory().unwrap();
        let run = s
            .begin_resumable_run("plan", r#"{"plan_text":"x"}"#)
            .unwrap();
        let (status, checkpoint) = s.run_checkpoint(run).unwrap();
        assert_eq!(checkpoint, r#"{"plan_text":"x"}"#);
        assert_eq!(status, "running");
    }

    #[test]
    fn stats_against_targets() {
        let mut s = Store::open_in_memory().unwrap();
        let run = s.begin_run("plan", "{}").unwrap();
        for (i, (ok, ms)) in [(true, 1000), (true, 3000), (false, 20000)]
            .iter()
            .enumerate()
        {
            let mut c = crash("x", "6.12", "t", 100);
            c.run_id = Some(run);
            let id = s.record_crash(&c).unwrap();
            s.record_attempt(&NewAttempt {
                run_id: Some(run),
                crash_id: Some(id),
                level: 1 + i as i64,
                action: RECOVERY_SUMMARY.into(),
                started_at_ms: 200,
                duration_ms: *ms,
                outcome: if *ok { "succeeded" } else { "failed" }.into(),
                ..Default::default()
            })
            .unwrap();
        }
        let st = s.stats(Some(run)).unwrap();
        assert_eq!((st.crashes, st.recoveries, st.recovered), (3, 3, 2));
        assert!((st.recovery_success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(st.mean_recovery_ms, 8000.0);
        assert_eq!(st.p95_recovery_ms, 20000.0);
        assert_eq!(st.data_integrity, 1.0);
    }

    #[test]
    fn survives_reopen_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/crashes.db");
        {
            let mut s = Store::open(&path).unwrap();
            let run = s.begin_run("p", "{}").unwrap();
            s.checkpoint(run, r#"{"next":3}"#).unwrap();
            s.record_crash(&crash("a", "k", "t", 1)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.crashes(None, 10).unwrap().len(), 1);
        assert_eq!(s.run_checkpoint(1).unwrap().1, r#"{"next":3}"#);
        s.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(Error::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn tests_track_status_and_attempts() {
        let s = Store::open_in_memory().unwrap();
        let run = s.begin_run("p", "{}").unwrap();
        let t = s.test_id(run, "6.12", "mount").unwrap();
        assert_eq!(s.test_id(run, "6.12", "mount").unwrap(), t);
        s.set_test_status(t, "running", "").unwrap();
        s.set_test_status(t, "running", "").unwrap();
        s.set_test_status(t, "passed", "ok").unwrap();
        let rows = s.tests(run).unwrap();
        assert_eq!(rows[0].3, "passed");
        assert_eq!(rows[0].4, 2);
    }
}
