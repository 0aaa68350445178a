//! What the watcher saw during a test that did not end it: kernel log records the
//! ring overwrote before the agent read them (a crash report of this test may then
//! be incomplete) and tasks seen blocked (a slow path or an early hang sign). Kept as
//! notes on the test's result, so they reach every report instead of being dropped.

use vexfs_proto::HungSource;

use crate::supervisor::Observation;

/// Notes kept per test at most; a storm of notices says what it needs in the first.
pub(super) const MAX_NOTES: usize = 20;

/// Adds what `o` tells to `notes` (crashes and verdicts are incidents, handled by
/// the runner; counters are for leak trends).
pub(super) fn observe(notes: &mut Vec<String>, o: Observation) {
    let note = match o {
        Observation::Gap { from, to } => format!(
            "kernel log records {from}..={to} lost: the ring overwrote them before the \
             agent read them"
        ),
        Observation::Hung(h) => {
            let by = match HungSource::try_from(h.source) {
                Ok(HungSource::Kernel) => "the kernel's hung-task detector",
                Ok(HungSource::DstateScan) => "the agent's D-state scan",
                Ok(HungSource::KillProcess) => "a kill that did not take",
                _ => "the agent",
            };
            let prefix = format!("task {}:{} ", h.comm, h.pid);
            // One note per task: later notices of the same task only repeat it.
            if notes.iter().any(|n| n.starts_with(&prefix)) {
                return;
            }
            let wchan = if h.wchan.is_empty() {
                String::new()
            } else {
                format!(" in {}", h.wchan)
            };
            format!("{prefix}blocked {} s{wchan} (seen by {by})", h.blocked_secs)
        }
        Observation::Crash { .. } | Observation::Verdict(_) | Observation::Counters(_) => {
            return;
        }
    };
    if notes.len() < MAX_NOTES {
        notes.push(note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vexfs_proto::HungTask;

    fn hung(pid: u32, source: HungSource) -> Observation {
        Observation::Hung(HungTask {
            pid,
            comm: "cat".into(),
            blocked_secs: 3,
            source: source as i32,
            wchan: "vexfs_lock".into(),
            ..Default::default()
        })
    }

    #[test]
    fn gaps_and_blocked_tasks_become_notes_once_per_task() {
        let mut notes = Vec::new();
        observe(&mut notes, Observation::Gap { from: 10, to: 12 });
        observe(&mut notes, hung(7, HungSource::DstateScan));
        observe(&mut notes, hung(7, HungSource::Kernel));
        observe(&mut notes, hung(8, HungSource::Kernel));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("10..=12 lost"));
        assert_eq!(
            notes[1],
            "task cat:7 blocked 3 s in vexfs_lock (seen by the agent's D-state scan)"
        );
        assert!(notes[2].contains("cat:8") && notes[2].contains("hung-task detector"));
    }

    #[test]
    fn verdicts_and_counters_are_not_notes_and_notes_are_bounded() {
        let mut notes = Vec::new();
        observe(
            &mut notes,
            Observation::Verdict(crate::verdict::Verdict::Healthy),
        );
        observe(&mut notes, Observation::Counters(Box::default()));
        assert!(notes.is_empty());
        for i in 0..100 {
            observe(&mut notes, Observation::Gap { from: i, to: i });
        }
        assert_eq!(notes.len(), MAX_NOTES);
    }
}
