//! Combining the results files of the shards of one plan into one run.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::results::{KernelResults, RunResults, TestResult};
use crate::scorecard::{self, Stats};
use crate::store::Bucket;

use super::Error;

/// Merges shard results of one plan: kernels concatenated (a kernel split across
/// shards becomes one, its tests in plan order), buckets merged by signature, stats
/// recomputed from the parts, timeline concatenated in time order; `shard` is None.
pub fn merge(mut parts: Vec<RunResults>) -> Result<RunResults, Error> {
    // Shard order first: where the kernels give no hint, tests keep shard order,
    // which is plan order for contiguous slices.
    parts.sort_by_key(|p| shard_index(p.shard.as_deref()));
    let first = parts.first().ok_or(Error::Empty)?;
    if let Some(p) = parts.iter().find(|p| p.plan != first.plan) {
        return Err(Error::PlanMismatch {
            expected: first.plan.clone(),
            found: p.plan.clone(),
        });
    }
    let order = plan_order(parts.iter().flat_map(|p| &p.kernels));
    let crashes: i64 = parts.iter().map(|p| p.stats.crashes).sum();
    let mut merged = RunResults {
        run_id: if parts.iter().all(|p| p.run_id == first.run_id) {
            first.run_id
        } else {
            0
        },
        plan: first.plan.clone(),
        shard: None,
        started_at_ms: parts.iter().map(|p| p.started_at_ms).min().unwrap_or(0),
        finished_at_ms: parts.iter().map(|p| p.finished_at_ms).max().unwrap_or(0),
        kernels: Vec::new(),
        stats: Stats::default(),
        buckets: Vec::new(),
        timeline: Vec::new(),
    };
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for p in parts {
        for k in p.kernels {
            for t in &k.tests {
                if !seen.insert((k.kernel.clone(), t.name.clone())) {
                    return Err(Error::Duplicate {
                        kernel: k.kernel.clone(),
                        test: t.name.clone(),
                    });
                }
            }
            match merged.kernels.iter_mut().find(|m| m.kernel == k.kernel) {
                Some(m) => merge_kernel(m, k),
                None => merged.kernels.push(k),
            }
        }
        for b in p.buckets {
            merge_bucket(&mut merged.buckets, b);
        }
        merged.timeline.extend(p.timeline);
    }
    for k in &mut merged.kernels {
        // Stable: tests unknown to the order (none, by construction) keep their place.
        k.tests
            .sort_by_key(|t| order.get(&t.name).copied().unwrap_or(usize::MAX));
    }
    merged.buckets.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.first_seen_ms.cmp(&b.first_seen_ms))
    });
    // The metrics of the union are those of its records, by the one definition.
    merged.stats = scorecard::of_results(
        &merged.kernels,
        u64::try_from(crashes).unwrap_or(0),
        merged.buckets.len() as u64,
    );
    merged.timeline.sort_by(|a, b| {
        a.started_at_ms
            .cmp(&b.started_at_ms)
            .then(a.kernel.cmp(&b.kernel))
    });
    Ok(merged)
}

/// `I` of a shard "I/N" (0 when none or unparsable).
fn shard_index(shard: Option<&str>) -> u64 {
    shard
        .and_then(|s| s.split('/').next())
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or(0)
}

fn merge_kernel(m: &mut KernelResults, k: KernelResults) {
    if m.accel != k.accel && !m.accel.split('+').any(|a| a == k.accel) {
        m.accel = format!("{}+{}", m.accel, k.accel);
    }
    // Shards run in parallel: the first boot is the fastest one, times add up.
    m.boot_ms = m.boot_ms.min(k.boot_ms);
    m.duration_ms += k.duration_ms;
    m.time_boot_ms += k.time_boot_ms;
    m.time_tests_ms += k.time_tests_ms;
    m.time_recovery_ms += k.time_recovery_ms;
    m.tests.extend(k.tests);
    m.harness_error = match (m.harness_error.take(), k.harness_error) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
}

fn merge_bucket(buckets: &mut Vec<Bucket>, b: Bucket) {
    let Some(m) = buckets.iter_mut().find(|m| m.signature == b.signature) else {
        buckets.push(b);
        return;
    };
    if b.first_seen_ms < m.first_seen_ms {
        // Title and category are those of the bucket's first crash.
        m.title = b.title;
        m.category = b.category;
        m.first_seen_ms = b.first_seen_ms;
    }
    m.last_seen_ms = m.last_seen_ms.max(b.last_seen_ms);
    m.count += b.count;
    for k in b.kernels {
        if !m.kernels.contains(&k) {
            m.kernels.push(k);
        }
    }
    for t in b.tests {
        if !m.tests.contains(&t) {
            m.tests.push(t);
        }
    }
}

/// The plan's test order, reconstructed from kernels that each list their tests in
/// plan order: a topological order of "comes before" over all kernels, ties (and
/// contradictions) broken by first appearance. Maps test name to rank.
pub(crate) fn plan_order<'a>(
    kernels: impl IntoIterator<Item = &'a KernelResults>,
) -> HashMap<String, usize> {
    let mut names: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut after: Vec<BTreeSet<usize>> = Vec::new();
    let mut indegree: Vec<usize> = Vec::new();
    for k in kernels {
        let mut prev: Option<usize> = None;
        for t in &k.tests {
            let i = *index.entry(t.name.as_str()).or_insert_with(|| {
                names.push(&t.name);
                after.push(BTreeSet::new());
                indegree.push(0);
                names.len() - 1
            });
            if let Some(p) = prev
                && p != i
                && after[p].insert(i)
            {
                indegree[i] += 1;
            }
            prev = Some(i);
        }
    }
    // Kahn's algorithm, always taking the earliest-seen ready test; on a cycle take
    // the earliest-seen remaining one so every test gets a rank.
    let mut rank = HashMap::new();
    let mut done = vec![false; names.len()];
    while rank.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !done[i] && indegree[i] == 0)
            .or_else(|| (0..names.len()).find(|&i| !done[i]))
            .expect("a test is left");
        done[next] = true;
        for &j in &after[next] {
            indegree[j] = indegree[j].saturating_sub(1);
        }
        rank.insert(names[next].to_string(), rank.len());
    }
    rank
}

/// Test names in plan order over all kernels (the rows of a matrix).
pub(crate) fn test_names(kernels: &[KernelResults]) -> Vec<String> {
    let order = plan_order(kernels);
    let mut names: Vec<String> = order.keys().cloned().collect();
    names.sort_by_key(|n| order[n]);
    names
}

/// Every test of a kernel by name.
pub(crate) fn test_of<'a>(k: &'a KernelResults, name: &str) -> Option<&'a TestResult> {
    k.tests.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;
    use crate::results::TestStatus;

    /// The sample split in two shards: contiguous halves of each kernel's tests, or
    /// alternating tests.
    fn shards(alternate: bool) -> (RunResults, RunResults) {
        let full = sample();
        let mut a = full.clone();
        let mut b = full.clone();
        for (ka, kb) in a.kernels.iter_mut().zip(&mut b.kernels) {
            let tests = std::mem::take(&mut ka.tests);
            kb.tests.clear();
            let half = tests.len().div_ceil(2);
            for (i, t) in tests.into_iter().enumerate() {
                if (alternate && i % 2 == 0) || (!alternate && i < half) {
                    &mut ka.tests
                } else {
                    &mut kb.tests
                }
                .push(t);
            }
        }
        // Only shard a saw the second kernel's abort; b never got to it.
        b.kernels[1].harness_error = None;
        b.kernels[1].tests.clear();
        a.shard = Some("1/2".into());
        b.shard = Some("2/2".into());
        b.run_id = 43;
        a.stats = Stats {
            crashes: 1,
            buckets: 1,
            recoveries: 1,
            recovered: 1,
            recovery_success_rate: 1.0,
            mean_recovery_ms: 1_000.0,
            p95_recovery_ms: 1_000.0,
            data_integrity: 1.0,
            test_continuity: 1.0,
        };
        b.stats = Stats {
            crashes: 4,
            buckets: 1,
            recoveries: 3,
            recovered: 2,
            recovery_success_rate: 2.0 / 3.0,
            mean_recovery_ms: 5_000.0,
            p95_recovery_ms: 9_000.0,
            data_integrity: 2.0 / 3.0,
            test_continuity: 0.5,
        };
        a.buckets.truncate(1);
        b.buckets[0].count = 3;
        b.buckets[0].first_seen_ms -= 1_000;
        b.buckets[0].kernels = vec!["6.6.0-vexfs".into(), "6.1.0-vexfs".into()];
        b.timeline.swap(0, 1);
        b.timeline[0].started_at_ms -= 100_000;
        a.timeline.clear();
        a.timeline.push(b.timeline[1].clone());
        b.timeline.truncate(1);
        (a, b)
    }

    #[test]
    fn merges_shards_back_into_plan_order() {
        let (a, b) = shards(false);
        let full = sample();
        let m = merge(vec![b.clone(), a.clone()]).unwrap();
        assert_eq!(m.run_id, 0);
        assert_eq!(m.shard, None);
        assert_eq!(m.plan, "smoke");
        let kernels: Vec<_> = m.kernels.iter().map(|k| k.kernel.as_str()).collect();
        assert_eq!(kernels, ["6.1.0-vexfs", "6.6.0-vexfs"]);
        assert_eq!(
            m.kernels[0].tests, full.kernels[0].tests,
            "plan order restored"
        );
        assert_eq!(m.kernels[1].tests, full.kernels[1].tests);
        assert_eq!(m.kernels[1].harness_error, full.kernels[1].harness_error);
        assert_eq!(m.kernels[0].duration_ms, 2 * full.kernels[0].duration_ms);
        assert_eq!(m.kernels[0].accel, "kvm");

        // The union's metrics are recomputed from its records, exactly as for the
        // unsharded run (the parts' own figures only give the crash count).
        let s = &m.stats;
        assert_eq!(s.crashes, 5);
        let whole = scorecard::of_results(&full.kernels, 5, 2);
        assert_eq!(*s, whole);
        assert_eq!((s.recoveries, s.recovered), (2, 2));

        assert_eq!(m.buckets.len(), 2);
        assert_eq!(s.buckets, 2);
        let b0 = &m.buckets[0];
        assert_eq!(b0.signature, "module_crash:vexfs_write");
        assert_eq!(b0.count, 5);
        assert_eq!(b0.first_seen_ms, full.buckets[0].first_seen_ms - 1_000);
        assert_eq!(b0.kernels, ["6.1.0-vexfs", "6.6.0-vexfs"]);

        assert_eq!(m.timeline.len(), 2);
        assert!(m.timeline[0].started_at_ms < m.timeline[1].started_at_ms);
        assert_eq!(m.started_at_ms, full.started_at_ms);
    }

    #[test]
    fn shard_order_decides_without_hints() {
        // Alternating slices and no kernel that ran them all: tests follow shard order.
        let (a, b) = shards(true);
        let m = merge(vec![b, a]).unwrap();
        let names: Vec<_> = m.kernels[0].tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mount_basic",
                "null_deref",
                "isolated",
                "write_read",
                "expected_panic",
                "agent_lost"
            ]
        );
    }

    #[test]
    fn plan_order_survives_disjoint_kernels() {
        let (a, _) = shards(true);
        let mut b = sample();
        b.kernels.remove(1);
        // A kernel that ran only the odd tests, and another that ran everything: the
        // full one tells where the odd ones go.
        b.kernels[0].kernel = "5.15.0-vexfs".into();
        let m = merge(vec![a, b]).unwrap();
        let names: Vec<_> = m.kernels[0].tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mount_basic", "null_deref", "isolated"]);
        let all = test_names(&m.kernels);
        assert_eq!(
            all,
            [
                "mount_basic",
                "write_read",
                "null_deref",
                "expected_panic",
                "isolated",
                "agent_lost"
            ]
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(merge(vec![]), Err(Error::Empty)));
        let mut other = sample();
        other.plan = "full".into();
        let e = merge(vec![sample(), other]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot merge results of plan \"full\" into results of plan \"smoke\""
        );
        let e = merge(vec![sample(), sample()]).unwrap_err();
        assert!(matches!(e, Error::Duplicate { .. }), "{e}");
    }

    #[test]
    fn single_part_keeps_its_run() {
        let m = merge(vec![sample()]).unwrap();
        assert_eq!(m.run_id, 42);
        assert_eq!(m.shard, None);
        assert_eq!(m.kernels, sample().kernels);
        assert_eq!(m.kernels[0].tests[2].status, TestStatus::Crashed);
    }
}
