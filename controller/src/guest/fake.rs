//! A scripted guest for unit tests of recovery: each action's outcomes are given in
//! advance (default: success), and every action performed is remembered.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use super::{Assessment, GuestActions, Performed};
use crate::recovery::{Action, Outcome};
use crate::vm::dump::{Dump, DumpError, DumpFormat, DumpLimits};

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
    /// `dump_memory` fails with this (QEMU's words), else writes a small vmcore.
    pub(crate) dump_fails: Option<String>,
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
            dump_fails: None,
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

    async fn dump_memory(&mut self, dir: &Path, _limits: DumpLimits) -> Result<Dump, DumpError> {
        self.performed.push(super::DUMP_STEP);
        if let Some(desc) = &self.dump_fails {
            return Err(DumpError::Qmp(crate::vm::qmp::QmpError::Command {
                command: "dump-guest-memory".into(),
                class: "GenericError".into(),
                desc: desc.clone(),
            }));
        }
        let path = dir.join(crate::vm::dump::VMCORE);
        let io = |source| DumpError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(&path, b"KDUMP   fake").map_err(io)?;
        Ok(Dump {
            path,
            format: DumpFormat::KdumpZlib,
            bytes: 12,
            duration: Duration::from_millis(1),
        })
    }
}
