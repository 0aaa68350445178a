//! Which (kernel, test) pairs of the matrix a run, or one shard of it, owns.

use super::Error;
use crate::plan::Test;
use crate::vm::image;

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(u32, u32), Error> {
    let bad = || Error::Invalid(format!("--shard {s:?}: expected I/N with 1 <= I <= N"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

pub(super) fn selector(k: &str) -> &str {
    k.strip_prefix("latest-").unwrap_or(k)
}

fn applies(test: &Test, release: &str) -> bool {
    test.only_kernels.is_empty()
        || test
            .only_kernels
            .iter()
            .any(|k| image::release_matches(release, selector(k)))
}

/// The tests (indices into `tests`) each kernel runs: those that apply to it, and of
/// the whole (kernel, test) matrix only shard I of N, dealt round robin.
pub fn slice(releases: &[&str], tests: &[Test], shard: Option<(u32, u32)>) -> Vec<Vec<usize>> {
    let mut owned = vec![Vec::new(); releases.len()];
    let mut n = 0u32;
    for (ki, release) in releases.iter().enumerate() {
        for (ti, t) in tests.iter().enumerate() {
            if !applies(t, release) {
                continue;
            }
            if shard.is_none_or(|(i, count)| n % count == i - 1) {
                owned[ki].push(ti);
            }
            n += 1;
        }
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse() {
        assert_eq!(parse_shard("1/2").unwrap(), (1, 2));
        assert!(parse_shard("0/2").is_err());
        assert!(parse_shard("3/2").is_err());
        assert!(parse_shard("x").is_err());
    }

    #[test]
    fn shards_cover_the_matrix_once() {
        let plan = crate::plan::parse(crate::plan::DEFAULT_PLAN, "default").unwrap();
        let kernels = ["6.1.0-57-amd64", "6.12.117+deb12-amd64"];
        let all = slice(&kernels, &plan.tests, None);
        // The KFENCE test runs on 6.12 only.
        assert_eq!(all[1].len(), plan.tests.len());
        assert_eq!(all[0].len(), plan.tests.len() - 1);
        let mut seen = std::collections::HashSet::new();
        for i in 1..=3 {
            let part = slice(&kernels, &plan.tests, Some((i, 3)));
            for (k, tests) in part.iter().enumerate() {
                for t in tests {
                    assert!(seen.insert((k, *t)), "({k}, {t}) in two shards");
                }
            }
        }
        let total: usize = all.iter().map(Vec::len).sum();
        assert_eq!(seen.len(), total);
    }
}
