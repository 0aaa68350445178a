//! The recovery metrics, each defined once: recovery success rate, mean and p95
//! recovery time, data integrity and test continuity. Plain functions over records
//! that both the crash database (`vexctl crashes stats`) and run results (`vexctl
//! run`, `report merge`, JSON, HTML) produce, so one name always means one number.

use serde::{Deserialize, Serialize};

use crate::results::KernelResults;

/// One crash whose recovery finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryRecord {
    /// Total recovery time.
    pub duration_ms: u64,
    /// The run could go on afterwards.
    pub succeeded: bool,
    /// Its report, console excerpt and forensics read back from the database as written,
    /// and the test's `after_restart` checks passed after it (or caught the damage the
    /// test made on purpose).
    pub intact: bool,
}

/// One scheduled test, in schedule order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// The sequence the test ran in (a run's kernel): continuity is judged within it.
    pub group: String,
    /// The test reached a verdict (passed, failed, crashed, skipped): the harness did
    /// its job for it. An error or a test never run has none.
    pub verdict: bool,
    /// The test crashed (recovery ran during it).
    pub crashed: bool,
}

/// Recovery metrics against the design's targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Crashes recorded.
    pub crashes: i64,
    /// Distinct buckets.
    pub buckets: i64,
    /// Crashes whose recovery finished.
    pub recoveries: i64,
    /// Of those, how many let the run go on.
    pub recovered: i64,
    /// recovered / recoveries (1.0 when there were none).
    pub recovery_success_rate: f64,
    /// Mean total recovery time per crash, ms.
    pub mean_recovery_ms: f64,
    /// 95th percentile (nearest rank) of total recovery time per crash, ms.
    pub p95_recovery_ms: f64,
    /// Of the recovered-from crashes, the share after which the data survived: the
    /// crash's report, console excerpt and forensics read back from the database intact
    /// before recovery acted on them, and the test's `after_restart` checks (fsck,
    /// read back what was synced) passed in the restarted guest.
    pub data_integrity: f64,
    /// Of the tests scheduled after a crash in their sequence, the share that still
    /// reached a verdict (1.0 when no test followed a crash).
    pub test_continuity: f64,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The metrics from their records.
pub fn score(
    crashes: u64,
    buckets: u64,
    recoveries: &[RecoveryRecord],
    tests: &[TestRecord],
) -> Stats {
    let recovered = recoveries.iter().filter(|r| r.succeeded).count();
    let intact = recoveries.iter().filter(|r| r.intact).count();
    let mut times: Vec<u64> = recoveries.iter().map(|r| r.duration_ms).collect();
    times.sort_unstable();
    let (mean, p95) = if times.is_empty() {
        (0.0, 0.0)
    } else {
        let mean = times.iter().sum::<u64>() as f64 / times.len() as f64;
        let rank = ((times.len() as f64) * 0.95).ceil() as usize;
        (mean, times[rank.clamp(1, times.len()) - 1] as f64)
    };
    let (mut after, mut reached) = (0, 0);
    let mut crashed_groups: Vec<&str> = Vec::new();
    for t in tests {
        if crashed_groups.contains(&t.group.as_str()) {
            after += 1;
            reached += usize::from(t.verdict);
        }
        if t.crashed && !crashed_groups.contains(&t.group.as_str()) {
            crashed_groups.push(&t.group);
        }
    }
    Stats {
        crashes: i64::try_from(crashes).unwrap_or(i64::MAX),
        buckets: i64::try_from(buckets).unwrap_or(i64::MAX),
        recoveries: recoveries.len() as i64,
        recovered: recovered as i64,
        recovery_success_rate: ratio(recovered, recoveries.len()),
        mean_recovery_ms: mean,
        p95_recovery_ms: p95,
        data_integrity: ratio(intact, recoveries.len()),
        test_continuity: ratio(reached, after),
    }
}

/// The records of run results (one run, or shards merged).
pub fn records(kernels: &[KernelResults]) -> (Vec<RecoveryRecord>, Vec<TestRecord>) {
    let mut recoveries = Vec::new();
    let mut tests = Vec::new();
    for k in kernels {
        for t in &k.tests {
            for c in t.crashes.iter().filter(|c| c.handled()) {
                recoveries.push(RecoveryRecord {
                    duration_ms: c.recovery_ms,
                    succeeded: c.recovered,
                    intact: c.intact,
                });
            }
            tests.push(TestRecord {
                group: k.kernel.clone(),
                verdict: t.status.reached_verdict(),
                crashed: !t.crashes.is_empty(),
            });
        }
    }
    (recoveries, tests)
}

/// The metrics of run results: crash and bucket counts as given (buckets span runs).
pub fn of_results(kernels: &[KernelResults], crashes: u64, buckets: u64) -> Stats {
    let (recoveries, tests) = records(kernels);
    score(crashes, buckets, &recoveries, &tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ms: u64, ok: bool, intact: bool) -> RecoveryRecord {
        RecoveryRecord {
            duration_ms: ms,
            succeeded: ok,
            intact,
        }
    }

    fn test(group: &str, verdict: bool, crashed: bool) -> TestRecord {
        TestRecord {
            group: group.into(),
            verdict,
            crashed,
        }
    }

    #[test]
    fn recovery_rate_and_times() {
        let s = score(
            3,
            1,
            &[
                rec(1000, true, true),
                rec(3000, true, true),
                rec(20000, false, true),
            ],
            &[],
        );
        assert_eq!((s.recoveries, s.recovered), (3, 2));
        assert!((s.recovery_success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.mean_recovery_ms, 8000.0);
        assert_eq!(s.p95_recovery_ms, 20000.0);
        assert_eq!(s.data_integrity, 1.0);
    }

    #[test]
    fn nothing_to_recover_is_perfect_not_undefined() {
        let s = score(0, 0, &[], &[test("k", true, false)]);
        assert_eq!(s.recovery_success_rate, 1.0);
        assert_eq!(s.data_integrity, 1.0);
        assert_eq!(s.test_continuity, 1.0);
        assert_eq!(s.mean_recovery_ms, 0.0);
    }

    #[test]
    fn a_damaged_crash_record_lowers_integrity() {
        let s = score(2, 2, &[rec(1, true, true), rec(1, true, false)], &[]);
        assert_eq!(s.data_integrity, 0.5);
    }

    #[test]
    fn continuity_counts_tests_after_the_first_crash_of_their_sequence() {
        let tests = [
            test("a", true, false),  // before any crash: not counted
            test("a", true, true),   // the crash itself: not counted
            test("a", false, false), // after: no verdict
            test("a", true, false),  // after: verdict
            test("b", false, false), // another kernel, no crash there: not counted
        ];
        let s = score(1, 1, &[rec(1, true, true)], &tests);
        assert_eq!(s.test_continuity, 0.5);
    }
}
