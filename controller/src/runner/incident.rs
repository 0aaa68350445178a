//! What a test does after an incident: the crash is recorded and recovered from
//! (`guest::handle_crash`), then the test retries the crashed step (after a graceful
//! recovery, with backoff), goes on after it or from its start (after a VM restart),
//! or ends (isolated, or recovery failed). The decision is a plain function.

use std::time::Duration;

use crate::guest::{self, CrashContext, GuestActions, GuestError, Handled};
use crate::incident::Incident;
use crate::plan::{OnRestart, Test};
use crate::recovery::{Fate, Policy};
use crate::results::TestStatus;
use crate::store::Store;

/// Whether a crash is the expected one: a category name or a title fragment.
pub fn crash_matches(expect: &str, category: &str, title: &str) -> bool {
    expect == category || title.contains(expect)
}

/// Whether `incident` is what `test` expects.
pub fn expected(test: &Test, incident: &Incident) -> bool {
    test.expect_crash
        .as_deref()
        .is_some_and(|e| crash_matches(e, incident.category.as_str(), &incident.title))
}

/// Where the test goes after a recovered incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run the steps from this index (past the end: the test is done).
    Resume {
        /// First step to run.
        from: usize,
        /// This starts a new run of the test (a rerun after a restart, or a retry).
        new_attempt: bool,
        /// Wait this long first (a retry's backoff).
        delay: Duration,
    },
    /// The test ends here with this status and message.
    End(TestStatus, String),
}

/// The test's course after an incident during step `step`, given the recovery's fate.
/// `retried` counts the retries already made of crashed steps in this test.
pub fn after_incident(
    test: &Test,
    incident: &Incident,
    was_expected: bool,
    fate: Fate,
    step: usize,
    retried: u32,
    policy: &Policy,
) -> Next {
    let after = Next::Resume {
        from: step + 1,
        new_attempt: false,
        delay: Duration::ZERO,
    };
    match fate {
        Fate::Abort => Next::End(
            TestStatus::Error,
            format!("recovery failed after {}", incident.title),
        ),
        Fate::SkipCurrent => Next::End(
            TestStatus::Skipped,
            format!("isolated after repeated crashes: {}", incident.title),
        ),
        // The crash the test is for: it goes on with what follows the crash.
        Fate::Continue | Fate::RestartRequired if was_expected => after,
        // Level 1 put the module back: the crashed step gets another chance.
        Fate::Continue if retried < test.retries => {
            let factor = 1u32 << retried.min(16);
            Next::Resume {
                from: step,
                new_attempt: true,
                delay: (policy.backoff * factor).min(policy.backoff_max),
            }
        }
        Fate::Continue => after,
        Fate::RestartRequired => match test.on_restart {
            OnRestart::Continue => after,
            OnRestart::Rerun => Next::Resume {
                from: 0,
                new_attempt: true,
                delay: Duration::ZERO,
            },
        },
    }
}

/// Handles one incident of a test: records and recovers (the guest is any
/// [`GuestActions`]), then decides the test's course.
#[allow(clippy::too_many_arguments)]
pub async fn handle<G: GuestActions>(
    guest: &mut G,
    store: &mut Store,
    test: &Test,
    incident: &Incident,
    ctx: &CrashContext,
    policy: Policy,
    step: usize,
    retried: u32,
    keep: Option<&guest::Keep>,
) -> Result<(Handled, bool, Next), GuestError> {
    let was_expected = expected(test, incident);
    // An expected crash is the test doing its job: it never counts toward isolation.
    let ctx = CrashContext {
        test_crashes: if was_expected {
            1
        } else {
            ctx.test_crashes.max(1)
        },
        ..ctx.clone()
    };
    let h = guest::handle_crash_keeping(guest, store, incident, &ctx, policy, keep).await?;
    crate::metrics::global().crashed_and_recovered(incident.category, &h);
    let next = after_incident(test, incident, was_expected, h.fate, step, retried, &policy);
    Ok((h, was_expected, next))
}

#[cfg(test)]
mod tests;
