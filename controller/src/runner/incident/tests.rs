//! A test's course after an incident, with a scripted guest and an in-memory database:
//! the fate recovery leaves, and which of the test's steps run next.

use std::time::Instant;

use super::*;
use crate::guest::fake::FakeGuest;
use crate::guest::tests::from_log;
use crate::recovery::Outcome;
use crate::verdict::Verdict;

const DIED: u64 = 1 << 7;

/// A four-step test: the fault (a trigger when the crash is expected, else a command
/// that happens to crash), then what checks the module still works.
fn test(expect: Option<&str>) -> Test {
    let first = match expect {
        Some(_) => r#"{ trigger = "null" }"#,
        None => r#"{ exec = { cmd = "cat /mnt/a/big" } }"#,
    };
    let text = format!(
        r#"
name = "p"
[[test]]
name = "t"
{}
steps = [
  {first},
  {{ mount = {{ target = "/mnt/a" }} }},
  {{ exec = {{ cmd = "echo ok > /mnt/a/f && cat /mnt/a/f", stdout = "ok" }} }},
  {{ unmount = "/mnt/a" }},
]
"#,
        expect.map_or(String::new(), |e| format!("expect_crash = {e:?}"))
    );
    crate::plan::parse(&text, "t.toml").unwrap().tests.remove(0)
}

fn go(
    guest: &mut FakeGuest,
    test: &Test,
    incident: &Incident,
    crashes: u32,
    step: usize,
    retried: u32,
) -> (Handled, bool, Next) {
    let mut store = Store::open_in_memory().unwrap();
    let ctx = CrashContext {
        test_name: test.name.clone(),
        test_crashes: crashes,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(handle(
        guest,
        &mut store,
        test,
        incident,
        &ctx,
        Policy::default(),
        step,
        retried,
        None,
    ))
    .unwrap()
}

fn resume(from: usize) -> Next {
    Next::Resume {
        from,
        new_attempt: false,
        delay: Duration::ZERO,
    }
}

#[test]
fn expected_crash_goes_on_with_the_steps_after_it() {
    let t = test(Some("module_crash"));
    let i = from_log("crash-612-null.log");
    let mut g = FakeGuest::live(DIED);
    let (h, expected, next) = go(&mut g, &t, &i, 1, 0, 0);
    assert!(expected);
    assert_eq!(h.fate, Fate::RestartRequired);
    assert_eq!(
        next,
        resume(1),
        "mount, exec and unmount run on the new guest"
    );
}

#[test]
fn expected_crash_never_counts_toward_isolation() {
    let t = test(Some("kernel_panic"));
    let i = from_log("crash-612-panic.log");
    let mut g = FakeGuest::live(0);
    let (h, _, next) = go(&mut g, &t, &i, 5, 0, 0);
    assert_eq!(h.fate, Fate::RestartRequired);
    assert_eq!(next, resume(1));
}

#[test]
fn unexpected_crash_recovered_gracefully_retries_the_step_with_backoff() {
    let t = test(None);
    let i = from_log("crash-612-null.log");
    let mut g = FakeGuest::live(0);
    let (h, expected, next) = go(&mut g, &t, &i, 1, 2, 0);
    assert!(!expected);
    assert_eq!(h.fate, Fate::Continue);
    assert_eq!(
        next,
        Next::Resume {
            from: 2,
            new_attempt: true,
            delay: Policy::default().backoff,
        }
    );
    // Its retries used up, the test goes on after the step.
    let mut g = FakeGuest::live(0);
    let (_, _, next) = go(&mut g, &t, &i, 1, 2, 1);
    assert_eq!(next, resume(3));
}

#[test]
fn unexpected_crash_after_a_restart_continues_or_reruns_as_the_plan_says() {
    let mut t = test(None);
    let i = from_log("crash-612-panic.log");
    let mut g = FakeGuest::live(0);
    let (h, _, next) = go(&mut g, &t, &i, 1, 1, 0);
    assert_eq!(h.fate, Fate::RestartRequired);
    assert_eq!(next, resume(2));
    t.on_restart = crate::plan::OnRestart::Rerun;
    let mut g = FakeGuest::live(0);
    let (_, _, next) = go(&mut g, &t, &i, 1, 1, 0);
    assert_eq!(
        next,
        Next::Resume {
            from: 0,
            new_attempt: true,
            delay: Duration::ZERO,
        }
    );
}

#[test]
fn repeat_offender_is_isolated_and_ends() {
    let t = test(None);
    let i = from_log("crash-612-deadlock.log");
    let mut g = FakeGuest::live(0).on("kill_workload", &[Outcome::Hung]);
    let (h, _, next) = go(&mut g, &t, &i, 2, 0, 0);
    assert_eq!(h.fate, Fate::SkipCurrent);
    assert!(matches!(next, Next::End(TestStatus::Skipped, ref m) if m.contains("isolated")));
}

#[test]
fn failed_recovery_ends_the_test_as_a_harness_error() {
    let t = test(None);
    let i = Incident::from_verdict(Verdict::VmmDead { code: Some(1) }, Instant::now());
    let mut g = FakeGuest::live(0).on("relaunch_vm", &[Outcome::Failed; 3]);
    g.assessment.vm_alive = false;
    let (h, _, next) = go(&mut g, &t, &i, 1, 1, 0);
    assert_eq!(h.fate, Fate::Abort);
    assert!(matches!(next, Next::End(TestStatus::Error, ref m) if m.contains("recovery failed")));
}

#[test]
fn a_warning_checks_the_module_and_retries_the_step() {
    let t = test(None);
    let i = from_log("crash-612-warn.log");
    let mut g = FakeGuest::live(1 << 9);
    let (h, _, next) = go(&mut g, &t, &i, 1, 0, 0);
    assert_eq!(g.performed, ["smoke_test"]);
    assert_eq!(h.fate, Fate::Continue);
    assert!(matches!(
        next,
        Next::Resume {
            from: 0,
            new_attempt: true,
            ..
        }
    ));
}
