//! The crash database's schema: versioned migrations, applied in order.

/// Schema migrations, in order; index + 1 is the schema version after applying.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 2: whether a crash's texts read back intact (data integrity); the samples table
    // was never written and is gone.
    "
    ALTER TABLE crashes ADD COLUMN intact INTEGER;
    DROP TABLE samples;
    ",
    // 3: data loss: what a test's after_restart checks said when they failed after the
    // crash, and whether the test expected it (a deliberately torn write caught).
    "
    ALTER TABLE crashes ADD COLUMN data_loss TEXT;
    ALTER TABLE crashes ADD COLUMN data_loss_expected INTEGER NOT NULL DEFAULT 0;
    ",
];
