//! A fresh guest for the next test or after a crash: whether a restarted guest is a
//! new one (pure, unit tested) and [`Guest::fresh_start`], the `fresh_vm = "per_test"`
//! restart (relaunch, verify, module load) outside any crash.

use std::time::{Duration, Instant};

use vexfs_proto::HealthReply;

use super::{Guest, GuestActions, GuestError};
use crate::recovery::{Action, Outcome};
use crate::vm::restart::{Freshness, fresh_state};

/// What a restarted guest's Health says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// A new guest with a clean kernel.
    Fresh(Freshness),
    /// Still the old guest (its agent answers while a reset takes effect): wait.
    Stale(String),
    /// A new guest, but its kernel is tainted dirty.
    Unclean(String),
}

/// Judges `new` against `old` (the guest that crashed): fresh by restore generation
/// or boot id, and untainted.
pub fn judge_restart(old: &HealthReply, new: &HealthReply) -> Judged {
    match fresh_state(old, new) {
        Err(why) => Judged::Stale(why),
        Ok(_) if vexfs_proto::Taint(new.taint_mask).dirty() => {
            Judged::Unclean(format!("kernel tainted {}", new.taint_flags))
        }
        Ok(f) => Judged::Fresh(f),
    }
}

/// The attempt row's detail of a verified restart.
pub(super) fn verified_detail(old: &HealthReply, new: &HealthReply, took: Duration) -> String {
    let how = match fresh_state(old, new) {
        Ok(Freshness::NewRestore { generation }) => format!("restore generation {generation}"),
        _ => format!("boot {}", new.boot_id),
    };
    format!("{how} in {:.1} s", took.as_secs_f64())
}

/// The restart of [`Guest::fresh_start`] on any guest: relaunch, verify, load, stopping
/// at the first action that does not succeed. Returns the relaunch's detail (restored
/// or cold booted, and why) or what failed.
pub(crate) async fn fresh_start_on<G: GuestActions>(guest: &mut G) -> Result<String, String> {
    let mut how = String::new();
    for action in [
        Action::RelaunchVm,
        Action::VerifyCleanBoot,
        Action::LoadModule,
    ] {
        let done = guest.perform(&action).await;
        if done.outcome != Outcome::Succeeded {
            return Err(format!(
                "{} {}: {}",
                action.name(),
                done.outcome.as_str(),
                done.detail
            ));
        }
        if action == Action::RelaunchVm {
            how = done.detail;
        }
    }
    Ok(how)
}

impl Guest {
    /// A brand-new guest before a test (`fresh_vm = "per_test"`): the running one is
    /// killed, the snapshot restored (or a cold boot), checked fresh and clean, and the
    /// module under test loaded. Returns a line saying how, for the progress output.
    pub async fn fresh_start(&mut self) -> Result<String, GuestError> {
        let t0 = Instant::now();
        let how = fresh_start_on(self).await.map_err(GuestError::Unclean)?;
        Ok(format!(
            "{how}; module loaded, {:.2} s in all",
            t0.elapsed().as_secs_f64()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeGuest;
    use super::*;

    const DIED: u64 = 1 << 7;

    fn health(boot: &str, generation: u64, taint: u64) -> HealthReply {
        HealthReply {
            boot_id: boot.into(),
            restore_generation: generation,
            taint_mask: taint,
            taint_flags: if taint == 0 { "" } else { "D" }.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_restored_guest_is_fresh_by_generation_not_boot_id() {
        let crashed = health("snap", 1, DIED);
        // Same boot id as the crashed guest (both restored from one snapshot).
        assert_eq!(
            judge_restart(&crashed, &health("snap", 2, 0)),
            Judged::Fresh(Freshness::NewRestore { generation: 2 })
        );
        assert!(matches!(
            judge_restart(&crashed, &health("snap", 1, DIED)),
            Judged::Stale(_)
        ));
        assert_eq!(
            judge_restart(&crashed, &health("cold", 0, 0)),
            Judged::Fresh(Freshness::NewBoot)
        );
        assert_eq!(
            judge_restart(&crashed, &health("cold", 0, DIED)),
            Judged::Unclean("kernel tainted D".into())
        );
        // A cold-booted guest whose reset has not taken effect yet.
        assert!(matches!(
            judge_restart(&health("a", 0, DIED), &health("a", 0, DIED)),
            Judged::Stale(_)
        ));
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_fresh_start_relaunches_verifies_and_loads() {
        let mut g = FakeGuest::live(0);
        let how = block_on(fresh_start_on(&mut g)).unwrap();
        assert_eq!(
            g.performed,
            ["relaunch_vm", "verify_clean_boot", "load_module"]
        );
        assert_eq!(how, "fake relaunch_vm");
        assert!(!g.acknowledged, "not a recovery");
    }

    #[test]
    fn a_fresh_start_stops_at_the_first_failure() {
        let mut g = FakeGuest::live(0).on("verify_clean_boot", &[Outcome::Failed]);
        let e = block_on(fresh_start_on(&mut g)).unwrap_err();
        assert_eq!(g.performed, ["relaunch_vm", "verify_clean_boot"]);
        assert_eq!(e, "verify_clean_boot failed: fake verify_clean_boot");
        let mut g = FakeGuest::live(0).on("relaunch_vm", &[Outcome::Failed]);
        assert!(block_on(fresh_start_on(&mut g)).is_err());
        assert_eq!(g.performed, ["relaunch_vm"]);
    }

    #[test]
    fn the_timeline_detail_names_the_proof() {
        let old = health("snap", 1, DIED);
        let d = verified_detail(&old, &health("snap", 9, 0), Duration::from_millis(600));
        assert_eq!(d, "restore generation 9 in 0.6 s");
        let d = verified_detail(&old, &health("b2", 0, 0), Duration::from_millis(2500));
        assert_eq!(d, "boot b2 in 2.5 s");
    }
}
