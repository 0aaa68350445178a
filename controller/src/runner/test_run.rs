//! One test on one guest: its steps run while the supervisor watches; each incident is
//! recorded and recovered from, and the test goes on as [`incident::after_incident`]
//! decides, until its steps are done, one fails, or its timeout.

use super::ms;
use std::time::{Duration, Instant};

use super::after_restart;
use super::incident::{self, Next};
use super::notes;
use super::steps::{Steps, StepsEnd};
use crate::guest::{CrashContext, Guest, Handled};
use crate::incident::Incident;
use crate::plan::{Plan, Test};
use crate::recovery::Policy;
use crate::results::{CrashSummary, TestResult, TestStatus};
use crate::store::Store;

/// How long after a test's last step a crash is still the test's: the classifiers
/// finish an open report after 400 ms of console quiet.
const SETTLE: Duration = Duration::from_millis(1000);
/// A step that fails this close to the test's deadline failed because of it.
const DEADLINE_SLACK: Duration = Duration::from_millis(250);

/// What ended a stretch of steps.
enum Race {
    Steps(StepsEnd),
    Incident(Option<Incident>),
}

/// What running one test gave.
pub(super) struct TestRun {
    /// The result.
    pub(super) result: TestResult,
    /// Time spent recovering, ms.
    pub(super) recovery_ms: u64,
    /// Set when recovery failed: the kernel's remaining tests cannot run.
    pub(super) abort: Option<String>,
}

/// The recovery policy of a plan.
pub(super) fn policy(plan: &Plan) -> Policy {
    Policy {
        isolate_after: plan.isolate_after,
        leak_bound_kb: plan.module.leak_bound_kb,
        ..Policy::default()
    }
}

/// Runs one test; `crashes` counts this test's crashes in the run so far.
pub(super) async fn run_test(
    guest: &mut Guest,
    store: &mut Store,
    test: &Test,
    mut ctx: CrashContext,
    crashes: &mut u32,
    plan: &Plan,
    keep: &crate::guest::Keep,
) -> TestRun {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(test.timeout_s);
    let mut result = TestResult {
        name: test.name.clone(),
        status: TestStatus::Passed,
        duration_ms: 0,
        message: String::new(),
        expected_crash: test.expect_crash.clone(),
        crashes: Vec::new(),
        attempts: 1,
        steps: Vec::new(),
        metrics: Vec::new(),
        notes: Vec::new(),
    };
    let policy = policy(plan);
    let mut recovery_ms = 0;
    let mut abort = None;
    let mut retried = 0;
    let mut expected_seen = false;
    // An after_restart check caught the damage the test expects.
    let mut caught = false;
    // The leak check compares with what the guest held before the test.
    if let Err(e) = guest.take_baseline().await {
        tracing::warn!("baseline sample before {}: {e}", test.name);
    }
    let mut steps = Steps::new(
        guest.client(),
        guest.module.clone(),
        plan.module.trigger_path(),
        test,
        deadline,
    );
    let mut from = 0;
    let mut settled = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            fail(&mut result, format!("timed out after {} s", test.timeout_s));
            break;
        }
        let race = if settled {
            // Crashes the last step caused show up a moment later.
            Race::Incident(
                guest
                    .watch()
                    .next_incident(SETTLE.min(left), |o| notes::observe(&mut result.notes, o))
                    .await,
            )
        } else {
            let run = steps.run_from(from);
            tokio::pin!(run);
            tokio::select! {
                end = &mut run => Race::Steps(end),
                inc = guest.watch().next_incident(left, |o| notes::observe(&mut result.notes, o)) => Race::Incident(inc),
            }
        };
        let incident = match race {
            Race::Steps(StepsEnd::Done) => {
                settled = true;
                continue;
            }
            Race::Steps(StepsEnd::Failed(msg)) => {
                // A step cut short by the test's own deadline is the test timing out.
                let msg = if Instant::now() + DEADLINE_SLACK >= deadline {
                    format!("timed out after {} s ({msg})", test.timeout_s)
                } else {
                    msg
                };
                fail(&mut result, msg);
                break;
            }
            Race::Steps(StepsEnd::Leak(trends)) => {
                Incident::leak(&trends, &plan.module.name, "cycle", Instant::now())
            }
            Race::Incident(Some(i)) => i,
            // Settled with nothing more: the test is done.
            Race::Incident(None) if settled => break,
            // The test's time is up (checked at the top of the loop).
            Race::Incident(None) if Instant::now() + DEADLINE_SLACK >= deadline => continue,
            // The watch ended early (its tasks stopped): nothing can judge the guest
            // now, and running the steps again would repeat them.
            Race::Incident(None) => {
                result.status = TestStatus::Error;
                result.message = "the supervisor stopped watching the guest".into();
                abort = Some(format!("{} in {}", result.message, test.name));
                break;
            }
        };
        steps.mark_current("crashed");
        // Only unexpected crashes count toward isolation: the expected one is the test
        // doing its job.
        if !incident::expected(test, &incident) {
            *crashes += 1;
        }
        ctx.test_crashes = *crashes;
        let step = steps.current;
        match incident::handle(
            guest,
            store,
            test,
            &incident,
            &ctx,
            policy,
            step,
            retried,
            Some(keep),
        )
        .await
        {
            Ok((h, was_expected, next)) => {
                recovery_ms += ms(h.duration);
                result
                    .crashes
                    .push(summary(&incident, was_expected, Some(&h)));
                expected_seen |= was_expected;
                if !was_expected {
                    result.status = TestStatus::Crashed;
                    result.message = incident.title.clone();
                }
                if h.fate == crate::recovery::Fate::RestartRequired {
                    steps.restarted(guest.client());
                    if let Err(e) = guest.take_baseline().await {
                        tracing::warn!("baseline sample after restart: {e}");
                    }
                    // Crash consistency: the disk as the crash left it, checked before
                    // the test goes on.
                    let checked = after_restart::run_checks(
                        guest.client(),
                        guest.module.clone(),
                        plan,
                        test,
                        deadline,
                        steps.attempt,
                        &mut steps.records,
                    )
                    .await;
                    if !after_restart::apply(checked, store, &mut result, &mut caught) {
                        break;
                    }
                }
                match next {
                    Next::End(status, message) => {
                        if status == TestStatus::Error {
                            abort = Some(format!("{message} in {}", test.name));
                        }
                        result.status = status;
                        result.message = message;
                        break;
                    }
                    Next::Resume {
                        from: f,
                        new_attempt,
                        delay,
                    } => {
                        if new_attempt {
                            steps.attempt += 1;
                            result.attempts += 1;
                            retried += u32::from(f == step);
                        }
                        tokio::time::sleep(delay).await;
                        from = f;
                        settled = f >= test.steps.len();
                    }
                }
            }
            Err(e) => {
                // Not in the database (most likely it could not be written): keep the
                // crash in the results and on stderr, whatever the progress mode.
                eprintln!(
                    "vexctl: crash not recorded ({e}): {} [{}]\n{}",
                    incident.title,
                    incident.category.as_str(),
                    incident.report
                );
                result.crashes.push(summary(&incident, false, None));
                result.status = TestStatus::Error;
                result.message = format!("handling crash {}: {e}", incident.title);
                abort = Some(result.message.clone());
                break;
            }
        }
    }
    if result.status == TestStatus::Passed
        && let Some(msg) = after_restart::expected_loss_missed(test, caught)
    {
        result.status = TestStatus::Failed;
        result.message = msg;
    }
    if result.status == TestStatus::Passed && test.expect_crash.is_some() && !expected_seen {
        result.status = TestStatus::Failed;
        if result.message.is_empty() {
            result.message = format!(
                "expected crash {:?} did not happen",
                test.expect_crash.as_deref().unwrap_or("")
            );
        }
    }
    result.steps = std::mem::take(&mut steps.records);
    result.metrics = std::mem::take(&mut steps.metrics);
    result.duration_ms = ms(started.elapsed());
    TestRun {
        result,
        recovery_ms,
        abort,
    }
}

/// A failed step: the test fails, unless an unexpected crash already marked it.
fn fail(result: &mut TestResult, msg: String) {
    if result.status == TestStatus::Crashed {
        result.message = format!("{}; then {msg}", result.message);
    } else {
        result.status = TestStatus::Failed;
        result.message = msg;
    }
}

/// A crash of a test as the results show it: with its recovery when it was handled,
/// unrecorded (id 0, no fate, not recovered) when the database refused it.
pub(super) fn summary(
    incident: &Incident,
    expected: bool,
    handled: Option<&Handled>,
) -> CrashSummary {
    CrashSummary {
        id: handled.map_or(0, |h| h.crash_id),
        category: incident.category,
        severity: incident.severity,
        title: incident.title.clone(),
        expected,
        recovery_level: handled.map_or(0, |h| h.level as u8),
        fate: handled.map(|h| h.fate),
        recovery_ms: handled.map_or(0, |h| ms(h.duration)),
        recovered: handled.is_some_and(Handled::succeeded),
        intact: handled.is_some_and(|h| h.intact),
        report: incident.report.clone(),
        data_loss: None,
    }
}
