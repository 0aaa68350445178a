//! Crash consistency: after a level-2 restart inside a test, the test's `after_restart`
//! checks (the filesystem's fsck, mount, read back what was synced) run in the new
//! guest before the test goes on. A failed check is data loss: recorded on the crash,
//! shown in every report, and counted against data integrity unless the test expected
//! it (it tears a write on purpose and the checks caught that).

use std::time::Instant;

use super::steps::{Steps, StepsEnd};
use crate::client::AgentClient;
use crate::guest::ModuleSpec;
use crate::plan::{Plan, Test};
use crate::results::{DataLoss, StepRecord, TestResult, TestStatus};
use crate::store::Store;

/// What the checks after one restart found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Checked {
    /// No checks, or all passed.
    Passed,
    /// A check failed: data loss (expected or not).
    Lost(DataLoss),
}

/// Runs `plan.after_restart(test)` in the restarted guest; the step records go to the
/// test's timeline with an `after_restart` prefix.
pub(super) async fn run_checks(
    client: AgentClient,
    module: ModuleSpec,
    plan: &Plan,
    test: &Test,
    deadline: Instant,
    attempt: u32,
    records: &mut Vec<StepRecord>,
) -> Checked {
    let checks = plan.after_restart(test);
    if checks.is_empty() {
        return Checked::Passed;
    }
    let as_test = Test {
        steps: checks.to_vec(),
        expect_crash: None,
        ..test.clone()
    };
    let mut steps = Steps::new(
        client,
        module,
        plan.module.trigger_path(),
        &as_test,
        deadline,
    );
    steps.attempt = attempt;
    let end = steps.run_from(0).await;
    records.extend(steps.records.into_iter().map(|mut r| {
        r.step = format!("after_restart: {}", r.step);
        r
    }));
    match end {
        StepsEnd::Done => Checked::Passed,
        StepsEnd::Failed(detail) => Checked::Lost(DataLoss {
            detail,
            expected: test.expect_data_loss,
        }),
        StepsEnd::Leak(_) => Checked::Lost(DataLoss {
            detail: "after_restart checks reported a leak".into(),
            expected: test.expect_data_loss,
        }),
    }
}

/// Applies what the checks found to the test's last crash (its summary and database
/// row) and the test: unexpected data loss fails the test; whether the test goes on is
/// returned.
pub(super) fn apply(
    checked: Checked,
    store: &Store,
    result: &mut TestResult,
    caught: &mut bool,
) -> bool {
    let Checked::Lost(loss) = checked else {
        return true;
    };
    let Some(crash) = result.crashes.last_mut() else {
        return true;
    };
    if let Err(e) = store.record_data_loss(crash.id, &loss.detail, loss.expected) {
        tracing::warn!("recording data loss of crash {}: {e}", crash.id);
    }
    let go_on = loss.expected;
    if !loss.expected {
        crash.intact = false;
    }
    let detail = loss.detail.clone();
    crash.data_loss = Some(loss);
    if go_on {
        *caught = true;
    } else {
        result.status = TestStatus::Failed;
        result.message = format!("data loss after the restart: {detail}");
    }
    go_on
}

/// The verdict on a test that expects data loss once its steps are done: failed when
/// no check caught it.
pub(super) fn expected_loss_missed(test: &Test, caught: bool) -> Option<String> {
    (test.expect_data_loss && !caught)
        .then(|| "expected data loss was not caught by the after_restart checks".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Category, Severity};
    use crate::results::CrashSummary;

    fn crash(id: i64) -> CrashSummary {
        CrashSummary {
            id,
            category: Category::KernelPanic,
            severity: Severity::Critical,
            title: "Kernel panic".into(),
            expected: true,
            recovery_level: 2,
            fate: None,
            recovery_ms: 1,
            recovered: true,
            intact: true,
            report: String::new(),
            data_loss: None,
        }
    }

    #[test]
    fn unexpected_loss_fails_the_test_and_integrity_expected_loss_is_caught() {
        let plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "d").unwrap();
        let store = Store::open_in_memory().unwrap();
        let fresh = || {
            let mut r = super::super::session::error_result(&plan.tests[0], "");
            r.status = TestStatus::Passed;
            r.crashes.push(crash(0));
            r
        };
        let mut result = fresh();
        let mut caught = false;
        assert!(apply(Checked::Passed, &store, &mut result, &mut caught));
        assert_eq!(
            (result.crashes[0].intact, result.status, caught),
            (true, TestStatus::Passed, false)
        );
        let lost = Checked::Lost(DataLoss {
            detail: "cat: /mnt/d/f: No such file".into(),
            expected: false,
        });
        assert!(!apply(lost, &store, &mut result, &mut caught));
        assert!(!result.crashes[0].intact);
        assert_eq!(result.status, TestStatus::Failed);
        assert!(result.message.contains("data loss after the restart: cat"));
        let mut r2 = fresh();
        let caught_it = Checked::Lost(DataLoss {
            detail: "fsck.vexfs: bad inode".into(),
            expected: true,
        });
        assert!(apply(caught_it, &store, &mut r2, &mut caught));
        assert!(r2.crashes[0].intact && caught);
        assert_eq!(r2.status, TestStatus::Passed);
        assert!(r2.crashes[0].data_loss.as_ref().is_some_and(|d| d.expected));
        let mut t = plan.tests[0].clone();
        assert_eq!(expected_loss_missed(&t, false), None);
        t.expect_data_loss = true;
        assert!(expected_loss_missed(&t, false).is_some());
        assert_eq!(expected_loss_missed(&t, true), None);
    }
}
