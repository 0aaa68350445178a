//! The `check_leaks` recovery action's judgement: after the module under test is
//! unloaded, did the guest give back what the test took? Pure, over two samples.

use vexfs_proto::Counters;

/// Open file handles a guest may hold above its baseline after a test: the agent's
/// own streams and short-lived commands come and go.
const FILE_HANDLE_SLACK: u64 = 64;

fn sunreclaim(c: &Counters) -> u64 {
    c.meminfo_kb.get("SUnreclaim").copied().unwrap_or(0)
}

/// Compares `now` (after the unload) with `baseline` (before the test): `Ok` with what
/// was measured, or `Err` saying what stayed grown past `bound_kb` of unreclaimable
/// slab or the file-handle slack.
pub fn leak_check(baseline: &Counters, now: &Counters, bound_kb: u64) -> Result<String, String> {
    let slab = sunreclaim(now) as i64 - sunreclaim(baseline) as i64;
    let files = now.file_handles_allocated as i64 - baseline.file_handles_allocated as i64;
    let measured = format!("SUnreclaim {slab:+} kB, file handles {files:+} since the test began");
    let mut over = Vec::new();
    if slab > i64::try_from(bound_kb).unwrap_or(i64::MAX) {
        over.push(format!(
            "unreclaimable slab stays {slab} kB above the baseline (bound {bound_kb} kB)"
        ));
    }
    if files > FILE_HANDLE_SLACK as i64 {
        over.push(format!(
            "{files} file handles more than before the test (slack {FILE_HANDLE_SLACK})"
        ));
    }
    if over.is_empty() {
        Ok(measured)
    } else {
        Err(format!("{}: {measured}", over.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sunreclaim_kb: u64, files: u64) -> Counters {
        Counters {
            meminfo_kb: [("SUnreclaim".to_string(), sunreclaim_kb)]
                .into_iter()
                .collect(),
            file_handles_allocated: files,
            ..Default::default()
        }
    }

    #[test]
    fn given_back_passes() {
        let r = leak_check(&sample(10_000, 500), &sample(10_200, 510), 1024);
        assert_eq!(
            r.unwrap(),
            "SUnreclaim +200 kB, file handles +10 since the test began"
        );
    }

    #[test]
    fn slab_kept_past_the_bound_fails() {
        let e = leak_check(&sample(10_000, 500), &sample(14_000, 500), 1024).unwrap_err();
        assert!(
            e.contains("4000 kB above the baseline (bound 1024 kB)"),
            "{e}"
        );
    }

    #[test]
    fn file_handles_kept_fail() {
        let e = leak_check(&sample(10_000, 500), &sample(10_000, 700), 1024).unwrap_err();
        assert!(e.contains("200 file handles more"), "{e}");
    }
}
