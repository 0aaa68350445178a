//! A scripted guest for unit tests of recovery: each action's outcomes are given in
//! advance (default: success), and every action performed is remembered.

use std::collections::{HashMap, VecDeque};

use super::{Assessment, GuestActions, Performed};
use crate::recovery::{Action, Outcome};

/// A guest whose actions answer from a script.
#[derive(Debug)]
pub(crate) struct FakeGuest {
    /// What `assess` answers.
    pub(crate) assessment: Assessment,
    /// Outcomes per action name, consumed in order; an action with none left succeeds.
    pub(crate) script: HashMap<&'static str, VecDeque<Outcome>>,
    /// Names of the actions performed, in order.
    pub(crate) performed: Vec<&'static str>,
    /// `acknowledge` was called.
    pub(crate) acknowledged: bool,
}

impl FakeGuest {
    /// A live guest on the vhost-user daemon (a relaunch is its reset), with the
    /// kernel's taint mask as given.
    pub(crate) fn live(taint_mask: u64) -> Self {
        Self {
            assessment: Assessment {
                vm_alive: true,
                qmp_responsive: true,
                reset_keeps_transport: false,
                taint_mask: Some(taint_mask),
            },
            script: HashMap::new(),
            performed: Vec::new(),
            acknowledged: false,
        }
    }

    /// Scripts the outcomes of one action.
    pub(crate) fn on(mut self, action: &'static str, outcomes: &[Outcome]) -> Self {
        self.script
            .entry(action)
            .or_default()
            .extend(outcomes.iter().copied());
        self
    }
}

impl GuestActions for FakeGuest {
    fn kernel(&self) -> String {
        "6.12.0-fake".into()
    }

    fn console_excerpt(&self) -> String {
        "[  1.0] console line before the crash".into()
    }

    async fn assess(&mut self) -> Assessment {
        self.assessment
    }

    async fn perform(&mut self, action: &Action) -> Performed {
        let name = action.name();
        self.performed.push(name);
        let outcome = self
            .script
            .get_mut(name)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Succeeded);
        Performed {
            outcome,
            detail: format!("fake {name}"),
            forensics: (action == &Action::CollectForensics)
                .then(|| "sysrq w: task sh blocked in vexfs_fault_deadlock\n".to_string()),
        }
    }

    fn acknowledge(&mut self) {
        self.acknowledged = true;
    }
}
