//! The crash database: SQLite in WAL mode, versioned migrations, and every SQL statement
//! of the project. A crash is committed before any recovery starts, so a controller
//! killed at any moment loses nothing it had seen.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

mod crashes;
mod rows;
mod schema;

pub use rows::{Bucket, Crash, NewAttempt, NewCrash, TestRow};
use schema::MIGRATIONS;

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
    pub fn begin_resumable_run(
        &self,
        plan: &str,
        config_json: &str,
        checkpoint_json: &str,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO runs (started_at_ms, plan, config_json, checkpoint_json) \
             VALUES (?1, ?2, ?3, ?4)",
            params![now_ms(), plan, config_json, checkpoint_json],
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(sig: &str, kernel: &str, test: &str, at: i64) -> NewCrash {
        NewCrash {
            category: crate::classify::Category::ModuleCrash,
            severity: crate::classify::Severity::Moderate,
            recovery: crate::classify::Recovery::ModuleReload,
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
            .begin_resumable_run("plan", r#"{"jobs":1}"#, r#"{"plan_text":"x"}"#)
            .unwrap();
        let (status, checkpoint) = s.run_checkpoint(run).unwrap();
        assert_eq!(checkpoint, r#"{"plan_text":"x"}"#);
        assert_eq!(status, "running");
    }

    #[test]
    fn stats_come_from_the_summary_rows_and_the_integrity_check() {
        let mut s = Store::open_in_memory().unwrap();
        let run = s.begin_run("plan", "{}").unwrap();
        for (ok, ms) in [(true, 1000), (true, 3000), (false, 20000)] {
            let mut c = crash("x", "6.12", "t", 100);
            c.run_id = Some(run);
            let id = s.record_crash(&c).unwrap();
            assert!(s.verify_crash(id, &c).unwrap());
            s.record_attempt(&NewAttempt {
                run_id: Some(run),
                crash_id: Some(id),
                level: 1,
                action: RECOVERY_SUMMARY.into(),
                started_at_ms: 200,
                duration_ms: ms,
                outcome: if ok { "succeeded" } else { "failed" }.into(),
                ..Default::default()
            })
            .unwrap();
        }
        let st = s.stats(Some(run)).unwrap();
        assert_eq!((st.crashes, st.recoveries, st.recovered), (3, 3, 2));
        assert_eq!(st.mean_recovery_ms, 8000.0);
        assert_eq!(st.p95_recovery_ms, 20000.0);
        assert_eq!(st.data_integrity, 1.0);
    }

    #[test]
    fn a_crash_row_that_reads_back_damaged_fails_data_integrity() {
        let mut s = Store::open_in_memory().unwrap();
        // Something between the write and the read (a bad disk, a buggy writer) cuts
        // reports short; the check must notice.
        s.conn
            .execute_batch(
                "CREATE TRIGGER damage AFTER INSERT ON crashes
                 BEGIN UPDATE crashes SET report = substr(report, 1, 4) WHERE id = new.id; END;",
            )
            .unwrap();
        let c = crash("x", "6.12", "t", 100);
        let id = s.record_crash(&c).unwrap();
        assert!(!s.verify_crash(id, &c).unwrap());
        s.record_attempt(&NewAttempt {
            crash_id: Some(id),
            level: 1,
            action: RECOVERY_SUMMARY.into(),
            outcome: "succeeded".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.crash(id).unwrap().intact, Some(false));
        assert_eq!(s.stats(None).unwrap().data_integrity, 0.0);
        // A later check that passes does not make it whole again.
        let mut cut = c.clone();
        cut.report.truncate(4);
        assert!(s.verify_crash(id, &cut).unwrap());
        assert_eq!(s.crash(id).unwrap().intact, Some(false));
    }

    #[test]
    fn data_loss_after_a_crash_fails_data_integrity_unless_expected() {
        let mut s = Store::open_in_memory().unwrap();
        let mut ids = Vec::new();
        for t in ["lost", "caught"] {
            let c = crash("x", "6.12", t, 100);
            let id = s.record_crash(&c).unwrap();
            assert!(s.verify_crash(id, &c).unwrap());
            s.record_attempt(&NewAttempt {
                crash_id: Some(id),
                level: 2,
                action: RECOVERY_SUMMARY.into(),
                outcome: "succeeded".into(),
                ..Default::default()
            })
            .unwrap();
            ids.push(id);
        }
        assert_eq!(s.stats(None).unwrap().data_integrity, 1.0);
        assert_eq!(s.data_loss(ids[0]).unwrap(), None);
        s.record_data_loss(ids[0], "cat /mnt/d/f: No such file", false)
            .unwrap();
        s.record_data_loss(ids[1], "fsck.vexfs: bad inode", true)
            .unwrap();
        assert_eq!(
            s.data_loss(ids[0]).unwrap(),
            Some(("cat /mnt/d/f: No such file".into(), false))
        );
        assert_eq!(s.crash(ids[0]).unwrap().intact, Some(false));
        assert_eq!(s.crash(ids[1]).unwrap().intact, Some(true));
        assert_eq!(s.stats(None).unwrap().data_integrity, 0.5);
        assert!(s.record_data_loss(999, "x", false).is_err());
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
